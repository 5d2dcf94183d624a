"""The entries restart once under glibc malloc settings that keep freed memory in the process
(firellava/core/allocator.py), keep what the user set, and glibc honours the settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from firellava.core.allocator import TUNED_MALLOC, tuned_environment, uses_glibc

pytestmark = pytest.mark.skipif(not uses_glibc(), reason="the settings are glibc's")

# A process that restarts first, then reports its settings and the arguments it was started with.
RESTARTS = """
import json, os, sys
from firellava.core.allocator import TUNED_MALLOC, restart_with_tuned_malloc
print("before the restart", flush=True)
restart_with_tuned_malloc()
print(json.dumps({"env": {k: os.environ.get(k) for k in TUNED_MALLOC}, "argv": sys.argv[1:]}))
"""

# Touches every page of a 40 MiB block, frees it, 20 times, and prints the minor page faults per round. glibc's
# defaults map a block that large afresh each time (it is above the largest threshold they adapt to).
FAULTS = """
import resource
n, rounds = 40 << 20, 20
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(rounds):
    block = bytearray(n)
    block[:: 4096] = b"x" * (n // 4096)
    del block
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / rounds)
"""


def without_settings() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in TUNED_MALLOC}


def run(code: str, env: dict[str, str], *args: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return out.stdout.strip().splitlines()


def test_tuned_environment_adds_what_is_missing_and_keeps_what_is_set() -> None:
    env = tuned_environment({"PATH": "/bin", "MALLOC_TRIM_THRESHOLD_": "131072"})
    assert env["PATH"] == "/bin"
    assert env["MALLOC_TRIM_THRESHOLD_"] == "131072"
    assert env["MALLOC_MMAP_THRESHOLD_"] == TUNED_MALLOC["MALLOC_MMAP_THRESHOLD_"]
    assert env["MALLOC_TOP_PAD_"] == TUNED_MALLOC["MALLOC_TOP_PAD_"]


def test_an_entry_restarts_once_with_the_settings_and_its_arguments() -> None:
    lines = run(RESTARTS, without_settings(), "experiment=demo", "a b")
    # The code before the restart ran twice (once per process), the report once: one restart, no loop.
    assert lines[:2] == ["before the restart"] * 2
    report = json.loads(lines[2])
    assert report == {"env": TUNED_MALLOC, "argv": ["experiment=demo", "a b"]}


def test_an_entry_keeps_the_users_settings() -> None:
    mine = {**without_settings(), "MALLOC_TRIM_THRESHOLD_": "131072"}
    report = json.loads(run(RESTARTS, mine)[-1])
    assert report["env"] == {**TUNED_MALLOC, "MALLOC_TRIM_THRESHOLD_": "131072"}
    assert run(RESTARTS, {**without_settings(), **TUNED_MALLOC})[0] == "before the restart"
    assert len(run(RESTARTS, {**without_settings(), **TUNED_MALLOC})) == 2  # all set: no restart


def test_glibc_keeps_freed_blocks_under_the_settings() -> None:
    defaults = float(run(FAULTS, without_settings())[0])
    tuned = float(run(FAULTS, {**without_settings(), **TUNED_MALLOC})[0])
    pages = (40 << 20) // 4096
    assert defaults > 0.9 * pages  # every round faults the block in again
    assert tuned < 0.1 * pages  # the block is reused: only the first round faults
