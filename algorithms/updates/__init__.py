"""Update rules: how a batch becomes optimizer steps, written once and called by every schedule on every transport.

A rule is a class of :mod:`algorithms.updates.rule`'s ``UpdateRule``; the schedule table names the one each
schedule uses, so a new rule is its module, its table entries and its YAML, and no schedule or transport changes.
"""

from __future__ import annotations

from algorithms.config import RunConfig
from algorithms.updates.rule import Target, UpdateRule


def rule_for(cfg: RunConfig, target: Target | None = None, can_skip: bool = True) -> UpdateRule:
    """The update rule the run's schedule uses, bound to ``target`` (``None`` in a worker that only computes
    gradients)."""
    from algorithms import schedule_for  # the table, read when a rule is made: it imports no layer

    rule_class = schedule_for(cfg.algo.name, cfg.algo.mode, cfg.backend).load_rule()
    return rule_class(cfg, target, can_skip)
