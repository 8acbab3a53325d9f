"""The schedules: which code trains each (algorithm, mode, backend), decided in this one table.

``experiments.train`` runs ``schedule_for(...).load()``, config validation accepts exactly the keys of
:data:`SCHEDULES`, and the throughput benchmark and the sweep's CPU budget read the same entries. An entry declares:

- ``entry``: the function that runs it, as ``"module:function"``;
- ``rule``: the update rule its learner applies, as ``"module:Class"`` (:meth:`Schedule.load_rule`);
- how its processes are laid out (``worker_processes``, ``one_worker_in_process``, ``server_process``,
  ``learner_on_device``), which the CPU budget and the ``device`` check read;
- ``checks``: what it accepts beyond the rules that hold for every schedule: the settings it pins (keys it does not
  read, such as impala's ``batch_size`` for a2c, or cannot vary, such as ``resume`` for a simulated run) and rules of
  its own (hogwild's ``staleness.delay`` needs ``lock``). ``experiments.config.validate`` runs them through
  :meth:`Schedule.problems` without knowing any schedule by name; :mod:`algorithms.schedule_checks` spells each out.

A new schedule, transport or update rule is one entry here, its module and its YAML. Entries name their code as
strings and import it only when a run starts, so reading the table, or validating a config against it, loads
neither torch, Ray nor gymnasium.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from algorithms.config import RunConfig
from algorithms.schedule_checks import (
    A2C_WORKERS_STEP_ENVS,
    A3C_WORKERS_STEP_ENVS,
    ACTORS_LAG_BY_DELAY_ONLY,
    CHECKPOINTED_AT_END_ONLY,
    EVERY_PASS_IN_ROUNDS,
    FRESH_GRADIENTS,
    IMPALA_ACTORS_STEP_ENVS,
    LEARNS_ON_POLICY,
    NO_LOCK,
    ONE_ENV_IN_ONE_PROCESS,
    ONE_LEARNER_PROCESS,
    ONE_STEP_PER_BATCH,
    ONE_STEP_PER_UNROLL_BATCH,
    RAY_ACTORS_STEP_ENVS,
    RAY_UNROLLS_TAKE_ONE_VERSION,
    ROUNDS_FAIL_ON_NONFINITE,
    VIRTUAL_WORKERS_STEP_ENVS,
    Check,
    Problem,
    delay_needs_lock,
    learner_batch_fills,
    minibatches_divide_the_batch,
    off_policy_correction,
    ray_actor_cpus,
    ray_address,
    ray_local_cluster_fits,
    ray_start_timeout,
    sim_costs,
    sim_stragglers,
)


def _import(target: str) -> Any:
    """The object a ``"module:name"`` string names, importing its module."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Schedule:
    """One way to train: who collects, who applies gradients, over which transport."""

    algo: str
    mode: str
    backend: str
    entry: str  # "module:function", called as function(cfg, record)
    summary: str
    rule: str  # "module:Class", the update rule its learner applies
    worker_processes: bool  # each worker is a process (or actor) of its own
    one_worker_in_process: bool = False  # with num_workers=1 the worker runs in the trainer process
    server_process: bool = False  # the trainer itself is busy serving parameters
    # One process learns (computes the loss, applies gradients), so its model can sit on an accelerator
    # (``device``); workers that learn in processes of their own, or share CPU memory, stay on the CPU.
    learner_on_device: bool = False
    # What it accepts beyond every schedule's rules, checked in this order (algorithms.schedule_checks).
    checks: tuple[Check, ...] = ()

    def load(self) -> Callable[[Any, Any], None]:
        return _import(self.entry)

    def load_rule(self) -> type:
        return _import(self.rule)

    def problems(self, cfg: RunConfig) -> Iterator[Problem]:
        """Each value of ``cfg`` this schedule cannot run with, in the order of its checks. Lazily: a caller that
        stops at the first never runs a later check on a value an earlier one refused."""
        for check in self.checks:
            yield from check(cfg)

    def trains_in_trainer(self, num_workers: int) -> bool:
        """Whether the whole training loop runs in the trainer process."""
        return not self.worker_processes or (self.one_worker_in_process and num_workers == 1)

    def starts_local_processes(self, num_workers: int, vector_backend: str) -> bool:
        """Whether a run starts processes on this machine through multiprocessing (workers, actors, or envs
        stepped in subprocesses)."""
        return self.backend == "local" and (not self.trains_in_trainer(num_workers) or vector_backend == "async")

    def busy_processes(self, num_workers: int, per_worker: int = 1) -> int:
        """CPU-bound processes a run keeps busy; ``per_worker`` counts a worker's env subprocesses too."""
        if self.trains_in_trainer(num_workers):
            return per_worker
        return num_workers * per_worker + int(self.server_process)


