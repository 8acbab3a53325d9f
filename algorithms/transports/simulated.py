"""Simulated workers (``backend=simulated``): ``num_workers`` virtual workers in one process, on a virtual clock.

Each virtual worker has its own envs, collector, generator and local model (a
:class:`~algorithms.schedules.worker.RolloutWorker`), and the learning is real: every rollout, gradient and update is
computed. Only time is modelled, by :class:`CostModel` (``sim.*``): a worker's task (collect a rollout, compute
its gradient), every message and every update's bookkeeping (``update_s``: syncing, the learning rate and guards,
recording the rows) take virtual seconds, and the server applies one gradient at a time. Events are
processed in virtual-time order, ties broken by worker, so the order of updates, and with it staleness, emerges
from the schedule as it would on ``num_workers`` machines, and the same config and seed give the same record at
any worker count. The record's ``wall_time`` is the virtual clock (``meta.json`` says ``clock: simulated``).

- a3c ``parameter_server``: a worker syncs to the parameters the server answered it with, computes, and pushes;
  pushes queue at the server in arrival order (:class:`~algorithms.schedules.parameter_server.ParameterServer` applies
  them, as the local and Ray servers do), each taking the server ``apply_s + update_s``. Each message costs
  ``message_s + bytes * byte_s + latency_s``.
- a3c ``hogwild``: the same, with workers stepping shared memory themselves: no messages, a worker pays its own
  ``update_s`` after its task, and each apply takes ``apply_s`` under the lock (``lock=true`` semantics: applies
  are atomic).
- a2c ``workers``: every round, all workers compute from the same parameters; the round ends when the slowest
  gradient has arrived and the mean is applied (``apply_s + update_s``; ``wait_time``: how long each worker
  waited for the slowest).
  The updates are those of the local a2c workers, bit for bit (the mean is summed in worker order).

With one worker, a3c gives ``single``'s parameters. A simulated run is checkpointed when it ends (completed, stopped
or failed) only: gradients in flight are not checkpointed, so it cannot resume (validation says so).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

from algorithms.config import RunConfig
from algorithms.core.rollout import UNROLL_FIELDS, Unrolls, join_unrolls
from algorithms.infra.checkpoint import make_checkpoint
from algorithms.infra.messages import Episode, Push, Record, UnrollReady, to_wire
from algorithms.schedules.actor_learner import InFlightUnroll, UnrollLearner, act
from algorithms.schedules.global_model import GlobalModel, evaluate_if_due
from algorithms.schedules.parameter_server import ParameterServer
from algorithms.schedules.synchronous import SyncLog, mean_step, round_episodes, round_row
from algorithms.schedules.worker import RolloutWorker
from algorithms.updates import rule_for


class CostModel:
    """Virtual seconds of a worker's task and of a message, from ``sim.*``. Its generator (seeded with the run's
    seed, drawn in event order) serves time alone, so the cost model never changes what is learned."""

    def __init__(self, cfg: RunConfig, num_params: int):
        sim, algo = cfg.sim, cfg.algo
        self.sim = sim
        self.rng = np.random.default_rng(cfg.seed)
        self.task_s = algo.n_steps * algo.num_envs * sim.env_step_s + algo.n_steps * sim.forward_s + sim.backward_s
        self.update_s = sim.update_s  # one update's bookkeeping, paid by whoever runs the update
        self.message_s = sim.message_s + 4 * num_params * sim.byte_s + sim.latency_s  # one float32 vector
        speeds = list(sim.worker_speeds or [1.0])
        self.speeds = [float(speeds[worker % len(speeds)]) for worker in range(algo.num_workers)]

    def task(self, worker: int, nominal_s: float | None = None) -> float:
        """One task of ``worker`` (``nominal_s`` at nominal speed, a rollout and its gradient by default); both draws
        are made for every task, so a setting changes no other draw."""
        jitter, straggles = self.rng.normal(), self.rng.random() < self.sim.straggler_fraction
        return ((self.task_s if nominal_s is None else nominal_s) * self.speeds[worker]
                * math.exp(self.sim.jitter_sigma * jitter) * (self.sim.straggler_slowdown if straggles else 1.0))


class VirtualClock:
    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def start(cfg: RunConfig, record: Record) -> tuple[GlobalModel, list[RolloutWorker], CostModel, VirtualClock]:
    torch.set_num_threads(cfg.torch_threads)
    global_model = GlobalModel(cfg)
    clock = VirtualClock()
    record.use_clock(clock)
    workers = []
    try:
        for worker in range(cfg.algo.num_workers):
            workers.append(RolloutWorker(cfg, worker, 0))
    except BaseException:
        close(workers)
        raise
    return global_model, workers, CostModel(cfg, global_model.model.flat_params.numel()), clock


def close(workers: list[RolloutWorker]) -> None:
    for rollouts in workers:
        rollouts.close()


# --------------------------------------------------------------------------- a3c: pushes queue at a server
def run_parameter_server(cfg: RunConfig, record: Record) -> None:
    run_asynchronous(cfg, record, messages=True)


def run_hogwild(cfg: RunConfig, record: Record) -> None:
    run_asynchronous(cfg, record, messages=False)


def run_asynchronous(cfg: RunConfig, record: Record, messages: bool) -> None:
    """Workers compute from the parameters they synced to; their gradients are applied one at a time, in the
    order they reach the server (or the lock), each worker then syncing to the parameters after its own."""
    global_model, workers, costs, clock = start(cfg, record)
    message_s = costs.message_s if messages else 0.0
    # Who pays an update's bookkeeping: the parameter server per push (it queues pushes), a Hogwild worker itself.
    worker_update_s, server_update_s = (0.0, costs.update_s) if messages else (costs.update_s, 0.0)
    server = ParameterServer(cfg, record, global_model)
    in_flight: list[tuple[float, int, Push]] = []  # (arrival time, worker, push): one push per worker

    def compute(worker: int, synced_at: float) -> None:
        rollouts = workers[worker]
        version, params = global_model.params_for_worker()
        rollouts.model.flat_params.copy_(params)
        episodes, stats = rollouts.compute_gradient()
        push = Push(worker, version, to_wire(rollouts.model.flat_grads), stats, episodes, rollouts.steps, None,
                    synced_at, rollouts.evaluation_statistics())
        heapq.heappush(in_flight, (synced_at + costs.task(worker) + worker_update_s + message_s, worker, push))

    try:
        for worker in range(len(workers)):
            compute(worker, message_s)  # the server's first answer: the initial parameters
        server_free = 0.0
        while in_flight:
            arrived, worker, push = heapq.heappop(in_flight)
            server_free = clock.now = max(arrived, server_free) + cfg.sim.apply_s + server_update_s
            server.stop = record.stop_requested
            server.apply(push)
            evaluate_if_due(cfg, record, global_model, workers_done=not in_flight)
            if not server.finishing():
                compute(worker, clock.now + message_s)
    finally:  # also after a failure: the parameters as they were before it (a non-finite one is refused)
        close(workers)
        record.save_checkpoint(global_model.checkpoint())


# --------------------------------------------------------------------------- a2c: rounds at a barrier
class WorkerPart(NamedTuple):
    """One worker's part of a synchronous round: when its gradient arrived, its loss statistics and episodes."""

    arrived: float
    stats: dict[str, float]
    episodes: list[Episode]


