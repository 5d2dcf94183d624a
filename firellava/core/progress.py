"""Live progress of a long loop: a log line at most every `every_s` seconds with done/total, rate and ETA.

Lines are throttled by time, not by count, so a loop of slow steps (a 13B training step, a vLLM chunk) and one of
fast steps (reading 665K records) both report about as often.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

DEFAULT_EVERY_S = 10.0


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class Progress:
    """`update(n)` after each unit of work; a line comes when `every_s` passed since the last one, and at
    `close()`. `total` None: rate only (a streamed input of unknown length)."""

    def __init__(
        self,
        what: str,
        total: int | None,
        *,
        unit: str = "items",
        every_s: float = DEFAULT_EVERY_S,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
        start: int = 0,
    ) -> None:
        self.what, self.total, self.unit, self.every_s = what, total, unit, every_s
        self.log = logger or logging.getLogger("firellava.progress")
        self.clock = clock
        self.started = self.last = clock()
        self.first = start  # work done before this process started (a resume) does not count in the rate
        self.done = start
        self.extra = ""

    @property
    def rate(self) -> float:
        return (self.done - self.first) / max(self.clock() - self.started, 1e-9)

    def eta_s(self) -> float | None:
        if self.total is None or self.rate <= 0:
            return None
        return max(0, self.total - self.done) / self.rate

    def line(self) -> str:
        elapsed = format_duration(self.clock() - self.started)
        if self.total is None:
            head = f"{self.what}: {self.done} {self.unit}"
        else:
            pct = 100 * self.done / self.total if self.total else 100.0
            head = f"{self.what}: {self.done}/{self.total} {self.unit} ({pct:.0f}%)"
        eta = self.eta_s()
        tail = f", ETA {format_duration(eta)}" if eta is not None and self.done < (self.total or 0) else ""
        extra = f", {self.extra}" if self.extra else ""
        rate = f"{self.rate:,.0f}" if self.rate >= 100 else f"{self.rate:.3g}"
        return f"{head}, {rate} {self.unit}/s, {elapsed} elapsed{tail}{extra}"

    def update(self, n: int = 1, extra: str | None = None) -> None:
        self.done += n
        if extra is not None:
            self.extra = extra
        now = self.clock()
        if now - self.last >= self.every_s:
            self.last = now
            self.log.info(self.line())

    def close(self) -> None:
        self.log.info(self.line())
