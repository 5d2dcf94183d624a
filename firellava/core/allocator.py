"""glibc malloc settings for the project's processes, applied by restarting the entry once with them.

PyTorch on CPU allocates and frees activation buffers of a few megabytes every step. Under glibc's defaults a
freed block above the mmap threshold goes back to the kernel at once, and so does the heap's free top past the
trim threshold, so every step faults the same pages in again: system time, paid by every thread that touches
them. Keeping freed memory in the process removes that (`perf/allocator.py` measures both side by side).

glibc reads these variables once, when a process starts, so they must be in the environment before the
interpreter starts: `tuned_environment` adds them, and `restart_with_tuned_malloc` restarts the entry under them
(once; a restarted process finds them set). Child processes inherit them: the toy world's second process, the
DeepSpeed launcher's workers, vLLM's engine. A variable the user set is kept as it is, so
`MALLOC_TRIM_THRESHOLD_=131072` and its companions restore glibc's own behaviour.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

# Blocks under 1 GiB come from the heap, and up to 1 GiB of free heap is kept for the next allocation: the
# activations of a step are served again from memory the process already has. A large checkpoint's tensors
# above 1 GiB are still mapped and unmapped on their own.
TUNED_MALLOC: dict[str, str] = {
    "MALLOC_MMAP_THRESHOLD_": str(1 << 30),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
    "MALLOC_TOP_PAD_": str(1 << 26),
}


def uses_glibc() -> bool:
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def tuned_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` with every `TUNED_MALLOC` variable it lacks added."""
    return {**TUNED_MALLOC, **environ}


def restart_with_tuned_malloc() -> None:
    """Replace this process by the same command under `tuned_environment`, unless every variable is already set
    or the C library is not glibc (the variables mean nothing elsewhere). Call it first thing in an entry, before
    any thread or child process starts: what ran before the restart runs again."""
    if not uses_glibc() or all(name in os.environ for name in TUNED_MALLOC):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, tuned_environment(os.environ))
