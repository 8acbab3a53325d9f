"""The run's counters and its metrics grid: one ``metrics.csv`` row per ``log_interval`` env steps, aggregating the
updates and episodes since the row before (docs/design.md says when a row is due and how a resume continues it)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
from omegaconf import DictConfig

from experiments.columns import LOSS_STATS, RULE_STATS

AVERAGED_STATS = (*LOSS_STATS, *RULE_STATS)  # each row holds their mean over its interval's updates


def next_on_grid(env_steps: int, interval: int) -> int:
    """The first multiple of ``interval`` past ``env_steps``: where the next row (or checkpoint) of a grid is due."""
    return (env_steps // interval + 1) * interval


class MetricsGrid:
    """The counters of a run and the interval of updates and episodes its next metrics row aggregates."""

    def __init__(self, cfg: DictConfig):
        self.log_interval = cfg.log_interval
        self.env_steps = 0
        self.updates = 0
        self.policy_version = 0
        self.episodes = 0
        self.dropped_updates = 0
        # (return, length) of the latest episodes
        self.recent: deque[tuple[float, int]] = deque(maxlen=cfg.return_window)
        self.interval: dict[str, list[float]] = {}
        self.last_row = (0, 0.0)  # env_steps and wall_time of the latest metrics row
        self.row_due_at: float | None = None  # wall time at which the next metrics row became due
        self.next_row_at = cfg.log_interval
        self.lr = float("nan")

    def saved(self, wall_time: float, wandb_id: str | None) -> dict[str, Any]:
        """The record's part of a checkpoint: the grid, with the training time and the W&B run to continue."""
        return {
            "env_steps": self.env_steps, "updates": self.updates, "policy_version": self.policy_version,
            "episodes": self.episodes, "dropped_updates": self.dropped_updates,
            "wall_time": wall_time, "recent_episodes": list(self.recent),
            "wandb_id": wandb_id,
            "interval": {name: list(values) for name, values in self.interval.items()},
            "last_row": list(self.last_row),
        }

    def restore(self, saved: dict[str, Any]) -> None:
        """Continue from the record's part of a checkpoint (see :meth:`saved`)."""
        self.env_steps, self.updates = saved["env_steps"], saved["updates"]
        self.policy_version, self.episodes = saved["policy_version"], saved["episodes"]
        self.dropped_updates = saved["dropped_updates"]
        self.recent.extend(saved["recent_episodes"])
        # The interval in progress and the latest row of the grid; a checkpoint written before the record
        # saved them resumes its grid from its own env step.
        self.interval = saved.get("interval", {})
        self.last_row = tuple(saved.get("last_row", (self.env_steps, saved["wall_time"])))
        self.next_row_at = next_on_grid(self.env_steps, self.log_interval)

    def add_episode(self, ret: float, length: int) -> None:
        self.episodes += 1
        self.recent.append((ret, length))

    def add_update(self, version_at_sync: int, version_at_apply: int, applied: bool, wait_time: float,
                   stats: dict[str, float]) -> int:
        """Count one gradient into the interval; return its staleness."""
        self.updates += 1
        staleness = version_at_apply - version_at_sync
        interval = self.interval
        interval.setdefault("staleness", []).append(staleness)
        interval.setdefault("wait_time", []).append(wait_time)
        if applied:
            self.policy_version = max(self.policy_version, version_at_apply + 1)
        else:
            self.dropped_updates += 1
        for name in AVERAGED_STATS:
            if name in stats:
                interval.setdefault(name, []).append(stats[name])
        return staleness

    def reach(self, env_steps: int, lr: float, now: Callable[[], float]) -> None:
        """Move on to an update's ``env_steps`` and ``lr``; a row that becomes due takes the training time ``now()``
        (it is written once every row of its update is in: see :meth:`row_due`)."""
        self.lr = lr
        self.env_steps = max(self.env_steps, env_steps)
        if self.row_due_at is None and self.env_steps >= self.next_row_at:
            self.row_due_at = now()

    def row_due(self, env_steps: int | None) -> bool:
        """Whether the row that became due is complete: a row or episode of a later update arrives (past
        ``env_steps``), or the run checkpoints or ends (``None``). A synchronous update is one ``update`` call per
        worker, all at the same env step."""
        return self.row_due_at is not None and (env_steps is None or env_steps > self.env_steps)

    def row(self, wall: float) -> tuple[dict[str, Any], np.ndarray]:
        """The metrics row at training time ``wall``, and its interval's staleness values (for W&B's histogram)."""
        interval = self.interval
        returns = [ret for ret, _ in self.recent]
        staleness = np.asarray(interval.get("staleness", [0]), dtype=np.float64)
        previous_steps, previous_wall = self.last_row
        row = {
            "env_steps": self.env_steps,
            "wall_time": wall,
            "updates": self.updates,
            "policy_version": self.policy_version,
            "episodes": self.episodes,
            "return_mean": float(np.mean(returns)) if returns else math.nan,
            "return_max": float(np.max(returns)) if returns else math.nan,
            "length_mean": float(np.mean([length for _, length in self.recent])) if returns else math.nan,
            **{name: float(np.mean(interval[name])) if interval.get(name) else math.nan for name in AVERAGED_STATS},
            "lr": self.lr,
            "sps": (self.env_steps - previous_steps) / max(wall - previous_wall, 1e-9),
            "staleness_mean": float(staleness.mean()),
            "staleness_max": float(staleness.max()),
            "staleness_p95": float(np.percentile(staleness, 95)),
            "dropped_updates": self.dropped_updates,
            "barrier_wait_mean": float(np.mean(interval.get("wait_time", [0.0]))),
        }
        return row, staleness

    def row_written(self, wall: float) -> None:
        """Start the next interval after the row at training time ``wall``."""
        self.interval = {}
        self.last_row = (self.env_steps, wall)
        self.row_due_at = None
        self.next_row_at = next_on_grid(self.env_steps, self.log_interval)

    def summary(self, wall: float, last_eval: dict[str, Any] | None) -> dict[str, Any]:
        """meta.json's ``final``: the counters at training time ``wall``, and the latest evaluation's row."""
        returns = [ret for ret, _ in self.recent]
        return {
            "env_steps": self.env_steps, "wall_time": wall, "updates": self.updates,
            "policy_version": self.policy_version, "episodes": self.episodes,
            "dropped_updates": self.dropped_updates,
            "return_mean": float(np.mean(returns)) if returns else None,
            "return_window": len(returns),
            "sps": self.env_steps / max(wall, 1e-9),
            "eval": None if last_eval is None else {
                name: last_eval[name] for name in ("env_steps", "policy_version", "episodes", "return_mean",
                                                   "return_std", "deterministic")},
        }