def run_synchronous(cfg: RunConfig, record: Record) -> None:
    """Every round: all workers compute from the same parameters, the mean of their gradients is applied when
    the slowest has arrived, and the new parameters reach them all."""
    global_model, workers, costs, clock = start(cfg, record)
    model, counters, num_workers = global_model.model, global_model.counters, cfg.algo.num_workers
    rule = rule_for(cfg, global_model.target(), can_skip=False)  # every replica takes the same step
    log = SyncLog(record, num_workers, 0, 0)
    gradients = torch.zeros(num_workers, model.flat_params.numel())
    try:
        round_start = costs.message_s  # the initial parameters' broadcast
        while counters.env_steps < cfg.total_env_steps and not record.stop_requested:
            parts = [compute_part(rollouts, model.flat_params, gradients[worker], costs, round_start)
                     for worker, rollouts in enumerate(workers)]
            last = max(part.arrived for part in parts)
            clock.now = last + cfg.sim.apply_s + costs.update_s
            version, env_steps = counters.version, counters.env_steps
            step = mean_step(rule, gradients, [part.stats for part in parts], counters, num_workers * workers[0].steps)
            for worker, part in enumerate(parts):
                row = round_row(version, version, counters.env_steps, step, part.stats, last - part.arrived)
                log.add(worker, [row], round_episodes(version, env_steps, part.episodes, num_workers))
            log.record_complete()
            evaluate_if_due(cfg, record, global_model, workers_done=True)
            round_start = clock.now + costs.message_s
    finally:  # also after a failure: the parameters as they were before it (a non-finite one is refused)
        record.save_checkpoint(make_checkpoint(model.state_dict(), global_model.optimizer.state_dict(),
                                               counters.env_steps, counters.version,
                                               collectors=[rollouts.collector.state_dict() for rollouts in workers]))
        close(workers)


