"""A3C: asynchronous actor-critic, in Hogwild mode or with a parameter server.

Both modes use the model, loss, rollout and optimizer every schedule shares (``algorithms.learn``);
they differ from ``single`` and ``a2c`` only in who applies a gradient, and when.

Hogwild (``mode=hogwild``)
    The global parameters (one flat tensor) and the optimizer state (shared-statistics RMSprop as in
    the A3C paper, or Adam with a shared step count) live in shared memory, created by the trainer up
    front. Each worker process loops: sync (copy the global parameters into its local model) ->
    collect ``n_steps`` -> compute the gradient locally -> *copy* it into the global tensor's ``.grad``,
    a buffer private to the process (aliasing a local ``.grad`` into the global model instead, as a
    popular implementation does, silently sums gradients across steps under current PyTorch) -> step
    the shared optimizer. ``lock=false`` is lock-free Hogwild: only taking a version number is
    serialized. ``lock=true`` serializes the sync and the apply, so versions are exact.

Parameter server (``mode=parameter_server``)
    The trainer process is the server: it owns the parameters and the optimizer. A worker sends its
    gradient, tagged with the version of the parameters it was computed with, over its own pipe; the
    server applies gradients in the order they arrive (those found waiting together, by send time)
    and answers each with the current parameters and their version, which the worker uses for its
    next rollout (it waits for that answer: one gradient in flight per worker).

Staleness
    The policy version counts applied updates. A gradient's ``version_at_sync`` is the version of the
    parameters it was computed with, ``version_at_apply`` the version it was applied to (the number of
    updates applied before it); ``staleness`` is the difference. Both are exact with ``lock=true`` and
    in parameter-server mode. Lock-free, ``version_at_sync`` counts the updates complete before the
    copy (which may also hold parts of updates in flight: that is Hogwild), and ``version_at_apply``
    is a ticket taken after the optimizer step: the updates completed before this one.

Controlled staleness
    ``staleness.delay=k``: a :class:`~algorithms.shared.SnapshotRing` keeps the parameters of the latest
    ``k + 1`` versions; workers sync to the version ``k`` behind the current one, and their gradient is
    applied at the current version, so staleness is exactly ``k`` once ``k`` versions exist (with one
    worker: ``min(version, k)``). Hogwild needs ``lock=true`` for it, so that no snapshot is
    overwritten while being copied. ``staleness.max=K`` drops a gradient staler than ``K``: it is
    recorded with ``applied=false`` at the version of that moment, and the version does not advance.
    ``staleness.lr_scaling=inverse`` divides the step size by ``max(1, staleness)``.

``num_workers=1`` runs in the trainer process in either mode (with one worker, both apply the same
gradients in the same order) and gives exactly the parameters of ``single`` with the same seed.

Records and faults
    Hogwild workers report each update and finished episode as a row in shared memory
    (:class:`~algorithms.shared.SharedRows`), drained by the trainer every ``POLL_S`` seconds into the
    run record, sorted by ``version_at_apply``: no queue put in the worker loop, and a SIGKILLed worker
    loses no row it wrote (``wall_time`` in ``updates.csv`` is when the trainer recorded the row).
    Parameter-server workers' rows travel with their gradients. The trainer waits on worker pipes and
    process sentinels together: a worker that dies is logged (``worker_failed``: worker, exit code,
    env steps, its traceback if it raised) and restarted from the current global parameters at the
    current env step, up to ``max_restarts`` restarts in the whole run; one more death fails the run.
    A lock held by a dead worker is released. If no update arrives for ``STALL_TIMEOUT_S`` seconds the
    run fails rather than hang.

Checkpoints (periodic, and final after completion, failure or Ctrl-C) hold the global parameters,
the optimizer state, the counters and the snapshot ring. Worker processes' sampling generators and
normalizer statistics are their own: a restarted or resumed worker starts them afresh, seeded by
``reset_seed`` at the env step it starts at.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from multiprocessing import connection
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp

from algorithms.envs import make_vector_env
from algorithms.learn import (
    Record,
    build_collector,
    build_model,
    compute_gradients,
    learning_rate,
    make_optimizer,
    record_episodes,
    reset_seed,
    restore_rng_state,
    rng_state,
    set_learning_rate,
)
from algorithms.losses import LOSS_STATS
from algorithms.rollout import Episode
from algorithms.shared import (
    POLL_S,
    STALL_TIMEOUT_S,
    HolderLock,
    SharedCounters,
    SharedRows,
    SnapshotRing,
    WorkerFailure,
    WorkerProcesses,
    attach_optimizer_state,
    describe_exit,
    report_errors,
    share_optimizer_state,
    worker_setup,
)

# One update as a worker reports it (a SharedRows row, a tuple in process).
UPDATE_FIELDS = ("env_steps", "version_at_sync", "version_at_apply", "applied", "lr", *LOSS_STATS)
EPISODE_FIELDS = ("env_steps", "return", "length")
LOCK_TIMEOUT_S = 10.0  # the trainer's own wait for the lock (checkpoints)
TRAINER = -2  # the trainer's holder id on the lock


def run(cfg: Any, record: Record) -> None:
    if cfg.backend == "ray":  # the parameter server and its workers as Ray actors
        from algorithms import ray_backend

        ray_backend.run(cfg, record)
        return
    torch.set_num_threads(cfg.torch_threads)  # the trainer's, and the in-process worker's
    algo = cfg.algo
    context = mp.get_context(algo.start_method)
    multi_process = algo.num_workers > 1
    global_model = GlobalModel(cfg, record.resume_state, context, shared=multi_process and algo.mode == "hogwild")
    if not multi_process:
        train_one_worker(cfg, record, global_model)
    elif algo.mode == "hogwild":
        train_hogwild(cfg, record, global_model)
    else:
        serve_parameters(cfg, record, global_model)


# --------------------------------------------------------------------------- the global model
@dataclass
class GlobalState:
    """What every hogwild worker shares, all of it in shared memory."""

    params: torch.Tensor  # the global model's flat parameters
    optimizer_state: dict[str, torch.Tensor]
    counters: SharedCounters
    lock: HolderLock
    snapshots: SnapshotRing | None


class GlobalModel:
    """The trainer's global parameters, optimizer, counters and snapshot ring: created, resumed, saved."""

    def __init__(self, cfg: Any, resume_state: dict[str, Any] | None, context: Any, shared: bool):
        algo = cfg.algo
        envs = make_vector_env(cfg.env, 1)  # only for the spaces: the same model as every schedule
        try:
            self.model = build_model(cfg, envs)
        finally:
            envs.close()
        if shared:
            self.model.share_memory()
        self.optimizer = make_optimizer(self.model, algo)
        self.counters = SharedCounters()
        if resume_state is not None:
            self.model.load_state_dict(resume_state["model"])
            self.optimizer.load_state_dict(resume_state["optimizer"])
            self.counters.version = resume_state["policy_version"]
            self.counters.env_steps = resume_state["env_steps"]
            if "rng" in resume_state:  # a local a2c checkpoint, resumed on Ray, keeps its randomness in its collectors
                restore_rng_state(resume_state["rng"])
        self.snapshots = None
        if algo.staleness.delay:
            self.snapshots = SnapshotRing(self.model.flat_params, algo.staleness.delay, self.counters.version)
            saved = resume_state.get("snapshots") if resume_state else None
            if saved is not None and len(saved["slots"]) == algo.staleness.delay + 1:
                self.snapshots.load_state_dict(saved)
        self.lock = HolderLock(context)
        # Shared last, after loading: load_state_dict replaces the optimizer's state tensors.
        self.optimizer_state = share_optimizer_state(self.optimizer) if shared else dict(
            self.optimizer.state[self.model.flat_params])
        if shared and self.snapshots is not None:
            self.snapshots.share_memory_()

    def state(self) -> GlobalState:
        return GlobalState(self.model.flat_params, self.optimizer_state, self.counters, self.lock, self.snapshots)

    def checkpoint(self, **extra: Any) -> dict[str, Any]:
        """A consistent copy of the global state (taken under the lock while workers run)."""
        if not self.lock.acquire(TRAINER, timeout=LOCK_TIMEOUT_S):
            raise RuntimeError(f"could not take the global lock within {LOCK_TIMEOUT_S}s to checkpoint")
        try:
            return {
                "model": {name: tensor.clone() for name, tensor in self.model.state_dict().items()},
                "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                "env_steps": self.counters.env_steps,
                "policy_version": self.counters.version,
                "snapshots": self.snapshots.state_dict() if self.snapshots is not None else None,
                "rng": rng_state(),
                **extra,
            }
        finally:
            self.lock.release()


