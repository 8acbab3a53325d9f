"""An update rule: how a batch becomes optimizer steps and the rows that record them, written once for every
schedule on every transport.

A rule has two halves. :meth:`UpdateRule.gradients` is what differs between rules: given a model and a batch it
leaves a step's gradient in ``model.flat_grads`` and yields that step's statistics, once per optimizer step (the
actor-critic rules take one step per batch). The other half is written here, once, and is the same for every
rule: the learning-rate schedule, the non-finite guard, the staleness rules (``algo.staleness.max`` drops a
gradient, ``lr_scaling`` shrinks its step), the optimizer step, the parameter check, the snapshot that injected
staleness reads, the version and env-step counters, and the rows. Which half runs where is the schedule's
business: a learner that owns the parameters calls :meth:`UpdateRule.learn` (collect and learn in one process, or
a central learner); a parameter server or a Hogwild worker applies a gradient computed elsewhere
(:meth:`UpdateRule.update`); a synchronous round admits every worker's part and steps with their mean
(:meth:`UpdateRule.admit`, then :meth:`UpdateRule.step`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch

from algorithms.config import AlgoConfig, RunConfig
from algorithms.core.nets import ActorCritic
from algorithms.core.optimizers import set_learning_rate
from algorithms.infra.messages import LOSS_STATS, UpdateRow
from algorithms.infra.shared_memory import SnapshotRing
from algorithms.infra.timing import TIMINGS
from algorithms.updates.guard import NonFiniteGuard


def learning_rate(algo: AlgoConfig, env_steps: int, total_env_steps: int) -> float:
    """``algo.lr``, constant or decayed linearly to 0 over the step budget (as the zoo's ``lin_``)."""
    if algo.lr_schedule == "linear":
        return algo.lr * max(0.0, 1.0 - env_steps / total_env_steps)
    return algo.lr


@dataclass
class Target:
    """The parameters a rule steps, their optimizer and, under injected staleness, the ring of past versions.

    ``params.grad`` is the buffer a step reads: a learner's own model's ``flat_grads``, or a buffer of this
    process's own over shared or global parameters, into which a gradient from elsewhere is copied (aliasing a
    worker's ``.grad`` instead, as a popular A3C implementation does, silently sums gradients across steps).
    """

    optimizer: torch.optim.Optimizer
    params: torch.Tensor
    snapshots: SnapshotRing | None = None


class Counters(Protocol):
    """The run's policy version (applied steps) and env steps, wherever they live."""

    version: int
    env_steps: int


@dataclass
class Progress:
    """The counters of a run whose learner keeps them in its own process."""

    version: int = 0
    env_steps: int = 0


class Step(NamedTuple):
    """What one optimizer step did: whether it was applied, and at which learning rate."""

    applied: bool
    lr: float


class Source(NamedTuple):
    """A part of a learner's batch: the worker (or actor) that collected it and the policy version it acted with."""

    worker: int
    version: int


class LearnedRow(NamedTuple):
    """One row a learner's update leaves for the record, with the statistics only some rules have."""

    worker: int
    row: UpdateRow
    extra: dict[str, float]


class Refused(dict[str, float]):
    """The statistics of a step a rule's :meth:`~UpdateRule.gradients` yields without a gradient, to be recorded as
    dropped rather than taken (APPO's batch whose every sample is older than ``algo.max_policy_lag``)."""


class UpdateRule(ABC):
    """A rule, bound to the :class:`Target` it steps (``None`` in a worker that only computes gradients).

    ``can_skip=False`` where a non-finite update cannot be dropped (every replica of a synchronous round must take
    the same step): ``algo.on_nonfinite=skip_update`` then fails the run as ``fail`` does.
    """

    def __init__(self, cfg: RunConfig, target: Target | None = None, can_skip: bool = True):
        self.algo, self.total_env_steps, self.target, self.can_skip = cfg.algo, cfg.total_env_steps, target, can_skip
        self.guards: dict[int, NonFiniteGuard] = {}  # by worker: non-finite updates in a row count per worker
        # The version the next step of :meth:`learn` applies to, current whenever :meth:`gradients` resumes: what a
        # rule measures its data's lag against.
        self.version = 0

    @abstractmethod
    def gradients(self, model: ActorCritic, batch: Any) -> Iterator[dict[str, float]]:
        """Leave each step's gradient in ``model.flat_grads``, clipped, and yield its statistics (``LOSS_STATS``
        first, then any of the rule's own); the next gradient is computed after the caller has stepped."""

    def guard(self, worker: int) -> NonFiniteGuard:
        if worker not in self.guards:
            self.guards[worker] = NonFiniteGuard(self.algo, worker, self.can_skip)
        return self.guards[worker]

    def admit(self, worker: int, stats: dict[str, float], version: int, env_steps: int) -> bool:
        """Whether ``worker``'s update with these loss statistics may be applied (``env_steps``: after it)."""
        return self.guard(worker).admits(stats, version, env_steps)

    def step(self, version: int, version_at_sync: int, env_steps: int, steps: int, gradient: torch.Tensor | None = None,
             worker: int = 0, check: bool = True) -> Step:
        """Step the target at ``version`` with ``gradient`` (or what ``params.grad`` holds), computed at
        ``version_at_sync``, unless it is too stale; ``env_steps`` is the run's before this update's ``steps``.

        The learning rate is the schedule's at ``env_steps``, divided by ``max(1, staleness)`` under
        ``lr_scaling=inverse``. ``check=False`` leaves the parameter check to the next loss (a lock-free
        Hogwild read would race other workers' steps).
        """
        assert self.target is not None, "a rule that only computes gradients cannot step"
        lr = learning_rate(self.algo, env_steps, self.total_env_steps)
        staleness, rules = version - version_at_sync, self.algo.staleness
        if rules.max is not None and staleness > rules.max:
            return Step(False, lr)
        if rules.lr_scaling == "inverse":
            lr /= max(1, staleness)
        target = self.target
        set_learning_rate(target.optimizer, lr)
        if gradient is not None:
            assert target.params.grad is not None  # a Target's parameters come with their gradient buffer
            target.params.grad.copy_(gradient)
        with TIMINGS.part("step"):
            target.optimizer.step()
        if check:
            self.guard(worker).check_parameters(target.params, version, env_steps + steps)
        if target.snapshots is not None:
            target.snapshots.record(version + 1, target.params)
        return Step(True, lr)

    def apply(self, worker: int, stats: dict[str, float], version: int, version_at_sync: int, env_steps: int,
              steps: int, gradient: torch.Tensor | None = None, check: bool = True) -> Step:
        """:meth:`admit`, then :meth:`step` if admitted."""
        if not self.admit(worker, stats, version, env_steps + steps):
            return Step(False, learning_rate(self.algo, env_steps, self.total_env_steps))
        return self.step(version, version_at_sync, env_steps, steps, gradient, worker, check)

    @staticmethod
    def advance(counters: Counters, step: Step, stats: dict[str, float], version_at_sync: int,
                steps: int) -> UpdateRow:
        """Take the version ``step`` was applied to, move the counters on and return the update's row (under the
        caller's lock, where counters are shared)."""
        version = counters.version
        counters.version = version + step.applied
        counters.env_steps += steps
        return UpdateRow(counters.env_steps, version_at_sync, version, step.applied, step.lr, **stats, checkpoint=False)

    def update(self, counters: Counters, worker: int, stats: dict[str, float], version_at_sync: int, steps: int,
               gradient: torch.Tensor | None = None) -> UpdateRow:
        """Apply one gradient computed elsewhere at the current counters and advance them: a parameter server's
        answer to a push, or a Hogwild step under the lock."""
        step = self.apply(worker, stats, counters.version, version_at_sync, counters.env_steps, steps, gradient)
        return self.advance(counters, step, stats, version_at_sync, steps)

    def learn(self, model: ActorCritic, batch: Any, counters: Counters, sources: Sequence[Source],
              steps: int) -> list[LearnedRow]:
        """The whole update of a learner that owns ``model`` (the target's parameters): every step of the rule on
        ``batch``, ``steps`` env steps collected by ``sources``; one row per source and step, all at the env step
        after the batch. The staleness rules see the oldest source."""
        env_steps, oldest = counters.env_steps, min(source.version for source in sources)
        taken = []
        self.version = counters.version
        for stats in self.gradients(model, batch):
            losses = {name: stats[name] for name in LOSS_STATS}
            version = counters.version
            if isinstance(stats, Refused):
                step = Step(False, learning_rate(self.algo, env_steps, self.total_env_steps))
            else:
                step = self.apply(0, losses, version, oldest, env_steps, steps)
            counters.version = self.version = version + step.applied
            taken.append((version, step, losses, {name: stats[name] for name in stats.keys() - losses.keys()}))
        counters.env_steps = env_steps + steps
        return [LearnedRow(source.worker, UpdateRow(counters.env_steps, source.version, version, step.applied,
                                                    step.lr, **losses, checkpoint=False), extra)
                for version, step, losses, extra in taken for source in sources]