ACTOR_CRITIC_RULE = "algorithms.updates.actor_critic:NStepActorCritic"
OFF_POLICY_RULE = "algorithms.updates.off_policy:OffPolicyActorCritic"  # impala's one step, appo's epochs
PPO_RULE = "algorithms.updates.ppo:PPO"

# What each algorithm and mode accepts, whatever the backend, in the order a bad config is told about it.
SINGLE = (ONE_ENV_IN_ONE_PROCESS, FRESH_GRADIENTS, LEARNS_ON_POLICY, ONE_STEP_PER_BATCH)
A2C_VECTOR = (ONE_LEARNER_PROCESS, FRESH_GRADIENTS, LEARNS_ON_POLICY, ONE_STEP_PER_BATCH)
A2C_WORKERS = (A2C_WORKERS_STEP_ENVS, FRESH_GRADIENTS, LEARNS_ON_POLICY, ROUNDS_FAIL_ON_NONFINITE, ONE_STEP_PER_BATCH)
A3C_HOGWILD = (delay_needs_lock, A3C_WORKERS_STEP_ENVS, LEARNS_ON_POLICY, ONE_STEP_PER_BATCH)
A3C_PARAMETER_SERVER = (NO_LOCK, A3C_WORKERS_STEP_ENVS, LEARNS_ON_POLICY, ONE_STEP_PER_BATCH)
IMPALA = (ACTORS_LAG_BY_DELAY_ONLY, learner_batch_fills, off_policy_correction, IMPALA_ACTORS_STEP_ENVS,
          ONE_STEP_PER_UNROLL_BATCH)
APPO = (ACTORS_LAG_BY_DELAY_ONLY, learner_batch_fills, off_policy_correction, IMPALA_ACTORS_STEP_ENVS,
        minibatches_divide_the_batch)
PPO_VECTOR = (ONE_LEARNER_PROCESS, FRESH_GRADIENTS, LEARNS_ON_POLICY, minibatches_divide_the_batch)
PPO_WORKERS = (A2C_WORKERS_STEP_ENVS, FRESH_GRADIENTS, LEARNS_ON_POLICY, ROUNDS_FAIL_ON_NONFINITE,
               minibatches_divide_the_batch, EVERY_PASS_IN_ROUNDS)
# What each transport adds: its own group of settings (ray.*, sim.*) and what its workers cannot do.
LOCAL: tuple[Check, ...] = ()
RAY = (RAY_ACTORS_STEP_ENVS, RAY_UNROLLS_TAKE_ONE_VERSION, ray_address, ray_actor_cpus, ray_start_timeout,
       ray_local_cluster_fits)
SIMULATED = (sim_costs, sim_stragglers, CHECKPOINTED_AT_END_ONLY, VIRTUAL_WORKERS_STEP_ENVS)

