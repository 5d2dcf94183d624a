"""Progress lines: throttled by time, with rate and ETA."""

from __future__ import annotations

import logging

from firellava.core.progress import Progress, format_duration


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_line_every_ten_seconds_with_rate_and_eta(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO)
    progress = Progress("finetune", 100, unit="steps", clock=clock, logger=logging.getLogger("t"))
    for _ in range(40):  # 40 steps of 1 s: lines at 10, 20, 30, 40 s
        clock.t += 1.0
        progress.update(1, extra="loss 1.5")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4
    assert lines[-1] == "finetune: 40/100 steps (40%), 1 steps/s, 40s elapsed, ETA 1m00s, loss 1.5"
    progress.close()
    assert caplog.records[-1].getMessage().startswith("finetune: 40/100 steps")


def test_resumed_work_is_not_counted_in_the_rate_and_unknown_totals_have_no_eta(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO)
    resumed = Progress("pretrain", 1000, unit="steps", clock=clock, start=900, logger=logging.getLogger("t"))
    clock.t = 50.0
    resumed.update(50)
    assert resumed.rate == 1.0 and resumed.eta_s() == 50.0
    stream = Progress("mix665k read", None, unit="records", clock=clock, logger=logging.getLogger("t"))
    clock.t = 60.0
    stream.update(20_000)
    assert "ETA" not in stream.line() and "20000 records, 2,000 records/s" in stream.line()
    assert format_duration(3725) == "1h02m" and format_duration(59.6) == "1m00s"
