"""`beside`: functions in a second process on one torch thread, one after the other in the order submitted, their
log lines through this process's handlers, their errors raised here, stopped when the block that started them
fails."""

from __future__ import annotations

import logging
import os
import time

import pytest
import torch

from firellava.toy.beside import beside

log = logging.getLogger("firellava.test_beside")


def threads_and_log(message: str) -> int:
    log.info(message)
    return torch.get_num_threads()


def pid_and_time() -> tuple[int, float]:
    time.sleep(0.2)
    return os.getpid(), time.monotonic()


def fail() -> None:
    raise ValueError("the tower failed")


def test_a_function_beside_returns_logs_here_and_raises_here(caplog):
    caplog.set_level(logging.INFO)
    with beside() as submit:
        assert submit(threads_and_log, "hello from beside").get(timeout=120) == 1
    assert "hello from beside" in caplog.messages
    with pytest.raises(ValueError, match="the tower failed"), beside() as submit:
        submit(fail).get(timeout=120)


def test_functions_beside_run_one_after_the_other_in_one_process():
    with beside() as submit:
        first, second = submit(pid_and_time), submit(pid_and_time)
        (pid_1, end_1), (pid_2, end_2) = first.get(timeout=120), second.get(timeout=120)
    assert pid_1 == pid_2 != os.getpid()
    assert end_2 - end_1 >= 0.2


def test_a_failing_block_stops_the_process_beside():
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="the LLM failed"), beside() as submit:
        submit(time.sleep, 120)
        raise RuntimeError("the LLM failed")
    assert time.monotonic() - start < 60
