"""A2C: synchronous advantage actor-critic, vectorized or with worker processes.

Both modes use the model, loss, rollout and optimizer every schedule shares (``algorithms.learn``).

Vector (``mode=vector``, the default)
    One learner process steps ``num_envs`` envs in lockstep (in-process, or one subprocess per env with
    ``vector_backend=async``), acts for all of them in one batched forward pass per step and updates
    once per ``num_envs * n_steps`` transitions. It is the loop of ``single`` with more envs
    (``learn.train_in_process``): with ``num_envs=1`` it gives ``single``'s parameters exactly.

Workers (``mode=workers``)
    ``num_workers`` processes, each with its own ``num_envs`` envs and its own model replica, do what an
    A3C worker does (collect ``n_steps``, compute the clipped gradient of its rollout), so A2C and A3C
    differ only in the update protocol: here every worker writes its gradient into a shared-memory
    slot and waits at a barrier (:class:`GradientExchange`); then every replica sums the same slots in
    the same order, divides by ``num_workers`` and applies the bit-identical mean with its own
    optimizer, so the replicas stay identical without ever sending parameters. (Shared memory and a
    ``multiprocessing`` barrier rather than a gloo all-reduce: the barrier wait is measured on its own,
    and a dead worker leaves no collective half-done that the others would have to time out of.)
    Each update costs every worker one barrier wait, recorded as its ``wait_time`` in ``updates.csv``
    (``barrier_wait_mean`` in ``metrics.csv``); a synchronous gradient is never stale
    (``version_at_sync == version_at_apply``).
    The trainer process does not train: it starts and watches the workers, and moves their rows
    (in shared memory, :class:`~algorithms.shared.SharedRows`) into the run record one complete
    synchronous update at a time. ``num_workers=1`` still runs one worker process, and gives
    ``single``'s parameters exactly.

Stopping, checkpoints and faults (workers mode)
    Workers must all stop after the same update. The trainer's stop request (SIGINT/SIGTERM) is a flag
    each worker copies into its vote next to its gradient; after the barrier all workers read the same
    votes and stop if any voted. A checkpoint is due where the env steps pass a multiple of
    ``checkpoint_interval`` (the record's own rule), which every worker computes from the same
    counters: each sends its part of the state after that update (the model and optimizer from worker
    0, every worker its collector and, to check that the replicas agree, its parameters), and the
    trainer saves the checkpoint after recording that update's rows. Each worker's pid is logged as a
    ``worker_started`` event. A worker that dies ends the run: the trainer logs ``worker_failed``
    (worker, exit code, env steps, its traceback if it raised), records every row that arrived and
    stops the other workers, which are waiting at the barrier, with SIGTERM. If no update completes
    for ``STALL_TIMEOUT_S`` the run fails rather than hang; a worker's own barrier wait times out
    later still, in case the trainer cannot act.
"""

from __future__ import annotations

import pickle
import time
from collections import defaultdict
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
    reset_seed,
    set_learning_rate,
    train_in_process,
)
from algorithms.losses import LOSS_STATS
from algorithms.shared import (
    POLL_S,
    STALL_TIMEOUT_S,
    SharedRows,
    WorkerFailure,
    WorkerProcesses,
    describe_exit,
    report_errors,
    worker_setup,
)

# Rows a worker reports through shared memory; ``version`` is the policy version the update started from.
# ``checkpoint``: 1 when the worker sent its part of a checkpoint taken after this update.
UPDATE_FIELDS = ("version", "env_steps", "wait_time", "lr", "checkpoint", *LOSS_STATS)
EPISODE_FIELDS = ("version", "env_steps", "return", "length")
BARRIER_TIMEOUT_S = 2 * STALL_TIMEOUT_S  # a worker's own limit, should the trainer be unable to end the run