def apply_gradient(optimizer: torch.optim.Optimizer, params: torch.Tensor, gradient: torch.Tensor, version: int,
                   version_at_sync: int, lr: float, staleness_cfg: Any,
                   snapshots: SnapshotRing | None) -> tuple[bool, float]:
    """Step ``params`` with a copy of ``gradient`` at ``version``, unless too stale; return (applied, lr).

    The step size is ``lr``, divided by ``max(1, staleness)`` under ``lr_scaling=inverse``.
    """
    staleness = version - version_at_sync
    if staleness_cfg.max is not None and staleness > staleness_cfg.max:
        return False, lr
    if staleness_cfg.lr_scaling == "inverse":
        lr /= max(1, staleness)
    set_learning_rate(optimizer, lr)
    params.grad.copy_(gradient)
    optimizer.step()
    if snapshots is not None:
        snapshots.record(version + 1, params)
    return True, lr


# --------------------------------------------------------------------------- workers
class LocalLearner:
    """A worker's own envs, collector and model copy: it computes gradients and never applies them."""

    def __init__(self, cfg: Any, worker: int, env_steps: int):
        self.algo = cfg.algo
        num_envs = self.algo.num_envs
        self.envs = make_vector_env(cfg.env, num_envs, self.algo.vector_backend)
        self.model = build_model(cfg, self.envs)
        self.collector = build_collector(cfg, self.envs, worker)
        seed = reset_seed(cfg, worker, num_envs, env_steps)
        if env_steps:  # a restarted or resumed worker draws new actions rather than replaying its first ones
            self.collector.rng = np.random.default_rng(seed)
        self.collector.reset(seed)

    def learn(self) -> tuple[list[Episode], dict[str, float]]:
        """Collect one rollout with the local model and leave its gradient in ``model.flat_grads``."""
        episodes = self.collector.collect(self.model)
        return episodes, compute_gradients(self.model, self.collector.rollout, self.algo)

    def close(self) -> None:
        self.envs.close()


