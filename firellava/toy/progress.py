"""Live progress of the toy world's trainings: a line at least every few seconds with the rate and the time left,
so that a newcomer running the demo sees it moving."""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


class Progress:
    """Logs `<label> step i/n (rate, ETA) <figures>` when `every` seconds have passed since the last line, and at
    the last step. `per_step` items (examples, images) make the rate."""

    def __init__(self, label: str, total: int, per_step: int, unit: str, every: float = 10.0) -> None:
        self.label, self.total, self.per_step, self.unit, self.every = label, total, per_step, unit, every
        self.start = self.last = time.perf_counter()

    def update(self, step: int, **figures: float) -> None:
        now = time.perf_counter()
        if now - self.last < self.every and step != self.total:
            return
        self.last = now
        elapsed = now - self.start
        rate = step * self.per_step / elapsed if elapsed > 0 else 0.0
        eta = elapsed / step * (self.total - step) if step else 0.0
        shown = " ".join(f"{k} {float(v):.3f}" for k, v in figures.items())
        log.info(
            "%s step %d/%d (%.0f %s/s, %s elapsed, ETA %s) %s",
            self.label,
            step,
            self.total,
            rate,
            self.unit,
            _clock(elapsed),
            _clock(eta),
            shown,
        )


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}"
