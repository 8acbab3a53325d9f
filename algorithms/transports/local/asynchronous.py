"""A3C: asynchronous actor-critic, Hogwild or with a parameter server, with staleness measured per update.

Hogwild workers step shared parameters and a shared optimizer themselves (``lock`` serializes the sync
and the apply, so versions are exact); parameter-server workers push gradients that the trainer applies
in arrival order (``algorithms.schedules.parameter_server``); both step with the run's update rule, which applies
controlled staleness (``algo.staleness``). With ``num_workers=1`` either mode runs its one worker in the trainer
process and gives ``single``'s parameters exactly. See docs/design.md for the details.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from multiprocessing import connection

import torch

from algorithms.config import RunConfig
from algorithms.core.evaluation import take_snapshot
from algorithms.core.model import learner_device
from algorithms.infra.checkpoint import Checkpoint
from algorithms.infra.messages import (
    Episode,
    EpisodeRow,
    Join,
    Push,
    Record,
    Reply,
    UpdateRow,
    record_episode,
    record_episodes,
    record_update,
)
from algorithms.infra.processes import process_context
from algorithms.infra.shared_memory import SharedRows
from algorithms.infra.supervision import POLL_S, RestartPolicy, Supervisor, WorkerProcesses
from algorithms.infra.timing import TIMINGS
from algorithms.schedules.global_model import GlobalModel, GlobalState, evaluate_if_due
from algorithms.schedules.hogwild import HogwildWorker
from algorithms.schedules.parameter_server import ParameterServer, parameter_server_worker
from algorithms.schedules.worker import RolloutWorker


def run_hogwild(cfg: RunConfig, record: Record) -> None:
    torch.set_num_threads(cfg.torch_threads)  # the trainer's, and the in-process worker's
    shared = cfg.algo.num_workers > 1  # one worker runs in this process: nothing to share
    context = process_context(cfg.algo.start_method) if shared else None
    global_model = GlobalModel(cfg, record.resume_state, shared_with=context)
    (train_hogwild if shared else train_one_worker)(cfg, record, global_model)


def run_parameter_server(cfg: RunConfig, record: Record) -> None:
    torch.set_num_threads(cfg.torch_threads)
    global_model = GlobalModel(cfg, record.resume_state, device=learner_device(cfg))
    (serve_parameters if cfg.algo.num_workers > 1 else train_one_worker)(cfg, record, global_model)


# --------------------------------------------------------------------------- hogwild


def train_one_worker(cfg: RunConfig, record: Record, global_model: GlobalModel) -> None:
    """``num_workers=1``: the worker loop in the trainer process, recording directly."""
    counters, resume = global_model.counters, record.resume_state
    collectors = resume["collectors"] if resume is not None else []
    worker = HogwildWorker(cfg, 0, global_model.state(), counters.env_steps, collectors[0] if collectors else None)
    collector = worker.rollouts.collector

    def checkpoint() -> Checkpoint:
        return global_model.checkpoint(collectors=[collector.state_dict()])

    try:
        while counters.env_steps < cfg.total_env_steps and not record.stop_requested:
            with TIMINGS.part("update"):  # what backend=simulated's costs are calibrated on
                row, episodes = worker.step()
                record_episodes(record, 0, int(row.env_steps) - worker.rollouts.steps, episodes)
                record_update(record, 0, row)
                if record.evaluation_due(counters.env_steps):
                    record.evaluate(take_snapshot(worker.state.params, counters.env_steps, counters.version,
                                                  collector.obs_normalizer))
                if record.checkpoint_due(counters.env_steps):
                    record.save_checkpoint(checkpoint())
    finally:
        worker.close()
        record.save_checkpoint(checkpoint())


def hogwild_worker(cfg: RunConfig, worker: int, conn: connection.Connection, env_steps: int, state: GlobalState,
                   updates: SharedRows[UpdateRow], episodes: SharedRows[EpisodeRow]) -> None:
    """A Hogwild worker process: step the shared model and report rows, until the budget or a stop."""
    hogwild = HogwildWorker(cfg, worker, state, env_steps)
    counters = state.counters

    def report(row: UpdateRow, finished: Sequence[Episode]) -> None:
        start = row.env_steps - hogwild.rollouts.steps
        for episode in finished:
            episodes.append(EpisodeRow(row.version_at_sync, start + episode.steps_into_rollout, episode.ret,
                                       episode.length))
        updates.append(row)

    published = state.obs_statistics if worker == 0 else None  # for the trainer's evaluations
    try:
        while not counters.stop and counters.env_steps < cfg.total_env_steps:
            hogwild.step(report)
            if published is not None:
                normalizer = hogwild.rollouts.collector.obs_normalizer
                assert normalizer is not None  # observation statistics are kept when observations are normalized
                published.publish(normalizer.state_dict())
    finally:
        hogwild.close()


def train_hogwild(cfg: RunConfig, record: Record, global_model: GlobalModel) -> None:
    """Start the Hogwild workers, then drain their rows into the record and supervise until they finish."""
    algo, counters, lock = cfg.algo, global_model.counters, global_model.lock
    assert lock is not None  # the global model is shared with the worker processes
    state = global_model.state()
    tables = {worker: (SharedRows(UpdateRow), SharedRows(EpisodeRow)) for worker in range(algo.num_workers)}

    def drain(marks: dict[int, tuple[int, int]] | None = None) -> set[int]:
        """Record the rows written so far (or up to each worker's ``marks``), updates by version; return the
        workers that wrote update rows."""
        rows: list[tuple[int, int, UpdateRow]] = []
        for worker, (updates, episodes) in tables.items():
            until_update, until_episode = marks[worker] if marks else (None, None)
            for episode in episodes.drain(until_episode):
                record_episode(record, worker, episode)
            rows.extend((row.version_at_apply, worker, row) for row in updates.drain(until_update))
        rows.sort(key=lambda item: item[0])  # stable: a worker's dropped updates keep their order
        for _, worker, row in rows:
            record_update(record, worker, row)
        return {worker for _, worker, _ in rows}

    def checkpoint() -> None:
        """Save the global state with exactly the rows reported before it: workers report under the lock."""
        with global_model.frozen():
            state = global_model.checkpoint_unlocked()
            marks = {worker: (updates.written, episodes.written) for worker, (updates, episodes) in tables.items()}
        drain(marks)
        record.save_checkpoint(state)

    with WorkerProcesses(algo.start_method) as processes:
        # A worker that holds the lock is the one the others wait for.
        supervisor = Supervisor(cfg, record, processes, hogwild_worker,
                                lambda worker: (counters.env_steps, state, *tables[worker]),
                                RestartPolicy(record, algo.max_restarts), lambda: counters.env_steps,
                                on_death=lambda worker: {"lock_released": lock.free_if_held_by(worker)},
                                waited_on=lock.held_by_workers)
        try:
            supervisor.start_all()
            while supervisor.running():
                supervisor.messages(POLL_S)
                if reported := drain():
                    supervisor.progressed()
                for worker in reported:
                    supervisor.heard(worker)
                if record.stop_requested:
                    counters.request_stop()
                finishing = counters.stop or counters.env_steps >= cfg.total_env_steps
                supervisor.handle_exits(finishing)
                evaluate_if_due(cfg, record, global_model, workers_done=False)
                if record.checkpoint_due(counters.env_steps):
                    checkpoint()
                supervisor.check_stall(finishing=finishing)
        finally:
            counters.request_stop()
            processes.stop()
            for worker in tables:  # a worker terminated inside the lock must not block the checkpoint
                lock.free_if_held_by(worker)
            checkpoint()
    evaluate_if_due(cfg, record, global_model, workers_done=True)


# --------------------------------------------------------------------------- parameter server
def serve_parameters(cfg: RunConfig, record: Record, global_model: GlobalModel) -> None:
    """The trainer as parameter server over pipes: messages found waiting together are taken by send time."""
    algo, counters = cfg.algo, global_model.counters
    server = ParameterServer(cfg, record, global_model)
    with WorkerProcesses(algo.start_method) as processes:
        supervisor = Supervisor(cfg, record, processes, pipe_worker, lambda worker: (counters.env_steps,),
                                RestartPolicy(record, algo.max_restarts), lambda: counters.env_steps)
        try:
            supervisor.start_all()
            while supervisor.running():
                for worker, message in sorted(supervisor.messages(POLL_S), key=lambda item: item[1].sent_at):
                    server.stop = record.stop_requested
                    if isinstance(message, Push):
                        supervisor.send(worker, server.push(message))
                        supervisor.progressed()
                    elif isinstance(message, Join):
                        supervisor.send(worker, server.reply())
                server.stop = record.stop_requested
                tend_workers(cfg, record, global_model, supervisor, finishing=server.finishing())
        finally:
            processes.stop()
            record.save_checkpoint(global_model.checkpoint())
    evaluate_if_due(cfg, record, global_model, workers_done=True)


class PipeLink:
    """The transport over a worker process's pipe to the trainer."""

    def __init__(self, conn: connection.Connection, worker: int):
        self.conn, self.worker = conn, worker

    def join(self) -> Reply | None:
        self.conn.send(Join(self.worker, time.monotonic()))
        return self.conn.recv()

    def push(self, push: Push) -> Reply | None:
        self.conn.send(push)
        return self.conn.recv()


def pipe_worker(cfg: RunConfig, worker: int, conn: connection.Connection, env_steps: int) -> None:
    """A worker process of the local parameter server, starting at ``env_steps``."""
    rollouts = RolloutWorker(cfg, worker, env_steps)
    try:
        parameter_server_worker(rollouts, PipeLink(conn, worker))
    finally:
        rollouts.close()


def tend_workers(cfg: RunConfig, record: Record, global_model: GlobalModel, supervisor: Supervisor,
                 finishing: bool) -> None:
    """What a trainer serving worker processes does after each batch of messages: answer the workers' exits
    (``supervisor``, an ``algorithms.infra.supervision.Supervisor``), evaluate and checkpoint when due, answer a
    stalled worker (a straggler of a finishing run is stopped, not waited for) and watch for a stall of the run."""
    supervisor.handle_exits(finishing=finishing)
    evaluate_if_due(cfg, record, global_model, workers_done=False)
    if record.checkpoint_due(global_model.counters.env_steps):
        record.save_checkpoint(global_model.checkpoint())
    supervisor.check_stall(finishing=finishing)
