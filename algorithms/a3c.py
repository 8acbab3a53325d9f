"""A3C: asynchronous actor-critic, Hogwild or with a parameter server, with staleness measured per update.

Hogwild workers step shared parameters and a shared optimizer themselves (``lock`` serializes the sync
and the apply, so versions are exact); parameter-server workers push gradients that the trainer applies
in arrival order (``algorithms.parameter_server``). Controlled staleness (``algo.staleness``) and the
version bookkeeping live in ``algorithms.server``. With ``num_workers=1`` either mode runs its one worker
in the trainer process and gives ``single``'s parameters exactly. See docs/design.md for the details.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from multiprocessing import connection
from typing import Any

import torch

from algorithms.evaluation import take_snapshot
from algorithms.learner import LocalLearner, NonFiniteGuard, learner_device, learning_rate, make_optimizer
from algorithms.parameter_server import ParameterServer, pipe_worker
from algorithms.processes import process_context
from algorithms.protocol import (
    EpisodeRow,
    Join,
    Push,
    Record,
    UpdateRow,
    record_episode,
    record_episodes,
    record_update,
)
from algorithms.rollout import Episode
from algorithms.server import GlobalModel, GlobalState, apply_gradient, evaluate_if_due, tend_workers
from algorithms.shared_memory import SharedRows, attach_optimizer_state
from algorithms.supervision import POLL_S, RestartPolicy, Supervisor, WorkerProcesses, uninterruptible


def run_hogwild(cfg: Any, record: Record) -> None:
    torch.set_num_threads(cfg.torch_threads)  # the trainer's, and the in-process worker's
    shared = cfg.algo.num_workers > 1
    global_model = GlobalModel(cfg, record.resume_state, process_context(cfg.algo.start_method), shared)
    (train_hogwild if shared else train_one_worker)(cfg, record, global_model)


def run_parameter_server(cfg: Any, record: Record) -> None:
    torch.set_num_threads(cfg.torch_threads)
    global_model = GlobalModel(cfg, record.resume_state, None, shared=False, device=learner_device(cfg))
    (serve_parameters if cfg.algo.num_workers > 1 else train_one_worker)(cfg, record, global_model)


# --------------------------------------------------------------------------- hogwild
Report = Callable[[UpdateRow, Sequence[Episode]], None]  # a worker's rows, reported while it holds the lock

class HogwildWorker:
    """One worker of the shared global model: sync -> learn -> apply, callable step by step."""

    def __init__(self, cfg: Any, worker: int, state: GlobalState, env_steps: int,
                 collector_state: dict[str, Any] | None = None):
        self.cfg, self.algo, self.worker, self.state = cfg, cfg.algo, worker, state
        self.learner = LocalLearner(cfg, worker, env_steps, collector_state)
        if state.params.grad is None:
            # The global tensor arrives without .grad in a spawned worker: give it one of this process's
            # own, into which each local gradient is copied.
            state.params.grad = torch.zeros_like(state.params)
        self.optimizer = make_optimizer(state.params, self.algo)
        attach_optimizer_state(self.optimizer, state.optimizer_state)
        self.guard = NonFiniteGuard(self.algo, worker)

    def step(self, report: Report | None = None) -> tuple[UpdateRow, list[Episode]]:
        """One update; returns its row and the episodes that ended (also given to ``report``, see :meth:`apply`)."""
        version_at_sync = self.sync()
        episodes, stats = self.learner.learn()
        return self.apply(version_at_sync, stats, episodes, report), episodes

    def sync(self) -> int:
        """Copy the global parameters (``delay`` versions behind, if set) into the local model; return their version."""
        with self.state.locked(self.worker) if self.algo.lock else contextlib.nullcontext():
            version, params = self.state.counters.version, self.state.params
            if self.state.snapshots is not None:
                version, params = self.state.snapshots.delayed(version)
            self.learner.model.flat_params.copy_(params)
            return version

    def apply(self, version_at_sync: int, stats: dict[str, float], episodes: Sequence[Episode] = (),
              report: Report | None = None) -> UpdateRow:
        """Step the global model with the local gradient (or drop it), then take the version it was applied to
        and advance the env steps. With ``lock`` all of it holds the lock; lock-free, only taking the version,
        and ``report(row, episodes)``, so that a checkpoint taken under the lock accounts for exactly the rows
        reported before it. A stopping trainer's SIGTERM waits for the row (:func:`uninterruptible`)."""
        state, counters = self.state, self.state.counters
        with uninterruptible(), state.locked(self.worker) if self.algo.lock else contextlib.nullcontext():
            lr = learning_rate(self.algo, counters.env_steps, self.cfg.total_env_steps)
            version, env_steps = counters.version, counters.env_steps + self.learner.steps  # for messages
            applied = self.guard.admits(stats, version, env_steps)
            if applied:
                applied, lr = apply_gradient(self.optimizer, state.params, self.learner.model.flat_grads, version,
                                             version_at_sync, lr, self.algo.staleness, state.snapshots)
                if self.algo.lock:  # lock-free, a read races other workers' steps: the next loss check sees it
                    self.guard.check_parameters(state.params, version, env_steps)
            with contextlib.nullcontext() if self.algo.lock else state.locked(self.worker):
                version_at_apply = counters.version
                counters.version += applied
                counters.env_steps = env_steps = counters.env_steps + self.learner.steps
                row = UpdateRow(env_steps, version_at_sync, version_at_apply, applied, lr, **stats)
                if report is not None:
                    report(row, episodes)
        return row

    def close(self) -> None:
        self.learner.close()


