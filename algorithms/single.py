"""The single-worker baseline: one env, one process, one update every ``n_steps`` env steps.

It is the shared in-process loop with one env, so A2C's vector mode with ``num_envs=1`` and the same
seed produces exactly the same parameters.
"""

from __future__ import annotations

from typing import Any

from algorithms.learn import Record, train_in_process


def run(cfg: Any, record: Record) -> None:
    train_in_process(cfg, record, num_envs=1)
