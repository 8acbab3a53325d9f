"""SIGINT and SIGTERM while a run lives: they ask it to stop (see ``RunRecord``), in place of the handlers before."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any


class StopSignals:
    """The stop handler for SIGINT and SIGTERM, installed while the run trains."""

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}

    def install(self, handler: Callable[[int, Any], None]) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, handler)

    def restore(self) -> None:
        """Put back the handlers the run found: ended, it no longer stops on a signal."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
