"""Training time: the ``wall_time`` of every row and event of a run."""

from __future__ import annotations

import time
from collections.abc import Callable


class TrainingClock:
    """Seconds of training: since the start, before a resume too (``offset``), less the time training waited for
    evaluations; for a simulated run, its virtual clock's seconds."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.offset = 0.0  # the training time of the checkpoint a run resumed from
        self.virtual: Callable[[], float] | None = None  # a simulated run's time, in place of the machine's

    def restart(self) -> None:
        """Measure from now: wall_time measures training, not the record's start-up (W&B's included)."""
        self.start = time.monotonic()

    def seconds(self, paused: float) -> float:
        """Training time now, less the ``paused`` seconds that training waited for evaluations."""
        if self.virtual is not None:
            return self.virtual() + self.offset
        return time.monotonic() - self.start + self.offset - paused
