"""Finite blow-ups made visible: a loss or gradient norm far above its own recent median.

A run can go badly wrong long before anything is NaN (a value loss that jumps a thousandfold after a
reward spike or an unlucky stale gradient). :class:`BlowupWatch` keeps the last ``window`` values of the
value loss and the gradient norm and reports a value above ``factor`` times their median, at most once
per quantity until the next metrics row, so a researcher sees it in the log and in ``events.jsonl``
without being flooded. It only watches; what to do about it is the researcher's call.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass

WATCHED = ("value_loss", "grad_norm")


@dataclass
class Blowup:
    quantity: str
    value: float
    median: float

    def describe(self) -> str:
        return f"{self.quantity} {self.value:.4g} is {self.value / self.median:.0f} times its recent median " \
               f"{self.median:.4g}"


class BlowupWatch:
    def __init__(self, factor: float, window: int):
        self.factor = factor
        self.history: dict[str, deque[float]] = {name: deque(maxlen=window) for name in WATCHED}
        self.reported: set[str] = set()  # quantities already reported since the last metrics row

    def observe(self, stats: dict[str, float]) -> list[Blowup]:
        """Add one update's statistics; return the blow-ups to report."""
        found = []
        for name, history in self.history.items():
            value = stats.get(name)
            if value is None or not math.isfinite(value):
                continue  # non-finite values are the divergence guard's, not a warning
            if len(history) == history.maxlen and name not in self.reported:
                median = statistics.median(history)
                if median > 0 and value > self.factor * median:
                    found.append(Blowup(name, value, median))
                    self.reported.add(name)
            history.append(value)
        return found

    def new_row(self) -> None:
        self.reported.clear()
