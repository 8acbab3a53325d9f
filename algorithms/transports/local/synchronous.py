"""A2C workers mode: synchronous gradient averaging across worker processes.

Each worker collects with its own envs and model replica and computes its clipped gradient, exactly as an
A3C worker does; then all meet at a shared-memory barrier (:class:`~algorithms.infra.shared_memory.GradientExchange`)
and every replica applies the same mean (summed in worker order) with its own optimizer, so the replicas
stay bit-identical without sending parameters. A2C and A3C thus differ only in the update protocol. The
trainer only supervises and records, one complete update at a time (:class:`SyncLog`). Vector mode is
``algorithms.transports.local.single`` with more envs. See docs/design.md for stopping, checkpoints and faults.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from multiprocessing import connection

import numpy as np
import torch

from algorithms.config import RunConfig
from algorithms.core.evaluation import next_evaluation_at, take_snapshot
from algorithms.core.model import build_spaces_model
from algorithms.core.optimizers import make_optimizer
from algorithms.infra.checkpoint import Checkpoint, check_collectors, restore_model
from algorithms.infra.messages import CheckpointPart, EpisodeRow, EvalSnapshot, Record, UpdateRow
from algorithms.infra.shared_memory import GradientExchange, SharedRows
from algorithms.infra.supervision import POLL_S, STALL_TIMEOUT_S, RestartPolicy, Supervisor, WorkerProcesses
from algorithms.schedules.synchronous import SyncLog, checkpoint_crossed, round_episodes, round_row
from algorithms.schedules.worker import RolloutWorker
from algorithms.updates import rule_for
from algorithms.updates.rule import Target

BARRIER_TIMEOUT_S = 2 * STALL_TIMEOUT_S  # a worker's own limit, should the trainer be unable to end the run


@dataclass
class WorkerStart:
    """Where a worker starts: the run's policy version and env steps, and when resuming the checkpoint's
    model, optimizer and this worker's collector states, pickled to bytes: tensors passed as they are
    would reach every worker as one shared-memory tensor, and ``Optimizer.load_state_dict`` keeps the
    tensors it is given, so all replicas would step one set of RMSprop statistics."""

    version: int
    env_steps: int
    states: bytes | None = None


def synchronous_worker(cfg: RunConfig, worker: int, conn: connection.Connection, start: WorkerStart,
                       exchange: GradientExchange, updates: SharedRows[UpdateRow],
                       episodes: SharedRows[EpisodeRow]) -> None:
    """collect -> for each step of the rule: gradient -> exchange at the barrier -> apply the mean; report; until the
    budget or a stop (which, like a checkpoint, falls between rollouts)."""
    algo, states = cfg.algo, pickle.loads(start.states) if start.states is not None else None
    rollouts = RolloutWorker(cfg, worker, start.env_steps, states["collector"] if states else None)
    try:
        model, optimizer = rollouts.model, make_optimizer(rollouts.model, algo)
        if states is not None:
            restore_model(states, model, optimizer)
        rule = rule_for(cfg, Target(optimizer, model.flat_params), can_skip=False)  # replicas take the same step
        version, env_steps = start.version, start.env_steps
        evaluation_at = next_evaluation_at(env_steps, cfg.eval, cfg.total_env_steps)  # the record's rule
        steps_per_update = algo.num_workers * rollouts.steps
        while env_steps < cfg.total_env_steps:  # true until the last update but when resuming a completed run
            collected_at, after = version, env_steps + steps_per_update
            for episode in round_episodes(collected_at, env_steps, rollouts.collect(), algo.num_workers):
                episodes.append(episode)
            rows, stop_voted = [], False
            # One round per step of the rule: once per rollout for the actor-critic, per minibatch for PPO (DD-PPO).
            for stats in rule.gradients(model, rollouts.collector.rollout):
                slot = version % 2
                rule.admit(worker, stats, version, after)
                wait_time = exchange.exchange(worker, slot, model.flat_grads)
                exchange.mean_gradient(slot, out=model.flat_grads)
                step = rule.step(version, collected_at, env_steps, steps_per_update, worker=worker)
                stop_voted = exchange.stop_voted(slot) or stop_voted  # every replica sees the same votes
                rows.append(round_row(collected_at, version, after, step, stats, wait_time))
                version += 1
            env_steps = after
            stop = stop_voted or env_steps >= cfg.total_env_steps
            checkpoint = stop or checkpoint_crossed(env_steps, steps_per_update, cfg.checkpoint_interval)
            rows[-1] = rows[-1]._replace(checkpoint=checkpoint)  # the part follows the batch's last step
            for row in rows:
                updates.append(row)
            if worker == 0 and env_steps >= evaluation_at:  # the replicas are identical: one sends the policy
                conn.send(take_snapshot(model.flat_params, env_steps, version, rollouts.collector.obs_normalizer))
                evaluation_at = next_evaluation_at(env_steps, cfg.eval, cfg.total_env_steps)
            if checkpoint:
                send_checkpoint_part(conn, worker, rollouts, optimizer, version, env_steps)
            if stop:
                return
    finally:
        rollouts.close()


def send_checkpoint_part(conn: connection.Connection, worker: int, rollouts: RolloutWorker,
                         optimizer: torch.optim.Optimizer, version: int, env_steps: int) -> None:
    """This worker's collector and parameters (to check the replicas agree), plus worker 0's model and
    optimizer, pickled here: a tensor sent as is would travel as a shared-memory handle, which a worker
    that exits right after sending could take with it."""
    part = {"collector": rollouts.collector.state_dict(), "params": rollouts.model.flat_params.clone()}
    if worker == 0:
        part.update(model=rollouts.model.state_dict(), optimizer=optimizer.state_dict())
    conn.send(CheckpointPart(version, env_steps, pickle.dumps(part)))


# --------------------------------------------------------------------------- the trainer
def hear_arrivals(exchange: GradientExchange, supervisor: Supervisor, before: np.ndarray) -> np.ndarray:
    """Tell ``supervisor`` of each worker that reached the barrier since ``before``; return the new counts."""
    arrived = exchange.arrived()
    for worker in np.flatnonzero(arrived != before):
        supervisor.heard(int(worker))
    return arrived


def worker_starts(cfg: RunConfig, resume_state: Checkpoint | None) -> list[WorkerStart]:
    if resume_state is None:
        return [WorkerStart(version=0, env_steps=0) for _ in range(cfg.algo.num_workers)]
    collectors = check_collectors(resume_state, cfg.algo.num_workers)
    return [WorkerStart(resume_state["policy_version"], resume_state["env_steps"],
                        pickle.dumps({"model": resume_state["model"], "optimizer": resume_state["optimizer"],
                                      "collector": collector})) for collector in collectors]


def run(cfg: RunConfig, record: Record) -> None:
    """Start the workers, record their updates in order, save their checkpoints, end on any death."""
    algo = cfg.algo
    starts = worker_starts(cfg, record.resume_state)
    num_params = build_spaces_model(cfg).flat_params.numel()
    tables = {worker: (SharedRows(UpdateRow), SharedRows(EpisodeRow)) for worker in range(algo.num_workers)}
    log = SyncLog(record, algo.num_workers, starts[0].version, starts[0].env_steps)

    def recorded_env_steps() -> int:
        """The env steps of the updates completed so far (recorded first: a failure message names them)."""
        log.drain(tables)
        log.record_complete()
        return log.env_steps

    with WorkerProcesses(algo.start_method) as processes:
        exchange = GradientExchange(processes.context, algo.num_workers, num_params, BARRIER_TIMEOUT_S)
        # A synchronous round cannot go on without every worker: a death ends the run (no restarts).
        # A worker's progress is its arrival at the barrier: one that does not arrive holds up the others.
        supervisor = Supervisor(cfg, record, processes, synchronous_worker,
                                lambda worker: (starts[worker], exchange, *tables[worker]),
                                RestartPolicy(record, None), recorded_env_steps, waited_on=exchange.behind)
        arrived = exchange.arrived()
        try:
            supervisor.start_all()
            while supervisor.running():
                for worker, message in supervisor.messages(POLL_S):
                    if isinstance(message, EvalSnapshot):
                        record.evaluate(message)
                    else:
                        log.add_snapshot(worker, message)
                arrived = hear_arrivals(exchange, supervisor, arrived)
                if record.stop_requested:
                    exchange.request_stop()
                supervisor.handle_exits(finishing=False)
                log.drain(tables)
                if log.record_complete():
                    supervisor.progressed()
                supervisor.check_stall()  # its message names the workers that have not reached the barrier
        except BaseException:
            processes.stop()  # before recording the rest: no worker may still be writing rows
            log.drain(tables)
            log.record_rest()
            raise
    # Every worker wrote its last rows and sent its last part before reporting done.
    log.drain(tables)
    log.record_complete()
    if not log.finished():
        raise RuntimeError(f"the workers finished, but update {log.version} or its final checkpoint is incomplete")