def run(cfg: Any, record: Record) -> None:
    if cfg.backend == "ray":  # the workers as Ray actors, their mean gradient applied by a server actor
        from algorithms import ray_backend

        ray_backend.run(cfg, record)
    elif cfg.algo.mode == "vector":
        train_in_process(cfg, record, num_envs=cfg.algo.num_envs)
    else:
        train_workers(cfg, record)


# --------------------------------------------------------------------------- what workers share
class GradientExchange:
    """Where the workers meet once per update: gradient slots, stop votes and a barrier, in shared memory.

    Update ``k`` uses slot ``k % 2``: worker ``w`` writes its gradient into ``gradients[k % 2, w]``, waits
    at the barrier, then reads every worker's gradient of that slot. Slot ``k % 2`` is written again
    only for update ``k + 2``, which no worker starts before every worker has passed barrier ``k + 1``,
    i.e. has finished reading update ``k``: one barrier per update is enough.
    """

    def __init__(self, context: Any, num_workers: int, num_params: int):
        self.num_workers = num_workers
        self._init(torch.zeros(2, num_workers, num_params).share_memory_(),
                   torch.zeros(2, num_workers, dtype=torch.bool).share_memory_(),
                   torch.zeros(1, dtype=torch.bool).share_memory_(),
                   context.Barrier(num_workers))

    def _init(self, gradients: torch.Tensor, votes: torch.Tensor, stop: torch.Tensor, barrier: Any) -> None:
        self.gradients, self.votes, self.stop, self.barrier = gradients, votes, stop, barrier
        # numpy views of the flags: element access without torch's per-op overhead
        self._votes, self._stop = votes.numpy(), stop.numpy()

    def __getstate__(self) -> dict[str, Any]:
        return {"num_workers": self.num_workers, "tensors": (self.gradients, self.votes, self.stop, self.barrier)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.num_workers = state["num_workers"]
        self._init(*state["tensors"])

    def request_stop(self) -> None:
        """The trainer's request: workers stop after the first update for which one of them saw it."""
        self._stop[0] = True

    def exchange(self, worker: int, slot: int, gradient: torch.Tensor) -> float:
        """Publish ``gradient`` and this worker's stop vote, wait for every worker; return the wait in seconds."""
        self.gradients[slot, worker].copy_(gradient)
        self._votes[slot, worker] = self._stop[0]
        started = time.perf_counter()
        self.barrier.wait(BARRIER_TIMEOUT_S)
        return time.perf_counter() - started

    def mean_gradient(self, slot: int, out: torch.Tensor) -> None:
        """The workers' mean gradient, bit-identical in every worker (same slots, same order of summation)."""
        average_gradients(self.gradients[slot], out)

    def stop_voted(self, slot: int) -> bool:
        return bool(self._votes[slot].any())


def average_gradients(gradients: torch.Tensor, out: torch.Tensor) -> None:
    """``out = gradients.sum(0) / len(gradients)`` for ``[num_workers, num_params]`` gradients, summed in worker
    order: the same bits wherever it is computed (every local replica, or the Ray backend's server)."""
    torch.sum(gradients, dim=0, out=out)
    out.div_(len(gradients))


@dataclass
class WorkerStart:
    """Where a worker starts: the run's policy version and env steps, and when resuming the checkpoint's
    model, optimizer and this worker's collector states, pickled to bytes: tensors passed as they are
    would reach every worker as one shared-memory tensor, and ``Optimizer.load_state_dict`` keeps the
    tensors it is given, so all replicas would step one set of RMSprop statistics."""

    version: int
    env_steps: int
    states: bytes | None = None


def checkpoint_crossed(env_steps: int, steps_per_update: int, interval: int) -> bool:
    """Whether the update that brought the run to ``env_steps`` passed a multiple of ``interval``
    (the run record's ``checkpoint_due`` rule, computed by every worker from the same counters)."""
    return env_steps // interval > (env_steps - steps_per_update) // interval


# --------------------------------------------------------------------------- workers
def worker_main(cfg: Any, worker: int, conn: connection.Connection, start: WorkerStart, exchange: GradientExchange,
                update_rows: SharedRows, episode_rows: SharedRows) -> None:
    worker_setup(cfg.torch_threads)
    report_errors(conn, worker_loop, cfg, worker, conn, start, exchange, update_rows, episode_rows)


def worker_loop(cfg: Any, worker: int, conn: connection.Connection, start: WorkerStart, exchange: GradientExchange,
                update_rows: SharedRows, episode_rows: SharedRows) -> None:
    """collect -> gradient -> exchange at the barrier -> apply the mean -> report; until the budget or a stop."""
    algo = cfg.algo
    envs = make_vector_env(cfg.env, algo.num_envs, algo.vector_backend)
    try:
        model = build_model(cfg, envs)
        optimizer = make_optimizer(model, algo)
        collector = build_collector(cfg, envs, worker)
        if start.states is not None:
            states = pickle.loads(start.states)
            model.load_state_dict(states["model"])
            optimizer.load_state_dict(states["optimizer"])
            collector.load_state_dict(states["collector"])
        collector.reset(reset_seed(cfg, worker, algo.num_envs, start.env_steps))
        version, env_steps = start.version, start.env_steps
        steps_per_update = algo.num_workers * collector.steps_per_collect
        while True:
            slot = version % 2
            episodes = collector.collect(model)
            stats = compute_gradients(model, collector.rollout, algo)
            for episode in episodes:
                # Workers step in lockstep, so the run has made num_workers steps for each of this worker's.
                episode_rows.append((version, env_steps + episode.steps_into_rollout * algo.num_workers,
                                     episode.ret, episode.length))
            wait_time = exchange.exchange(worker, slot, model.flat_grads)
            exchange.mean_gradient(slot, out=model.flat_grads)
            lr = learning_rate(algo, env_steps, cfg.total_env_steps)
            set_learning_rate(optimizer, lr)
            optimizer.step()
            env_steps += steps_per_update
            stop = exchange.stop_voted(slot) or env_steps >= cfg.total_env_steps
            checkpoint = stop or checkpoint_crossed(env_steps, steps_per_update, cfg.checkpoint_interval)
            update_rows.append((version, env_steps, wait_time, lr, checkpoint, *(stats[name] for name in LOSS_STATS)))
            version += 1
            if checkpoint:
                part = {"collector": collector.state_dict(), "params": model.flat_params.clone()}
                if worker == 0:
                    part.update(model=model.state_dict(), optimizer=optimizer.state_dict())
                # Pickled to bytes here: a tensor sent as is would travel as a shared-memory handle, which
                # a worker that exits right after sending could take with it.
                conn.send(("snapshot", version, env_steps, pickle.dumps(part)))
            if stop:
                return
    finally:
        envs.close()


# --------------------------------------------------------------------------- the trainer
class ReplicaDivergence(RuntimeError):
    """The replicas' parameters differ: the synchronous update is broken."""


def checkpoint_from_parts(parts: dict[int, dict[str, Any]], version: int, env_steps: int) -> dict[str, Any]:
    """The run's checkpoint from every worker's part, after checking that all replicas are bit-identical."""
    reference = parts[0]["params"]
    differing = [worker for worker, part in sorted(parts.items()) if not torch.equal(part["params"], reference)]
    if differing:
        gap = max(float((parts[worker]["params"] - reference).abs().max()) for worker in differing)
        raise ReplicaDivergence(f"at policy version {version} the parameters of workers {differing} differ from "
                                f"worker 0's (max abs difference {gap:g})")
    return {"model": parts[0]["model"], "optimizer": parts[0]["optimizer"],
            "collectors": [parts[worker]["collector"] for worker in sorted(parts)],
            "env_steps": env_steps, "policy_version": version}


class SyncLog:
    """Moves the workers' rows into the run record one complete synchronous update at a time, in order,
    and saves a checkpoint right after the rows of the update it was taken at."""

    def __init__(self, record: Record, num_workers: int, version: int, env_steps: int):
        self.record, self.num_workers = record, num_workers
        self.version, self.env_steps = version, env_steps  # the next update to record, the steps before it
        self.updates: dict[int, list[tuple[int, np.ndarray]]] = defaultdict(list)
        self.episodes: dict[int, list[tuple[int, np.ndarray]]] = defaultdict(list)
        self.snapshots: dict[int, dict[int, dict[str, Any]]] = defaultdict(dict)
        self.snapshot_steps: dict[int, int] = {}

    def add_snapshot(self, worker: int, version: int, env_steps: int, part: bytes) -> None:
        self.snapshots[version][worker] = pickle.loads(part)
        self.snapshot_steps[version] = env_steps

    def add(self, worker: int, updates: Any, episodes: Any) -> None:
        """Rows of one worker (``UPDATE_FIELDS`` and ``EPISODE_FIELDS`` wide) that arrived by other means."""
        for row in updates:
            self.updates[int(row[0])].append((worker, row))
        for row in episodes:
            self.episodes[int(row[0])].append((worker, row))

    def drain(self, tables: dict[int, tuple[SharedRows, SharedRows]]) -> None:
        # Updates first: a worker writes an update's episodes before the update, so every update drained
        # here has its episodes in the drain that follows.
        for worker, (updates, _) in tables.items():
            for row in updates.drain():
                self.updates[int(row[0])].append((worker, row))
        for worker, (_, episodes) in tables.items():
            for row in episodes.drain():
                self.episodes[int(row[0])].append((worker, row))

    def record_complete(self) -> bool:
        """Record every update whose rows all arrived, then the checkpoint taken after it if there is one
        (once every part of it arrived); return whether any update was recorded."""
        progressed = False
        while len(rows := self.updates.get(self.version, ())) == self.num_workers:
            after = self.version + 1
            checkpoint = any(row[4] for _, row in rows)
            if checkpoint and len(self.snapshots.get(after, ())) < self.num_workers:
                break  # its parts are on their way
            self._record(self.version)
            progressed = True
            if checkpoint:
                self.record.save_checkpoint(checkpoint_from_parts(self.snapshots.pop(after), after, self.env_steps))
        return progressed

    def record_rest(self) -> None:
        """After a failure: record every row that arrived, complete update or not."""
        for version in sorted(set(self.updates) | set(self.episodes)):
            self._record(version)

    def finished(self) -> bool:
        """Whether every row that arrived is recorded and every checkpoint saved."""
        return not (self.updates or self.episodes or self.snapshots)

    def _record(self, version: int) -> None:
        # by env step, then worker: the same order however the workers' rows arrived
        for worker, (_, env_steps, ret, length) in sorted(self.episodes.pop(version, []),
                                                          key=lambda item: (item[1][1], item[0])):
            self.record.episode(worker, int(env_steps), float(ret), int(length))
        for worker, (_, env_steps, wait_time, lr, _, *stats) in sorted(self.updates.pop(version, []),
                                                                     key=lambda item: item[0]):
            self.record.update(worker, int(env_steps), version, version, applied=True, lr=float(lr),
                               wait_time=float(wait_time),
                               **{name: float(value) for name, value in zip(LOSS_STATS, stats, strict=True)})
            self.env_steps = int(env_steps)
        self.version = version + 1


def resumed_collectors(cfg: Any, resume_state: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    """Each worker's collector state in the checkpoint being resumed (``None`` for a new run)."""
    if resume_state is None:
        return None
    collectors = resume_state["collectors"]
    if len(collectors) != cfg.algo.num_workers:
        raise ValueError(f"the checkpoint holds the state of {len(collectors)} workers' collectors; it cannot "
                         f"resume with algo.num_workers={cfg.algo.num_workers}")
    return collectors


def worker_starts(cfg: Any, resume_state: dict[str, Any] | None) -> list[WorkerStart]:
    collectors = resumed_collectors(cfg, resume_state)
    if collectors is None:
        return [WorkerStart(version=0, env_steps=0) for _ in range(cfg.algo.num_workers)]
    return [WorkerStart(resume_state["policy_version"], resume_state["env_steps"],
                        pickle.dumps({"model": resume_state["model"], "optimizer": resume_state["optimizer"],
                                      "collector": collector})) for collector in collectors]


def count_parameters(cfg: Any) -> int:
    envs = make_vector_env(cfg.env, 1)  # only for the spaces: the same model every worker builds
    try:
        return build_model(cfg, envs).flat_params.numel()
    finally:
        envs.close()


def train_workers(cfg: Any, record: Record) -> None:
    """Start the workers, record their updates in order, save their checkpoints, end on any death."""
    algo = cfg.algo
    starts = worker_starts(cfg, record.resume_state)
    exchange = GradientExchange(mp.get_context(algo.start_method), algo.num_workers, count_parameters(cfg))
    tables = {worker: (SharedRows(len(UPDATE_FIELDS)), SharedRows(len(EPISODE_FIELDS)))
              for worker in range(algo.num_workers)}
    log = SyncLog(record, algo.num_workers, starts[0].version, starts[0].env_steps)
    with WorkerProcesses(algo.start_method) as processes:
        conns: dict[int, connection.Connection] = {}
        done: set[int] = set()
        errors: dict[int, str] = {}

        def receive(worker: int) -> None:
            conn = conns[worker]
            try:
                while conn.poll():
                    message = conn.recv()
                    if message[0] == "snapshot":
                        log.add_snapshot(worker, *message[1:])
                    elif message[0] == "done":
                        done.add(worker)
                    else:
                        errors[worker] = message[1]
            except (EOFError, OSError):  # the worker is gone; its exit is handled from its sentinel
                del conns[worker]

        def fail_on_death() -> None:
            for exit in processes.exited():
                if exit.worker in conns:
                    receive(exit.worker)  # a "done" or a traceback sent just before exiting
                if exit.worker in done and exit.exitcode == 0:
                    continue
                log.drain(tables)  # the updates completed before the death, for the message's env step
                log.record_complete()
                error = errors.get(exit.worker)
                record.event("worker_failed", worker=exit.worker, exitcode=exit.exitcode, env_steps=log.env_steps,
                             reason=describe_exit(exit.exitcode), error=error)
                detail = f"\n{error.strip().splitlines()[-1]}" if error else ""
                raise WorkerFailure(f"{exit.describe()} at env step {log.env_steps}{detail}")

        for worker in range(algo.num_workers):
            ours, theirs = processes.context.Pipe(duplex=False)
            processes.start(worker, worker_main, (cfg, worker, theirs, starts[worker], exchange, *tables[worker]))
            theirs.close()  # the worker's end: once it exits, ours reports EOF
            conns[worker] = ours
            record.event("worker_started", worker=worker, pid=processes.processes[worker].pid)
        last_progress = time.monotonic()
        try:
            while len(done) < algo.num_workers:
                waiting = [processes.processes[worker].sentinel for worker in processes.alive()]
                for ready in connection.wait([*conns.values(), *waiting], POLL_S):
                    for worker, conn in list(conns.items()):
                        if conn is ready:
                            receive(worker)
                log.drain(tables)
                if log.record_complete():
                    last_progress = time.monotonic()
                if record.stop_requested:
                    exchange.request_stop()
                fail_on_death()
                idle = time.monotonic() - last_progress
                if idle > STALL_TIMEOUT_S:
                    raise WorkerFailure(f"no synchronous update in {idle:.0f}s after env step {log.env_steps} "
                                        f"({exchange.barrier.n_waiting} of {algo.num_workers} workers waiting at "
                                        "the barrier); stopping instead of hanging")
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
