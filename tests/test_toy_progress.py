"""The toy trainings' live progress lines: rate and ETA, at the interval asked and at the last step."""

from __future__ import annotations

import logging

from firellava.toy.progress import Progress


def test_progress_lines_carry_rate_and_eta(caplog, monkeypatch):
    clock = iter([0.0, 5.0, 12.0, 14.0, 30.0])
    monkeypatch.setattr("firellava.toy.progress.time.perf_counter", lambda: next(clock))
    caplog.set_level(logging.INFO, logger="firellava.toy.progress")
    progress = Progress("tiny LLM pretraining", total=4, per_step=32, unit="examples", every=10.0)
    for step in range(1, 5):  # at 5 s (too soon), 12 s, 14 s (too soon), 30 s (the last step)
        progress.update(step, loss=1.25)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "tiny LLM pretraining step 2/4 (5 examples/s, 0:12 elapsed, ETA 0:12) loss 1.250",
        "tiny LLM pretraining step 4/4 (4 examples/s, 0:30 elapsed, ETA 0:00) loss 1.250",
    ]