class HogwildWorker:
    """One worker of the shared global model: sync -> learn -> apply, callable step by step."""

    def __init__(self, cfg: Any, worker: int, state: GlobalState, env_steps: int):
        self.cfg, self.algo, self.worker, self.state = cfg, cfg.algo, worker, state
        self.learner = LocalLearner(cfg, worker, env_steps)
        if state.params.grad is None:
            # The global tensor arrives without .grad in a spawned worker: give it one of this process's
            # own, into which each local gradient is copied.
            state.params.grad = torch.zeros_like(state.params)
        self.optimizer = make_optimizer(state.params, self.algo)
        attach_optimizer_state(self.optimizer, state.optimizer_state)

    def step(self) -> tuple[tuple[float, ...], list[Episode]]:
        """One update; returns its row (see ``UPDATE_FIELDS``) and the episodes that ended."""
        version_at_sync = self.sync()
        episodes, stats = self.learner.learn()
        return self.apply(version_at_sync, stats), episodes

    def sync(self) -> int:
        """Copy the global parameters (``delay`` versions behind, if set) into the local model."""
        if self.algo.lock:
            with self.state.lock.held(self.worker):
                return self._copy_params()
        return self._copy_params()

    def _copy_params(self) -> int:
        version = self.state.counters.version
        params = self.state.params
        if self.state.snapshots is not None:
            version, params = self.state.snapshots.delayed(version)
        self.learner.model.flat_params.copy_(params)
        return version

    def apply(self, version_at_sync: int, stats: dict[str, float]) -> tuple[float, ...]:
        """Apply the local gradient to the global model (or drop it) and take its version."""
        lock = self.state.lock
        if self.algo.lock:
            with lock.held(self.worker):
                applied, lr = self._step(version_at_sync)
                version_at_apply, env_steps = self._take_version(applied)
        else:
            applied, lr = self._step(version_at_sync)
            with lock.held(self.worker):
                version_at_apply, env_steps = self._take_version(applied)
        return (env_steps, version_at_sync, version_at_apply, applied, lr, *(stats[name] for name in LOSS_STATS))

    def _step(self, version_at_sync: int) -> tuple[bool, float]:
        state = self.state
        lr = learning_rate(self.algo, state.counters.env_steps, self.cfg.total_env_steps)
        return apply_gradient(self.optimizer, state.params, self.learner.model.flat_grads, state.counters.version,
                              version_at_sync, lr, self.algo.staleness, state.snapshots)

    def _take_version(self, applied: bool) -> tuple[int, int]:
        """The version this update was applied to, and the env steps including its rollout (lock held)."""
        counters = self.state.counters
        version = counters.version
        if applied:
            counters.version = version + 1
        counters.env_steps = env_steps = counters.env_steps + self.learner.collector.steps_per_collect
        return version, env_steps

    def close(self) -> None:
        self.learner.close()


