"""Run the server in a child process and wait until it answers: used by the demo stage, the tests and the
benchmark. `python -m firellava.serve.process SETTINGS.json PARENT_PID` is the child's entry (the settings as a
config node, `firellava.config.to_node`); it exits by itself when its parent dies, so no server outlives the
process that started it."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import TracebackType

import httpx

from firellava.config import build, to_node
from firellava.core.net import free_port
from firellava.serve.settings import ServerSettings

log = logging.getLogger(__name__)


class ServerProcess:
    """`with ServerProcess(settings) as server: server.base_url` (port 0 in settings = pick a free one)."""

    def __init__(
        self, settings: ServerSettings, *, log_path: str | Path | None = None, start_timeout_s: float = 120.0
    ):
        if settings.port == 0:
            settings = replace(settings, port=free_port(settings.host))
        self.settings = settings
        self.start_timeout_s = start_timeout_s
        self._tmp = tempfile.TemporaryDirectory(prefix="serve-")
        self.log_path = Path(log_path) if log_path else Path(self._tmp.name) / "server.log"
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        host = f"[{self.settings.host}]" if ":" in self.settings.host else self.settings.host
        return f"http://{host}:{self.settings.port}"

    def start(self) -> ServerProcess:
        settings_file = Path(self._tmp.name) / "settings.json"
        settings_file.write_text(json.dumps(to_node(self.settings)))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "firellava.serve.process", str(settings_file), str(os.getpid())],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
            )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode} while starting:\n{self.log_tail()}"
                )
            try:
                if httpx.get(self.base_url + "/health", timeout=1.0, trust_env=False).status_code == 200:
                    log.info(
                        "server %s up in %.1fs",
                        self.base_url,
                        self.start_timeout_s - (deadline - time.monotonic()),
                    )
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(
            f"server did not answer /health within {self.start_timeout_s}s:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self._tmp.cleanup()

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def _exit_with_parent(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(10)
            os._exit(1)


def main(argv: list[str]) -> None:
    from firellava.serve.app import run_server

    settings: ServerSettings = build(json.loads(Path(argv[0]).read_text()))
    threading.Thread(target=_exit_with_parent, args=(int(argv[1]),), daemon=True).start()
    run_server(settings)


if __name__ == "__main__":
    main(sys.argv[1:])
