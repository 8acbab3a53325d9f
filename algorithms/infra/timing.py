"""Timing hooks in the code that trains, as Sample Factory's timing contexts: named parts of the real loop (a
rollout, a gradient, an optimizer step, a whole update) report their seconds while a process has them turned on.

``experiments.tools.calibrate`` turns them on to measure ``backend=simulated``'s costs on the loop that trains, not on a
copy of it. Turned off, a part costs one attribute check on entry and one on exit.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Timings:
    """This process's timed parts: each name's seconds, one entry per time it ran, while :meth:`recording`."""

    def __init__(self) -> None:
        self.enabled = False
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self._parts: dict[str, Part] = {}

    def part(self, name: str) -> Part:
        """The context that times ``name`` (one object per name: a part never runs inside itself)."""
        if name not in self._parts:
            self._parts[name] = Part(self, name)
        return self._parts[name]

    @contextmanager
    def recording(self) -> Iterator[dict[str, list[float]]]:
        """Turn the hooks on, from no timings, for the block; yields the timings as they are taken."""
        self.seconds.clear()
        self.enabled = True
        try:
            yield self.seconds
        finally:
            self.enabled = False


class Part:
    __slots__ = ("timings", "name", "started")

    def __init__(self, timings: Timings, name: str):
        self.timings, self.name, self.started = timings, name, 0.0

    def __enter__(self) -> None:
        if self.timings.enabled:
            self.started = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        if self.timings.enabled:
            self.timings.seconds[self.name].append(time.perf_counter() - self.started)


TIMINGS = Timings()
