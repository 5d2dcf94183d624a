"""`beside`: a function in a second process on one torch thread, its log lines through this process's handlers,
its error raised here, stopped when the block that started it fails."""

from __future__ import annotations

import logging
import time

import pytest
import torch

from firellava.toy.beside import beside

log = logging.getLogger("firellava.test_beside")


def threads_and_log(message: str) -> int:
    log.info(message)
    return torch.get_num_threads()


def fail() -> None:
    raise ValueError("the tower failed")


def test_a_function_beside_returns_logs_here_and_raises_here(caplog):
    caplog.set_level(logging.INFO)
    with beside(threads_and_log, "hello from beside") as result:
        assert result.get(timeout=120) == 1
    assert "hello from beside" in caplog.messages
    with pytest.raises(ValueError, match="the tower failed"), beside(fail) as result:
        result.get(timeout=120)


def test_a_failing_block_stops_the_process_beside():
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="the LLM failed"), beside(time.sleep, 120):
        raise RuntimeError("the LLM failed")
    assert time.monotonic() - start < 60