_ENTRIES = (
    Schedule("single", "serial", "local", "algorithms.transports.local.single:run",
             "one env, one process, one update per n_steps", worker_processes=False, learner_on_device=True,
             rule=ACTOR_CRITIC_RULE, checks=SINGLE + LOCAL),
    Schedule("a2c", "vector", "local", "algorithms.transports.local.single:run",
             "one learner steps num_envs envs in lockstep", worker_processes=False, learner_on_device=True,
             rule=ACTOR_CRITIC_RULE, checks=A2C_VECTOR + LOCAL),
    Schedule("a2c", "workers", "local", "algorithms.transports.local.synchronous:run",
             "worker processes average their gradients at a shared-memory barrier", worker_processes=True,
             rule=ACTOR_CRITIC_RULE, checks=A2C_WORKERS + LOCAL),
    Schedule("a3c", "hogwild", "local", "algorithms.transports.local.asynchronous:run_hogwild",
             "worker processes step shared parameters and optimizer state", worker_processes=True,
             one_worker_in_process=True, rule=ACTOR_CRITIC_RULE, checks=A3C_HOGWILD + LOCAL),
    Schedule("a3c", "parameter_server", "local", "algorithms.transports.local.asynchronous:run_parameter_server",
             "the trainer applies workers' gradients in arrival order", worker_processes=True,
             one_worker_in_process=True, server_process=True, learner_on_device=True,
             rule=ACTOR_CRITIC_RULE, checks=A3C_PARAMETER_SERVER + LOCAL),
    Schedule("impala", "actor_learner", "local", "algorithms.transports.local.actor_learner:run",
             "actor processes send unrolls through shared memory; the trainer learns from them with V-trace",
             worker_processes=True, server_process=True, learner_on_device=True,
             rule=OFF_POLICY_RULE, checks=IMPALA + LOCAL),
    Schedule("ppo", "vector", "local", "algorithms.transports.local.single:run",
             "one learner steps num_envs envs in lockstep and takes epochs x minibatches clipped steps per batch",
             worker_processes=False, learner_on_device=True, rule=PPO_RULE, checks=PPO_VECTOR + LOCAL),
    Schedule("ppo", "workers", "local", "algorithms.transports.local.synchronous:run",
             "worker processes average each minibatch's gradients at a shared-memory barrier (DD-PPO)",
             worker_processes=True, rule=PPO_RULE, checks=PPO_WORKERS + LOCAL),
    Schedule("appo", "actor_learner", "local", "algorithms.transports.local.actor_learner:run",
             "impala's actor processes; the trainer takes epochs x minibatches clipped steps on each batch of unrolls",
             worker_processes=True, server_process=True, learner_on_device=True,
             rule=OFF_POLICY_RULE, checks=APPO + LOCAL),
    Schedule("a2c", "workers", "ray", "algorithms.transports.ray:run_workers",
             "worker actors; a server actor is the barrier and applies the mean", worker_processes=True,
             rule=ACTOR_CRITIC_RULE, checks=A2C_WORKERS + RAY),
    Schedule("a3c", "parameter_server", "ray", "algorithms.transports.ray:run_parameter_server",
             "worker actors; a server actor applies gradients in arrival order", worker_processes=True,
             server_process=True, rule=ACTOR_CRITIC_RULE, checks=A3C_PARAMETER_SERVER + RAY),
    Schedule("impala", "actor_learner", "ray", "algorithms.transports.ray:run_impala",
             "actor actors send unrolls; the driver learns from them with V-trace", worker_processes=True,
             server_process=True, learner_on_device=True, rule=OFF_POLICY_RULE, checks=IMPALA + RAY),
    Schedule("appo", "actor_learner", "ray", "algorithms.transports.ray:run_impala",
             "actor actors send unrolls; the driver takes epochs x minibatches clipped steps on each batch",
             worker_processes=True, server_process=True, learner_on_device=True, rule=OFF_POLICY_RULE,
             checks=APPO + RAY),
    Schedule("a2c", "workers", "simulated", "algorithms.transports.simulated:run_synchronous",
             "virtual workers on a virtual clock meet at a barrier each round", worker_processes=False,
             rule=ACTOR_CRITIC_RULE, checks=A2C_WORKERS + SIMULATED),
    Schedule("a3c", "hogwild", "simulated", "algorithms.transports.simulated:run_hogwild",
             "virtual workers on a virtual clock step the parameters one at a time", worker_processes=False,
             rule=ACTOR_CRITIC_RULE, checks=A3C_HOGWILD + SIMULATED),
    Schedule("a3c", "parameter_server", "simulated", "algorithms.transports.simulated:run_parameter_server",
             "virtual workers on a virtual clock; their pushes queue at the server", worker_processes=False,
             rule=ACTOR_CRITIC_RULE, checks=A3C_PARAMETER_SERVER + SIMULATED),
    Schedule("impala", "actor_learner", "simulated", "algorithms.transports.simulated:run_impala",
             "virtual actors on a virtual clock; their unrolls queue at one learner", worker_processes=False,
             rule=OFF_POLICY_RULE, checks=IMPALA + SIMULATED),
    Schedule("appo", "actor_learner", "simulated", "algorithms.transports.simulated:run_impala",
             "virtual actors on a virtual clock; one learner takes epochs x minibatches steps on each batch",
             worker_processes=False, rule=OFF_POLICY_RULE, checks=APPO + SIMULATED),
)
SCHEDULES: dict[tuple[str, str, str], Schedule] = {(s.algo, s.mode, s.backend): s for s in _ENTRIES}