def record_update(record: Record, worker: int, row: tuple[float, ...] | np.ndarray) -> None:
    env_steps, version_at_sync, version_at_apply, applied, lr, *stats = row
    record.update(worker, int(env_steps), int(version_at_sync), int(version_at_apply), applied=bool(applied),
                  lr=float(lr), **{name: float(value) for name, value in zip(LOSS_STATS, stats, strict=True)})


# --------------------------------------------------------------------------- one worker, in process
def train_one_worker(cfg: Any, record: Record, global_model: GlobalModel) -> None:
    """``num_workers=1``: the worker loop in the trainer process, recording directly."""
    counters = global_model.counters
    worker = HogwildWorker(cfg, 0, global_model.state(), counters.env_steps)
    collector = worker.learner.collector
    if record.resume_state is not None and record.resume_state.get("collectors"):
        collector.load_state_dict(record.resume_state["collectors"][0])

    def checkpoint() -> dict[str, Any]:
        return global_model.checkpoint(collectors=[collector.state_dict()])

    try:
        while counters.env_steps < cfg.total_env_steps and not record.stop_requested:
            row, episodes = worker.step()
            record_episodes(record, 0, int(row[0]) - collector.steps_per_collect, episodes)
            record_update(record, 0, row)
            if record.checkpoint_due(counters.env_steps):
                record.save_checkpoint(checkpoint())
    finally:
        worker.close()
        record.save_checkpoint(checkpoint())


# --------------------------------------------------------------------------- worker processes
def hogwild_worker_main(cfg: Any, worker: int, conn: connection.Connection, env_steps: int, state: GlobalState,
                        updates: SharedRows, episodes: SharedRows) -> None:
    worker_setup(cfg.torch_threads)
    report_errors(conn, hogwild_loop, cfg, worker, env_steps, state, updates, episodes)


def hogwild_loop(cfg: Any, worker: int, env_steps: int, state: GlobalState, updates: SharedRows,
                 episodes: SharedRows) -> None:
    hogwild = HogwildWorker(cfg, worker, state, env_steps)
    steps = hogwild.learner.collector.steps_per_collect
    counters = state.counters
    try:
        while not counters.stop and counters.env_steps < cfg.total_env_steps:
            row, finished = hogwild.step()
            for episode in finished:
                episodes.append((row[0] - steps + episode.steps_into_rollout, episode.ret, episode.length))
            updates.append(row)
    finally:
        hogwild.close()


def parameter_server_worker_main(cfg: Any, worker: int, conn: connection.Connection, env_steps: int) -> None:
    worker_setup(cfg.torch_threads)
    report_errors(conn, parameter_server_loop, cfg, worker, env_steps, conn)


def parameter_server_loop(cfg: Any, worker: int, env_steps: int, conn: connection.Connection) -> None:
    """Pull (version, parameters), learn, push the gradient tagged with that version; until told to stop."""
    learner = LocalLearner(cfg, worker, env_steps)
    steps = learner.collector.steps_per_collect
    try:
        # Messages end with their send time (CLOCK_MONOTONIC is system-wide): the server orders by it.
        conn.send(("ready", time.monotonic()))
        while (reply := conn.recv()) is not None:
            version, params = reply
            learner.model.flat_params.copy_(torch.from_numpy(params))
            episodes, stats = learner.learn()
            finished = [(episode.steps_into_rollout, episode.ret, episode.length) for episode in episodes]
            conn.send(("gradient", version, learner.model.flat_grads.numpy(), stats, finished, steps,
                       time.monotonic()))
    finally:
        learner.close()


