"""The rules a schedule's entry in ``algorithms.SCHEDULES`` declares about the configs it can run.

A check takes a composed run config (an OmegaConf ``DictConfig``, or anything indexed the same way) and yields a
:class:`Problem` for each value the schedule cannot run with, naming the key, the value and why;
``experiments.config.validate`` reports the first. Checks run after the rules that hold for every schedule (types,
ranges, choices), so they may assume those hold. Most rules are :class:`Pinned` settings: keys a schedule does not
read, or cannot vary, which must keep one value. The rest are small functions for rules that are genuinely special.

Like the table, this module imports only the standard library and ``algorithms.config``, so that validating a config
loads neither torch, Ray nor gymnasium.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from functools import reduce
from typing import Any

from algorithms.config import AlgoConfig, RunConfig, StalenessConfig

CORRECTIONS = ("vtrace", "none", "truncated_is", "ppo_clip", "decoupled")  # algorithms.core.losses.CORRECTIONS


@dataclass(frozen=True)
class Problem:
    """A value a schedule cannot run with: the key as the command line spells it, its value, and why."""

    key: str
    value: Any
    reason: str


Check = Callable[[RunConfig], Iterator[Problem]]


def value_at(cfg: Any, key: str) -> Any:
    """The value of a dotted ``key`` ("algo.staleness.delay") in ``cfg``."""
    return reduce(lambda node, part: node[part], key.split("."), cfg)


@dataclass(frozen=True)
class Pinned:
    """Settings a schedule does not read, or cannot vary: each key must keep its value.

    ``reason`` may name ``{algo}`` (the run's algorithm) and ``{value}`` (the value the key must keep). With
    ``from_workers``, the pin holds only for runs of at least that many workers.
    """

    # Left out of the hash (a dict has none), so that entries, frozen dataclasses holding their checks, hash.
    values: Mapping[str, Any] = field(hash=False)
    reason: str
    from_workers: int = 1

    def __call__(self, cfg: RunConfig) -> Iterator[Problem]:
        if cfg.algo.num_workers < self.from_workers:
            return
        for key, pinned in self.values.items():
            value = value_at(cfg, key)
            if value != pinned:
                yield Problem(key, value, self.reason.format(algo=cfg.algo.name, value=pinned))


def _defaults(config: type, prefix: str, names: tuple[str, ...]) -> dict[str, Any]:
    """The schema's defaults of ``names``, keyed as the command line spells them (read from the dataclass, so that a
    changed default moves the pin with it)."""
    defaults = {field.name: field.default for field in fields(config)}
    return {f"{prefix}.{name}": defaults[name] for name in names}


# impala's learner settings (experiments.columns.IMPALA_DEFAULTS, which analysis reads, lists the same keys).
OFF_POLICY_DEFAULTS = _defaults(AlgoConfig, "algo", ("batch_size", "queue_depth", "wait_for_update", "correction",
                                                     "rho_bar", "c_bar", "max_policy_lag", "in_flight_updates"))
STALENESS_DEFAULTS = _defaults(StalenessConfig, "algo.staleness", ("delay", "max", "lr_scaling"))
# ppo's passes over each batch and their clipping.
PPO_DEFAULTS = _defaults(AlgoConfig, "algo", ("epochs", "minibatches", "clip_range", "clip_value", "target_kl"))

# --------------------------------------------------------------------------- settings an algorithm does not read
LEARNS_ON_POLICY = Pinned(OFF_POLICY_DEFAULTS, "is an algo=impala and algo=appo setting (the learner's batch, the "
                                               "actors' queue and the off-policy correction); algo={algo} leaves it at "
                                               "{value}")
ONE_STEP_PER_BATCH = Pinned(PPO_DEFAULTS, "is an algo=ppo and algo=appo setting (the passes over each batch and "
                                         "their clipping); algo={algo} takes one step per batch and leaves it at "
                                         "{value}")
# impala's correction may clip (ppo_clip, decoupled), so it takes algo.clip_range; its one step takes nothing else.
ONE_STEP_PER_UNROLL_BATCH = Pinned({key: value for key, value in PPO_DEFAULTS.items() if key != "algo.clip_range"},
                                   "is an algo=appo setting (its passes over each batch of unrolls); algo={algo} "
                                   "takes one step per batch and leaves it at {value}")
FRESH_GRADIENTS = Pinned(STALENESS_DEFAULTS,
                         "controlled staleness is an a3c setting; algo={algo} applies every gradient fresh")
# impala's actors take algo.staleness.delay (they act on parameters that many versions old), nothing else.
ACTORS_LAG_BY_DELAY_ONLY = Pinned(
    {key: default for key, default in STALENESS_DEFAULTS.items() if key != "algo.staleness.delay"},
    "is an a3c setting for stale gradients; algo={algo}'s actors lag by algo.staleness.delay, bounded by "
    "algo.max_policy_lag and corrected by algo.correction")
NO_LOCK = Pinned({"algo.lock": False},
                 "is a mode=hogwild setting; the parameter server applies one gradient at a time")

# --------------------------------------------------------------------------- how many processes, who steps the envs
ONE_ENV_IN_ONE_PROCESS = Pinned({"algo.num_workers": 1, "algo.num_envs": 1},
                                "algo=single runs one env in one process; use algo=a2c or algo=a3c for more")
ONE_LEARNER_PROCESS = Pinned({"algo.num_workers": 1}, "mode=vector is one learner process; set algo.num_envs for "
                                                      "more envs, or algo.mode=workers")


def _envs_stepped_in_process(reason: str, from_workers: int = 1) -> Pinned:
    """A worker (process, actor or virtual one) that cannot start env subprocesses: ``algo.vector_backend=async``
    is refused with ``reason``."""
    return Pinned({"algo.vector_backend": "sync"}, reason, from_workers)


A2C_WORKERS_STEP_ENVS = _envs_stepped_in_process(
    "mode=workers steps each worker's envs in the worker (its process cannot start env subprocesses)")
# With one worker, a local a3c schedule runs it in the trainer process, which can start env subprocesses; the
# backends whose workers never can pin the setting themselves.
A3C_WORKERS_STEP_ENVS = _envs_stepped_in_process(
    "a3c worker processes step their envs themselves (they cannot start env subprocesses)", from_workers=2)
IMPALA_ACTORS_STEP_ENVS = _envs_stepped_in_process(
    "impala actor processes step their envs themselves (they cannot start env subprocesses)")
RAY_ACTORS_STEP_ENVS = _envs_stepped_in_process(
    "Ray worker actors step their envs themselves (they do not start env subprocesses)")
RAY_UNROLLS_TAKE_ONE_VERSION = Pinned({"algo.in_flight_updates": False},
                                     "a Ray actor receives its parameters with each unroll call; in-flight updates "
                                     "run on backend=local and backend=simulated")
VIRTUAL_WORKERS_STEP_ENVS = _envs_stepped_in_process(
    "virtual workers step their envs in the one process of backend=simulated")

# --------------------------------------------------------------------------- failures and resuming
EVERY_PASS_IN_ROUNDS = Pinned({"algo.target_kl": None},
                              "each worker estimates the KL on its own minibatches, so the replicas could disagree "
                              "on stopping; mode=workers takes every pass")
ROUNDS_FAIL_ON_NONFINITE = Pinned({"algo.on_nonfinite": "fail"},
                                  "a synchronous round cannot be skipped by one replica alone; mode=workers fails on "
                                  "a non-finite update (mode=vector can skip)")
CHECKPOINTED_AT_END_ONLY = Pinned({"resume": False}, "a simulated run is checkpointed at its end only (gradients in "
                                                     "flight are not saved); rerun it")


# --------------------------------------------------------------------------- rules of their own
def _finite_at_least(key: str, value: float, low: float,
                     reason: str = "must be a finite number >= 0") -> Iterator[Problem]:
    if not (math.isfinite(value) and value >= low):
        yield Problem(key, value, reason)


def minibatches_divide_the_batch(cfg: RunConfig) -> Iterator[Problem]:
    """PPO's minibatches are equal shares of a batch of ``num_envs * n_steps`` transitions (APPO's: of ``batch_size``
    such unrolls), each of at least two (a minibatch's advantages are normalized by their standard deviation)."""
    algo = cfg.algo
    batch = algo.batch_size * algo.num_envs * algo.n_steps
    if batch % algo.minibatches or batch // algo.minibatches < 2:
        factors = "algo.num_envs * algo.n_steps" if algo.batch_size == 1 else \
            "algo.batch_size * algo.num_envs * algo.n_steps"
        yield Problem("algo.minibatches", algo.minibatches,
                      f"must split a batch of {factors} = {batch} transitions into equal minibatches of at least 2")


def delay_needs_lock(cfg: RunConfig) -> Iterator[Problem]:
    """Hogwild workers copy a parameter snapshot ``delay`` versions old, which must not change while they copy it."""
    algo = cfg.algo
    if algo.staleness.delay != 0 and not algo.lock:
        yield Problem("algo.staleness.delay", algo.staleness.delay,
                      "needs algo.lock=true in mode=hogwild (a parameter snapshot must not change while a worker "
                      "copies it)")


def learner_batch_fills(cfg: RunConfig) -> Iterator[Problem]:
    """The actors' queue can hold a learner's whole batch (else the learner waits forever)."""
    algo = cfg.algo
    for key in ("batch_size", "queue_depth"):
        if getattr(algo, key) < 1:
            yield Problem(f"algo.{key}", getattr(algo, key), "must be a positive integer")
    waiting = algo.num_workers * algo.queue_depth
    if algo.batch_size > waiting:
        yield Problem("algo.batch_size", algo.batch_size,
                      f"the learner would wait forever: at most algo.num_workers x algo.queue_depth = {waiting} "
                      "unrolls can wait for it")


def off_policy_correction(cfg: RunConfig) -> Iterator[Problem]:
    """A correction the learner knows, with truncations that leave it defined."""
    algo = cfg.algo
    if algo.correction not in CORRECTIONS:
        yield Problem("algo.correction", algo.correction, f"must be one of {', '.join(CORRECTIONS)}")
    for key in ("rho_bar", "c_bar"):
        if not (math.isfinite(getattr(algo, key)) and getattr(algo, key) > 0):
            yield Problem(f"algo.{key}", getattr(algo, key), "must be a finite number > 0")
    if algo.in_flight_updates and algo.staleness.delay:
        yield Problem("algo.in_flight_updates", algo.in_flight_updates,
                      "actors taking each new version as it is published cannot also lag by algo.staleness.delay; "
                      "set one of them")
    if algo.max_policy_lag is not None and algo.max_policy_lag < 0:
        yield Problem("algo.max_policy_lag", algo.max_policy_lag, "must be a version count >= 0, or null for no bound")


def ray_address(cfg: RunConfig) -> Iterator[Problem]:
    """A cluster to connect to, or a local one to size: not both."""
    ray = cfg.ray
    if ray.address is None:
        return
    if not ray.address.strip():
        yield Problem("ray.address", ray.address,
                      "must be auto, HOST:PORT or ray://HOST:PORT (null starts a local cluster)")
    if ray.num_cpus is not None:
        yield Problem("ray.num_cpus", ray.num_cpus,
                      f"sizes a local cluster; with ray.address={ray.address} the cluster's own resources apply")


def ray_actor_cpus(cfg: RunConfig) -> Iterator[Problem]:
    for key in ("cpus_per_worker", "server_cpus"):
        yield from _finite_at_least(f"ray.{key}", getattr(cfg.ray, key), 0)


def ray_start_timeout(cfg: RunConfig) -> Iterator[Problem]:
    timeout = cfg.ray.start_timeout_s
    if not (math.isfinite(timeout) and timeout > 0):
        yield Problem("ray.start_timeout_s", timeout, "must be a finite number of seconds > 0")


def ray_local_cluster_fits(cfg: RunConfig) -> Iterator[Problem]:
    """A local cluster of ``ray.num_cpus`` CPUs can place every actor the run asks for."""
    algo, ray = cfg.algo, cfg.ray
    if ray.num_cpus is None:
        return
    if ray.num_cpus < 1:
        yield Problem("ray.num_cpus", ray.num_cpus, "must be a positive integer")
    needed = algo.num_workers * ray.cpus_per_worker + ray.server_cpus
    if ray.num_cpus < needed:
        yield Problem("ray.num_cpus", ray.num_cpus,
                      f"the local cluster cannot place the run's actors: algo.num_workers={algo.num_workers} x "
                      f"ray.cpus_per_worker={ray.cpus_per_worker} + ray.server_cpus={ray.server_cpus} = {needed:g} "
                      "CPUs")


SIM_COSTS = ("env_step_s", "forward_s", "backward_s", "message_s", "byte_s", "latency_s", "apply_s", "update_s",
             "jitter_sigma")


def sim_costs(cfg: RunConfig) -> Iterator[Problem]:
    """The virtual clock's costs: each finite and >= 0."""
    for key in SIM_COSTS:
        yield from _finite_at_least(f"sim.{key}", getattr(cfg.sim, key), 0)


def sim_stragglers(cfg: RunConfig) -> Iterator[Problem]:
    """Who is slow, and how slow: a probability, a factor >= 1, and speed factors > 0."""
    sim = cfg.sim
    if not 0 <= sim.straggler_fraction <= 1:
        yield Problem("sim.straggler_fraction", sim.straggler_fraction, "must be a probability, between 0 and 1")
    yield from _finite_at_least("sim.straggler_slowdown", sim.straggler_slowdown, 1, "must be a finite factor >= 1")
    if sim.worker_speeds is not None:
        speeds = list(sim.worker_speeds)
        if not (speeds and all(math.isfinite(speed) and speed > 0 for speed in speeds)):
            yield Problem("sim.worker_speeds", speeds, "must be a non-empty list of finite factors > 0 (null: every "
                                                       "worker at 1)")