# Why a combination has no entry, as (config key at fault, reason), where a user is likely to try it.
MISSING_REASONS: dict[tuple[str, str, str], tuple[str, str]] = {
    ("single", "serial", "ray"): (
        "backend", "algo=single is a one-process schedule; backend=ray runs algo=a2c algo.mode=workers and "
        "algo=a3c algo.mode=parameter_server"),
    ("a3c", "hogwild", "ray"): (
        "algo.mode", "hogwild is a shared-memory schedule for one machine; with backend=ray use "
        "algo.mode=parameter_server (the parameter server is a Ray actor)"),
    ("a2c", "vector", "ray"): (
        "algo.mode", "mode=vector is a one-process schedule; with backend=ray use algo.mode=workers (worker "
        "actors whose gradients are averaged at a barrier)"),
    ("single", "serial", "simulated"): (
        "backend", "algo=single has no workers to simulate; backend=simulated runs algo=a2c algo.mode=workers, "
        "algo=a3c and algo=impala"),
    ("a2c", "vector", "simulated"): (
        "algo.mode", "mode=vector has no workers to simulate; with backend=simulated use algo.mode=workers"),
}


def algorithm_modes() -> dict[str, tuple[str, ...]]:
    """Each algorithm's modes, in table order; the first is its default."""
    modes: dict[str, tuple[str, ...]] = {}
    for algo, mode, _ in SCHEDULES:
        if mode not in modes.get(algo, ()):
            modes[algo] = (*modes.get(algo, ()), mode)
    return modes


def backends() -> tuple[str, ...]:
    return tuple(dict.fromkeys(backend for _, _, backend in SCHEDULES))


class NoSuchSchedule(LookupError):
    """No entry for a combination; ``key`` and ``reason`` say which setting to change and why."""

    def __init__(self, key: str, value: str, reason: str):
        self.key, self.value, self.reason = key, value, reason
        super().__init__(f"{key}={value!r}: {reason}")


def schedule_for(algo: str, mode: str, backend: str) -> Schedule:
    """The entry for ``(algo, mode, backend)``, or :class:`NoSuchSchedule` naming the key to change."""
    if (algo, mode, backend) in SCHEDULES:
        return SCHEDULES[(algo, mode, backend)]
    modes = algorithm_modes()
    if algo not in modes:
        raise NoSuchSchedule("algo.name", algo, f"must be one of {', '.join(modes)}")
    if mode not in modes[algo]:
        raise NoSuchSchedule("algo.mode", mode, f"must be one of {', '.join(modes[algo])}")
    if backend not in backends():
        raise NoSuchSchedule("backend", backend, f"must be one of {', '.join(backends())}")
    if (algo, mode, backend) in MISSING_REASONS:
        key, reason = MISSING_REASONS[(algo, mode, backend)]
        raise NoSuchSchedule(key, {"backend": backend, "algo.mode": mode}[key], reason)
    offered = ", ".join(f"algo={a} algo.mode={m}" for a, m, b in SCHEDULES if b == backend)
    raise NoSuchSchedule("backend", backend, f"algo={algo} algo.mode={mode} has no {backend} schedule; "
                                             f"backend={backend} runs {offered}")