def compute_part(rollouts: RolloutWorker, params: torch.Tensor, gradient: torch.Tensor, costs: CostModel,
                 round_start: float) -> WorkerPart:
    """One worker's rollout and gradient (into ``gradient``) with the round's parameters."""
    rollouts.model.flat_params.copy_(params)
    episodes, stats = rollouts.compute_gradient()
    gradient.copy_(rollouts.model.flat_grads)
    return WorkerPart(round_start + costs.task(rollouts.worker) + costs.message_s, stats, episodes)


# --------------------------------------------------------------------------- impala: unrolls queue at one learner
LEARNED, ACTED, ARRIVED, STEPPED = 0, 1, 2, 3  # event kinds, in their order at one time: an actor starting (or, with
# in-flight updates, stepping) when an update is published acts with it (as a local actor waiting for it does)


def run_impala(cfg: RunConfig, record: Record) -> None:
    simulation = SimulatedImpala(cfg, record)
    try:
        simulation.run()
    finally:  # also after a failure: the parameters as they were before it (a non-finite one is refused)
        close(simulation.actors)
        record.save_checkpoint(simulation.global_model.checkpoint())


class SimulatedImpala:
    """impala's actors and learner on the virtual clock. An actor acts an unroll with the parameters published when
    it starts (``delay`` versions behind, if set); the unroll costs its env steps, a forward pass per step and
    ``unroll_s`` (the behaviour log-probabilities, reading the parameters, writing and announcing it), then the
    actor starts the next one if a slot of its ``queue_depth`` is free, while the unroll travels to the learner
    (one message of its bytes). The learner, a serial resource, takes ``batch_size`` unrolls in arrival order and
    publishes ``learn_s + batch_size * learn_unroll_s`` later (one batched pass over them all; appo's ``epochs``
    passes of ``minibatches`` steps cost ``epochs * (minibatches * learn_s + batch_size * learn_unroll_s)``); slots
    free when their unrolls are taken (with ``wait_for_update``, when the update is published). With
    ``in_flight_updates`` each step of an unroll is an event, acted with the parameters published by then. The
    learning is the local learner's (:class:`~algorithms.schedules.actor_learner.UnrollLearner`)."""

    def __init__(self, cfg: RunConfig, record: Record):
        self.cfg, self.algo, self.record = cfg, cfg.algo, record
        self.global_model, self.actors, self.costs, self.clock = start(cfg, record)
        self.learner = UnrollLearner(cfg, record, self.global_model)
        sim, algo = cfg.sim, cfg.algo
        self.step_cost_s = algo.num_envs * sim.env_step_s + sim.forward_s  # one step of every env
        self.unroll_cost_s = algo.n_steps * self.step_cost_s + sim.unroll_s
        # impala's one step; appo's epochs of minibatch steps, each pass over the whole batch
        self.update_cost_s = algo.epochs * (algo.minibatches * sim.learn_s + algo.batch_size * sim.learn_unroll_s)
        self.events: list[tuple[float, int, int, int, Any]] = []  # time, kind, worker, sequence, payload
        self.sequence = 0  # the last tie-break: payloads are never compared
        self.queue: list[tuple[UnrollReady, Unrolls]] = []  # arrived, in arrival order
        self.held = [0] * algo.num_workers  # each actor's unrolls not yet taken (waiting for updates: not learned)
        self.idle: set[int] = set()  # actors whose slots are all held
        self.learning = False

    def run(self) -> None:
        for worker in range(self.algo.num_workers):
            self.start_unroll(worker, self.costs.message_s)  # the initial parameters' broadcast
        handlers: dict[int, Callable[[float, int, Any], None]] = {LEARNED: self.learned, ACTED: self.acted,
                                                                   ARRIVED: self.arrived, STEPPED: self.stepped}
        while self.events and not (self.learner.finished() or self.record.stop_requested):
            time, kind, worker, _, payload = heapq.heappop(self.events)
            self.clock.now = time
            handlers[kind](time, worker, payload)

    def push(self, time: float, kind: int, worker: int, payload: Any) -> None:
        self.sequence += 1
        heapq.heappush(self.events, (time, kind, worker, self.sequence, payload))

    def start_unroll(self, worker: int, now: float) -> None:
        """The actor's next unroll, acted now with the published parameters (with in-flight updates, its first
        step; each later step is an event of its own, acted with the parameters published by then)."""
        actor = self.actors[worker]
        self.held[worker] += 1
        if self.algo.in_flight_updates:
            unroll = InFlightUnroll(actor, self.read_published(actor.model.flat_params))
            unroll.step()
            self.push(now + self.costs.task(worker, self.step_cost_s), STEPPED, worker, unroll)
            return
        ready, acted = act(actor, self.read_published(actor.model.flat_params))
        self.push(now + self.costs.task(worker, self.unroll_cost_s), ACTED, worker, (ready, acted.copy()))

    def read_published(self, out: torch.Tensor) -> int:
        version, params = self.global_model.params_for_worker()
        out.copy_(params)
        return version

    def stepped(self, now: float, worker: int, unroll: InFlightUnroll) -> None:
        """The next step of an unroll taking in-flight updates, with a newer version if one was published."""
        if self.global_model.counters.version > unroll.version:
            unroll.load(self.read_published)
        if unroll.step():
            self.push(now + self.costs.task(worker, self.step_cost_s), STEPPED, worker, unroll)
            return
        ready, acted = unroll.finish()
        self.push(now + self.costs.task(worker, self.cfg.sim.unroll_s), ACTED, worker, (ready, acted.copy()))

    def acted(self, now: float, worker: int, item: tuple[UnrollReady, Unrolls]) -> None:
        unroll = item[1]
        size = sum(getattr(unroll, name).numel() * getattr(unroll, name).element_size() for name in UNROLL_FIELDS)
        self.push(now + self.cfg.sim.message_s + size * self.cfg.sim.byte_s + self.cfg.sim.latency_s, ARRIVED,
                  worker, item)
        if self.held[worker] < self.algo.queue_depth:
            self.start_unroll(worker, now)
        else:
            self.idle.add(worker)

    def arrived(self, now: float, worker: int, item: tuple[UnrollReady, Unrolls]) -> None:
        self.queue.append(item)
        self.take(now)

    def take(self, now: float) -> None:
        """The learner takes the oldest ``batch_size`` unrolls, if it is free and they are there."""
        if self.learning or len(self.queue) < self.algo.batch_size:
            return
        batch, self.queue = self.queue[:self.algo.batch_size], self.queue[self.algo.batch_size:]
        if not self.algo.wait_for_update:
            self.release(batch, now)
        self.learning = True
        self.push(now + self.update_cost_s, LEARNED, -1, batch)

    def learned(self, now: float, _: int, batch: list[tuple[UnrollReady, Unrolls]]) -> None:
        self.learner.learn([ready for ready, _ in batch], join_unrolls([unroll for _, unroll in batch]))
        self.learning = False
        evaluate_if_due(self.cfg, self.record, self.global_model, workers_done=self.learner.finished())
        if self.algo.wait_for_update:
            self.release(batch, now)
        self.take(now)

    def release(self, batch: list[tuple[UnrollReady, Unrolls]], now: float) -> None:
        for ready, _ in batch:
            self.held[ready.worker] -= 1
            if ready.worker in self.idle:
                self.idle.discard(ready.worker)
                self.start_unroll(ready.worker, now)