class Supervisor:
    """Starts the worker processes of a run, passes their messages on, and handles their deaths.

    Each worker gets a fresh pipe per start; a death (any non-zero exit) is logged and answered by a
    restart from the current global state, while restarts remain and the run is not finishing.
    """

    def __init__(self, cfg: Any, record: Record, processes: WorkerProcesses, target: Any, args: Any,
                 counters: SharedCounters, lock: HolderLock | None):
        self.cfg, self.record, self.processes = cfg, record, processes
        self.target, self.args = target, args  # args(worker, env_steps) -> the target's arguments after conn
        self.counters, self.lock = counters, lock
        self.conns: dict[int, connection.Connection] = {}
        self.errors: dict[int, str] = {}
        self.handled: set[int] = set()  # exited workers already dealt with
        self.done: set[int] = set()  # workers that finished their loop and are only exiting
        self.restarts = 0
        self.last_progress = time.monotonic()

    def start(self, worker: int) -> None:
        ours, theirs = self.processes.context.Pipe()
        arguments = (self.cfg, worker, theirs, self.counters.env_steps, *self.args(worker))
        if worker in self.processes.processes:
            self.processes.restart(worker, arguments)
        else:
            self.processes.start(worker, self.target, arguments)
        theirs.close()  # the child's end: closing ours lets a dead worker's pipe report EOF
        self.conns[worker] = ours
        self.handled.discard(worker)
        self.done.discard(worker)

    def running(self) -> bool:
        """Whether any worker is alive and not done."""
        return bool(set(self.processes.alive()) - self.done)

    def messages(self, timeout: float) -> list[tuple[int, Any]]:
        """Wait up to ``timeout`` for any message or exit; return the messages other than errors."""
        sentinels = [self.processes.processes[w].sentinel for w in self.processes.alive()]
        ready = set(connection.wait([*self.conns.values(), *sentinels], timeout))
        received = []
        for worker, conn in list(self.conns.items()):
            if conn in ready:
                received.extend((worker, message) for message in self._receive(worker))
        return received

    def _receive(self, worker: int) -> list[Any]:
        conn, received = self.conns[worker], []
        try:
            while conn.poll():
                message = conn.recv()
                if message[0] == "error":
                    self.errors[worker] = message[1]
                elif message[0] == "done":
                    self.done.add(worker)
                else:
                    received.append(message)
        except (EOFError, OSError):  # the worker is gone; its exit is handled from its sentinel
            conn.close()
            del self.conns[worker]
        return received

    def send(self, worker: int, message: Any) -> None:
        try:
            self.conns[worker].send(message)
        except (KeyError, OSError):  # died meanwhile: its exit is handled from its sentinel
            pass

    def handle_exits(self, finishing: bool) -> None:
        """Log each worker that died; restart it, or raise WorkerFailure when no restart is left."""
        for exit in self.processes.exited():
            if exit.worker in self.handled:
                continue
            self.handled.add(exit.worker)
            if exit.exitcode == 0:
                continue
            if exit.worker in self.conns:
                self._receive(exit.worker)  # its traceback, if it sent one before exiting
            error = self.errors.pop(exit.worker, None)
            env_steps = self.counters.env_steps
            freed = self.lock is not None and self.lock.free_if_held_by(exit.worker)
            self.record.event("worker_failed", worker=exit.worker, exitcode=exit.exitcode, env_steps=env_steps,
                              reason=describe_exit(exit.exitcode), error=error, lock_released=freed)
            if finishing:
                continue
            if self.restarts >= self.cfg.algo.max_restarts:
                detail = f"\n{error.strip().splitlines()[-1]}" if error else ""
                raise WorkerFailure(f"{exit.describe()} at env step {env_steps}, and no restart is left "
                                    f"(algo.max_restarts={self.cfg.algo.max_restarts}){detail}")
            self.restarts += 1
            self.start(exit.worker)
            self.record.event("worker_restarted", worker=exit.worker, env_steps=env_steps, restart=self.restarts)

    def progressed(self) -> None:
        self.last_progress = time.monotonic()

    def check_stall(self) -> None:
        idle = time.monotonic() - self.last_progress
        if idle > STALL_TIMEOUT_S:
            raise WorkerFailure(f"no update in {idle:.0f}s with workers {self.processes.alive()} alive; "
                                "stopping instead of hanging")


