"""Finite blow-ups made visible: a loss or gradient norm far above its own recent median.

A run can go badly wrong long before anything is NaN (a value loss that jumps a thousandfold after a
reward spike or an unlucky stale gradient). :class:`BlowupWatch` keeps the last ``window`` values of the
value loss and the gradient norm and reports a value above ``factor`` times their scale: their median, but
never less than ``floor``. The floor is what keeps a healthy run quiet: once a critic is nearly exact its median
loss is about 1e-7, and the ordinary error of one unexpected episode end (a value loss or gradient norm up to about
1.5e4 on CartPole) would be a billion times that; a real blow-up (a reward of 1e4 once: a value loss near 1e8) is
still far above ``factor * floor``. It reports at most once per quantity until the next metrics row (the record prints
only a quantity's first and counts the rest). It only watches; what to do about it is the researcher's call.
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
    scale: float  # the median, or the floor above it

    def describe(self) -> str:
        scale = "recent median" if self.scale == self.median else f"floor (its recent median is {self.median:.4g})"
        return f"{self.quantity} {self.value:.4g} is {self.value / self.scale:.0f} times its {scale} " \
               f"{self.scale:.4g}"


class BlowupWatch:
    def __init__(self, factor: float, window: int, floor: float):
        self.factor, self.floor = factor, floor
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
                scale = max(median, self.floor)
                if scale > 0 and value > self.factor * scale:
                    found.append(Blowup(name, value, median, scale))
                    self.reported.add(name)
            history.append(value)
        return found

    def new_row(self) -> None:
        self.reported.clear()