def train_one_worker(cfg: Any, record: Record, global_model: GlobalModel) -> None:
    """``num_workers=1``: the worker loop in the trainer process, recording directly."""
    counters, resume = global_model.counters, record.resume_state
    collectors = resume["collectors"] if resume is not None else []
    worker = HogwildWorker(cfg, 0, global_model.state(), counters.env_steps, collectors[0] if collectors else None)
    collector = worker.learner.collector

    def checkpoint() -> dict[str, Any]:
        return global_model.checkpoint(collectors=[collector.state_dict()])

    try:
        while counters.env_steps < cfg.total_env_steps and not record.stop_requested:
            row, episodes = worker.step()
            record_episodes(record, 0, int(row.env_steps) - worker.learner.steps, episodes)
            record_update(record, 0, row)
            if record.evaluation_due(counters.env_steps):
                record.evaluate(take_snapshot(worker.state.params, counters.env_steps, counters.version,
                                              collector.obs_normalizer))
            if record.checkpoint_due(counters.env_steps):
                record.save_checkpoint(checkpoint())
    finally:
        worker.close()
        record.save_checkpoint(checkpoint())


def hogwild_worker(cfg: Any, worker: int, conn: connection.Connection, env_steps: int, state: GlobalState,
                   updates: SharedRows[UpdateRow], episodes: SharedRows[EpisodeRow]) -> None:
    """A Hogwild worker process: step the shared model and report rows, until the budget or a stop."""
    hogwild = HogwildWorker(cfg, worker, state, env_steps)
    counters = state.counters

    def report(row: UpdateRow, finished: Sequence[Episode]) -> None:
        start = row.env_steps - hogwild.learner.steps
        for episode in finished:
            episodes.append(EpisodeRow(row.version_at_sync, start + episode.steps_into_rollout, episode.ret,
                                       episode.length))
        updates.append(row)

    publish = state.obs_statistics is not None and worker == 0  # for the trainer's evaluations
    try:
        while not counters.stop and counters.env_steps < cfg.total_env_steps:
            hogwild.step(report)
            if publish:
                state.obs_statistics.publish(hogwild.learner.collector.obs_normalizer.state_dict())
    finally:
        hogwild.close()


def train_hogwild(cfg: Any, record: Record, global_model: GlobalModel) -> None:
    """Start the Hogwild workers, then drain their rows into the record and supervise until they finish."""
    algo, counters, lock = cfg.algo, global_model.counters, global_model.lock
    state = global_model.state()
    tables = {worker: (SharedRows(UpdateRow), SharedRows(EpisodeRow)) for worker in range(algo.num_workers)}

    def drain(marks: dict[int, tuple[int, int]] | None = None) -> bool:
        """Record the rows written so far (or up to each worker's ``marks``), updates by version."""
        rows = []
        for worker, (updates, episodes) in tables.items():
            until_update, until_episode = marks[worker] if marks else (None, None)
            for episode in episodes.drain(until_episode):
                record_episode(record, worker, episode)
            rows.extend((row.version_at_apply, worker, row) for row in updates.drain(until_update))
        rows.sort(key=lambda item: item[0])  # stable: a worker's dropped updates keep their order
        for _, worker, row in rows:
            record_update(record, worker, row)
        return bool(rows)

    def checkpoint() -> None:
        """Save the global state with exactly the rows reported before it: workers report under the lock."""
        with global_model.frozen():
            state = global_model.checkpoint_unlocked()
            marks = {worker: (updates.written, episodes.written) for worker, (updates, episodes) in tables.items()}
        drain(marks)
        record.save_checkpoint(state)

    with WorkerProcesses(algo.start_method) as processes:
        supervisor = Supervisor(cfg, record, processes, hogwild_worker,
                                lambda worker: (counters.env_steps, state, *tables[worker]),
                                RestartPolicy(record, algo.max_restarts), lambda: counters.env_steps,
                                on_death=lambda worker: {"lock_released": lock.free_if_held_by(worker)})
        try:
            supervisor.start_all()
            while supervisor.running():
                supervisor.messages(POLL_S)
                if drain():
                    supervisor.progressed()
                if record.stop_requested:
                    counters.request_stop()
                supervisor.handle_exits(finishing=counters.stop or counters.env_steps >= cfg.total_env_steps)
                evaluate_if_due(cfg, record, global_model, workers_done=False)
                if record.checkpoint_due(counters.env_steps):
                    checkpoint()
                supervisor.check_stall()
        finally:
            counters.request_stop()
            processes.stop()
            for worker in tables:  # a worker terminated inside the lock must not block the checkpoint
                lock.free_if_held_by(worker)
            checkpoint()
    evaluate_if_due(cfg, record, global_model, workers_done=True)


# --------------------------------------------------------------------------- parameter server
def serve_parameters(cfg: Any, record: Record, global_model: GlobalModel) -> None:
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
