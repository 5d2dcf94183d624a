"""Functions run in a second process on one core while this process goes on with the other cores.

The toy world trains its vision tower and then its teacher beside the LLM's text pretraining. Their small steps
gain little from a second core, and the LLM's gain less than twice, so trainings on one core each end sooner than
one after the other on both (docs/experiments.md sections 24 and 25). The second process logs through this
process's handlers, so its progress lines reach the console and the run's log as any stage's do.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
from collections.abc import Callable, Iterator
from logging.handlers import QueueHandler, QueueListener
from multiprocessing.pool import AsyncResult
from typing import Any


def _one_core_logging_to(queue: Any, level: int) -> None:
    import torch

    torch.set_num_threads(1)
    root = logging.getLogger()
    root.handlers = [QueueHandler(queue)]
    root.setLevel(level)


class Done:
    """The result of a call already made, read as a queued call's is (`.get()`)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def get(self, timeout: float | None = None) -> Any:
        return self.value


Submit = Callable[..., "AsyncResult | Done"]


@contextlib.contextmanager
def here() -> Iterator[Submit]:
    """`beside`'s interface with nothing beside: `submit(fn, *args)` calls `fn(*args)` in this process, now."""
    yield lambda fn, *args: Done(fn(*args))


@contextlib.contextmanager
def beside() -> Iterator[Submit]:
    """Start a fresh process with one torch thread; yields `submit(fn, *args)`, which queues `fn(*args)` there and
    returns its result (`.get()` waits and re-raises its error). Calls run one after the other, in the order
    submitted. Leaving the block waits for them, or stops the process when the block raised. Functions and
    arguments must pickle: the process is spawned, not forked, as torch's threads do not survive a fork."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    root = logging.getLogger()
    listener = QueueListener(queue, *root.handlers, respect_handler_level=True)
    listener.start()
    pool = context.Pool(1, initializer=_one_core_logging_to, initargs=(queue, root.getEffectiveLevel()))
    try:
        yield lambda fn, *args: pool.apply_async(fn, args)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
        listener.stop()