def train_hogwild(cfg: Any, record: Record, global_model: GlobalModel) -> None:
    """Start the hogwild workers, then drain their rows into the record and supervise until they finish."""
    algo, counters = cfg.algo, global_model.counters
    state = global_model.state()
    tables = {worker: (SharedRows(len(UPDATE_FIELDS)), SharedRows(len(EPISODE_FIELDS)))
              for worker in range(algo.num_workers)}

    def drain() -> bool:
        rows = []
        for worker, (updates, episodes) in tables.items():
            for env_steps, ret, length in episodes.drain():
                record.episode(worker, int(env_steps), float(ret), int(length))
            rows.extend((row[2], worker, row) for row in updates.drain())
        rows.sort(key=lambda item: item[0])  # stable: a worker's dropped updates keep their order
        for _, worker, row in rows:
            record_update(record, worker, row)
        return bool(rows)

    with WorkerProcesses(algo.start_method) as processes:
        supervisor = Supervisor(cfg, record, processes, hogwild_worker_main,
                                lambda worker: (state, *tables[worker]), counters, global_model.lock)
        try:
            for worker in range(algo.num_workers):
                supervisor.start(worker)
            while supervisor.running():
                supervisor.messages(POLL_S)
                if drain():
                    supervisor.progressed()
                if record.stop_requested:
                    counters.request_stop()
                supervisor.handle_exits(finishing=counters.stop or counters.env_steps >= cfg.total_env_steps)
                if record.checkpoint_due(counters.env_steps):
                    record.save_checkpoint(global_model.checkpoint())
                supervisor.check_stall()
        finally:
            counters.request_stop()
            processes.stop()
            for worker in tables:  # a worker terminated inside the lock must not block the checkpoint
                global_model.lock.free_if_held_by(worker)
            drain()
            record.save_checkpoint(global_model.checkpoint())


def parameters_for_worker(global_model: GlobalModel) -> tuple[int, np.ndarray]:
    """What the server answers a worker with: the current version (``delay`` behind it, if set) and its
    parameters."""
    version, source = global_model.counters.version, global_model.model.flat_params
    if global_model.snapshots is not None:
        version, source = global_model.snapshots.delayed(version)
    return version, source.numpy()


def apply_worker_gradient(cfg: Any, record: Record, global_model: GlobalModel, worker: int, version_at_sync: int,
                          gradient: np.ndarray, stats: dict[str, float], finished: list[tuple[int, float, int]],
                          steps: int) -> None:
    """The server's part of one update: record the episodes that came with a worker's gradient, apply it at
    the current version (or drop it as too stale), advance the counters and record the update."""
    algo, counters = cfg.algo, global_model.counters
    env_steps, version = counters.env_steps, counters.version
    for steps_into_rollout, ret, length in finished:
        record.episode(worker, env_steps + steps_into_rollout, ret, length)
    lr = learning_rate(algo, env_steps, cfg.total_env_steps)
    applied, lr = apply_gradient(global_model.optimizer, global_model.model.flat_params, torch.from_numpy(gradient),
                                 version, version_at_sync, lr, algo.staleness, global_model.snapshots)
    counters.version, counters.env_steps = version + applied, env_steps + steps
    record.update(worker, env_steps + steps, version_at_sync, version, applied=applied, lr=lr, **stats)


def serve_parameters(cfg: Any, record: Record, global_model: GlobalModel) -> None:
    """The trainer as parameter server: apply gradients in arrival order, answer with fresh parameters."""
    algo, counters = cfg.algo, global_model.counters

    def finishing() -> bool:
        return record.stop_requested or counters.env_steps >= cfg.total_env_steps

    def reply(worker: int) -> None:
        supervisor.send(worker, None if finishing() else parameters_for_worker(global_model))

    with WorkerProcesses(algo.start_method) as processes:
        supervisor = Supervisor(cfg, record, processes, parameter_server_worker_main, lambda worker: (),
                                counters, lock=None)
        try:
            for worker in range(algo.num_workers):
                supervisor.start(worker)
            while supervisor.running():
                # in arrival order: messages received in one wait are sorted by their send time
                for worker, message in sorted(supervisor.messages(POLL_S), key=lambda item: item[1][-1]):
                    if message[0] == "gradient":
                        apply_worker_gradient(cfg, record, global_model, worker, *message[1:-1])
                        supervisor.progressed()
                    reply(worker)
                supervisor.handle_exits(finishing=finishing())
                if record.checkpoint_due(counters.env_steps):
                    record.save_checkpoint(global_model.checkpoint())
                supervisor.check_stall()
        finally:
            processes.stop()
            record.save_checkpoint(global_model.checkpoint())
