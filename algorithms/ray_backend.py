"""The a3c parameter-server and a2c workers schedules on Ray actors (``backend=ray``), for more than one machine.

The schedules are those of ``a3c`` and ``a2c``, built from the same parts: a worker actor holds the a3c
:class:`~algorithms.a3c.LocalLearner` (its own envs, collector and model copy: collect ``n_steps``,
compute the clipped gradient), and the server actor holds the a3c :class:`~algorithms.a3c.GlobalModel`
(the parameters, the optimizer, the policy-version and env-step counters, the snapshot ring). Workers
are placed by Ray on any node with ``ray.cpus_per_worker`` CPUs free; parameters and gradients travel as
flat float32 numpy arrays. The driver (the process that runs ``experiments.train``) owns the run record.

Parameter server (``algo=a3c algo.mode=parameter_server``)
    Each worker actor loops: pull (version, parameters) from the server, learn, push the gradient tagged
    with that version; the push is answered with fresh parameters (``None`` once the budget is spent or
    a stop was requested). The server is a sequential actor: it applies pushes one at a time in the order
    they reach it, with the local parameter server's own code (:func:`~algorithms.a3c.apply_worker_gradient`),
    so ``version_at_sync``, ``version_at_apply``, staleness and ``algo.staleness.{delay,max,lr_scaling}``
    mean exactly what they mean locally. It records into a :class:`RecordBuffer`, which the driver drains
    every ``POLL_S`` seconds and replays into the run record (``wall_time`` in ``updates.csv`` is when the
    driver recorded the row, as for local hogwild); a checkpoint is taken in the same server call as the
    drain, so it matches the rows recorded.

Workers (``algo=a2c algo.mode=workers``)
    The driver is the barrier: it hands every worker actor the same parameters, waits for all of their
    gradients, then has the server apply their mean (:func:`~algorithms.a2c.average_gradients`, summed in
    worker order, then the optimizer step: the bits every local replica computes, so a run gives the
    local backend's parameters exactly) and passes the server's answer on to the next round as an object
    reference, without waiting for it. The driver handles gradients and parameters only as references
    (Ray inlines small arrays into the calls; large ones go through its object store) and reads only each
    worker's loss statistics and episodes. A worker's ``wait_time`` is the time from
    its gradient's arrival to the last one's, as the driver sees them (``barrier_wait_mean``). Updates are
    recorded as the local backend records them (:class:`~algorithms.a2c.SyncLog`), never stale.

Faults
    Worker actors are created with ``max_restarts=algo.max_restarts``: Ray restarts the process of a
    worker that dies. The driver sees the failure as an error of the worker's pending task, logs
    ``worker_failed`` (worker, pid, env steps, Ray's reason; a worker that raised gives its traceback),
    waits for the restarted actor, starts it again at the current env step and resyncs it from the
    current parameters (an a3c worker pulls them first; an a2c worker redoes the current round with the
    parameters of that round), and logs ``worker_restarted``. As locally, ``algo.max_restarts`` is the
    number of restarts in the whole run: one failure more ends the run with a ``WorkerFailure`` that
    names the worker and says its restarts are exhausted. The server holds the run's state and is not
    restarted: its death fails the run. If no update completes for ``STALL_TIMEOUT_S`` the run fails.

Cluster
    ``ray.address=null`` starts a local cluster of ``ray.num_cpus`` CPUs (default: this machine's, or what
    the run's actors ask if more) for this run and shuts it down at the end; ``ray.address=auto`` or
    ``HOST:PORT`` connects to a running cluster (and uploads this checkout's ``algorithms`` and ``experiments``
    packages to it unless ``ray.ship_code=false``); a process that has already called ``ray.init`` is used as
    it is.
    Every actor of the run is killed when the run ends, however it ends.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import ray
import torch
import torch.multiprocessing as mp
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

import algorithms
from algorithms.a2c import SyncLog, average_gradients
from algorithms.a3c import GlobalModel, LocalLearner, apply_worker_gradient, parameters_for_worker
from algorithms.learn import Record, learning_rate, reset_seed, set_learning_rate
from algorithms.losses import LOSS_STATS
from algorithms.shared import STALL_TIMEOUT_S, WorkerFailure

POLL_S = 0.05  # how often the parameter-server driver drains the server's rows and checks its workers
WORKER_ERRORS = (RayActorError, RayTaskError)  # a worker actor that died, or whose code raised


def quiet_numpy_views() -> None:
    """Arrays that Ray deserializes are read-only; torch warns when viewing them, though they are only read."""
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


# --------------------------------------------------------------------------- the cluster
def local_cluster_cpus(cfg: Any) -> int:
    """CPUs of a cluster started for this run: ``ray.num_cpus``, or this machine's, or what the actors ask."""
    if cfg.ray.num_cpus is not None:
        return cfg.ray.num_cpus
    asked = cfg.algo.num_workers * cfg.ray.cpus_per_worker + cfg.ray.server_cpus
    return max(os.cpu_count() or 1, math.ceil(asked))


@contextmanager
def ray_cluster(cfg: Any, record: Record) -> Iterator[None]:
    """Connect to the cluster ``cfg.ray`` names, or start a local one; shut down what this call started."""
    settings = cfg.ray
    connect = not ray.is_initialized()
    if connect:
        handler = signal.getsignal(signal.SIGTERM)  # ray.init replaces it with an exit
        try:
            if settings.address is None:
                # address="local": a new cluster even when one runs on this machine (ray.init would join it)
                ray.init(address="local", num_cpus=local_cluster_cpus(cfg), include_dashboard=False,
                         logging_level=logging.WARNING)
            else:
                # the config the actors receive is made of experiments.config's dataclasses: ship both packages
                packages = [algorithms, importlib.import_module("experiments")]
                runtime_env = {"py_modules": packages} if settings.ship_code else None
                try:
                    ray.init(address=settings.address, runtime_env=runtime_env, logging_level=logging.WARNING)
                except ConnectionError as error:
                    if settings.address == "auto" or os.environ.get("RAY_AUTH_MODE"):
                        raise
                    # Ray picks up a cluster's authentication token by itself only for address=auto.
                    raise ConnectionError(
                        f"{error}. If the cluster uses token authentication (the default of `ray start`), "
                        "set RAY_AUTH_MODE=token with the cluster's token in RAY_AUTH_TOKEN or ~/.ray/auth_token, "
                        "or run on a node of the cluster with ray.address=auto") from error
        finally:
            if handler is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, handler)  # the run record's: SIGTERM stops the run cleanly
    try:
        resources = ray.cluster_resources()
        record.event("ray_cluster", address=settings.address, started_here=connect and settings.address is None,
                     nodes=sum(node["Alive"] for node in ray.nodes()), cpus=resources.get("CPU", 0.0),
                     ray_version=ray.__version__)
        yield
    finally:
        if connect:
            ray.shutdown()


# --------------------------------------------------------------------------- actors
class RayWorker:
    """A worker actor: a :class:`~algorithms.a3c.LocalLearner` that computes gradients and never applies them."""

    def __init__(self, cfg: Any, worker: int):
        torch.set_num_threads(cfg.torch_threads)
        quiet_numpy_views()
        self.cfg, self.worker = cfg, worker
        self.learner: LocalLearner | None = None

    def start(self, env_steps: int, collector_state: dict[str, Any] | None = None) -> tuple[int, str]:
        """(Re)build the learner at ``env_steps`` (a resumed a2c worker also continues its collector's state);
        return this process's pid and node address."""
        if self.learner is not None:
            self.learner.close()
        self.learner = LocalLearner(self.cfg, self.worker, env_steps)
        if collector_state is not None:
            collector = self.learner.collector
            collector.load_state_dict(collector_state)
            collector.reset(reset_seed(self.cfg, self.worker, self.cfg.algo.num_envs, env_steps))
        return os.getpid(), ray.util.get_node_ip_address()

    def run(self, server: Any) -> None:
        """a3c: pull, learn, push the gradient tagged with the version it was computed at; until told to stop."""
        learner = self.learner
        steps = learner.collector.steps_per_collect
        reply = ray.get(server.pull.remote())
        while reply is not None:
            version, params = reply
            learner.model.flat_params.copy_(torch.from_numpy(params))
            episodes, stats = learner.learn()
            finished = [(episode.steps_into_rollout, episode.ret, episode.length) for episode in episodes]
            reply = ray.get(server.push.remote(self.worker, version, learner.model.flat_grads.numpy(), stats,
                                               finished, steps))

    @ray.method(num_returns=2)
    def learn(self, params: np.ndarray) -> tuple[np.ndarray, tuple[tuple[float, ...], list[tuple[int, float, int]]]]:
        """a2c: one rollout with ``params``; its gradient (for the server) and its statistics and finished
        episodes (for the driver), as two objects."""
        learner = self.learner
        learner.model.flat_params.copy_(torch.from_numpy(params))
        episodes, stats = learner.learn()
        finished = [(episode.steps_into_rollout, episode.ret, episode.length) for episode in episodes]
        return learner.model.flat_grads.numpy(), (tuple(stats[name] for name in LOSS_STATS), finished)

    def collector_state(self) -> dict[str, Any]:
        return self.learner.collector.state_dict()


class RecordBuffer:
    """The run record as the server actor sees it: its ``episode`` and ``update`` calls, kept in order for the
    driver to replay into the real record."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def episode(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append(("episode", args, kwargs))

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append(("update", args, kwargs))

    def take(self) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
        calls, self.calls = self.calls, []
        return calls


def replay(record: Record, calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> None:
    for name, args, kwargs in calls:
        getattr(record, name)(*args, **kwargs)


class ParameterServer:
    """The server actor: the run's :class:`~algorithms.a3c.GlobalModel`, applying the workers' gradients."""

    def __init__(self, cfg: Any, resume_state: dict[str, Any] | None):
        torch.set_num_threads(cfg.torch_threads)
        quiet_numpy_views()
        self.cfg = cfg
        self.global_model = GlobalModel(cfg, resume_state, mp.get_context(cfg.algo.start_method), shared=False)
        self.rows = RecordBuffer()
        self.stop = False

    def counters(self) -> tuple[int, int]:
        counters = self.global_model.counters
        return counters.version, counters.env_steps

    def request_stop(self) -> None:
        self.stop = True

    def pull(self) -> tuple[int, np.ndarray] | None:
        """a3c: the version and parameters a worker syncs to, or ``None`` when the run is finishing."""
        if self.stop or self.global_model.counters.env_steps >= self.cfg.total_env_steps:
            return None
        return parameters_for_worker(self.global_model)

    def push(self, worker: int, version_at_sync: int, gradient: np.ndarray, stats: dict[str, float],
             finished: list[tuple[int, float, int]], steps: int) -> tuple[int, np.ndarray] | None:
        """a3c: apply one worker's gradient (the local server's code) and answer with what it syncs to next."""
        apply_worker_gradient(self.cfg, self.rows, self.global_model, worker, version_at_sync, gradient, stats,
                              finished, steps)
        return self.pull()

    def parameters(self) -> np.ndarray:
        return self.global_model.model.flat_params.numpy()

    def average(self, *gradients: np.ndarray) -> np.ndarray:
        """a2c: step with the workers' mean gradient (one per worker, in worker order); return the parameters."""
        algo, model = self.cfg.algo, self.global_model
        counters = model.counters
        average_gradients(torch.from_numpy(np.stack(gradients)), out=model.model.flat_grads)
        set_learning_rate(model.optimizer, learning_rate(algo, counters.env_steps, self.cfg.total_env_steps))
        model.optimizer.step()
        counters.version += 1
        counters.env_steps += len(gradients) * algo.n_steps * algo.num_envs
        return model.model.flat_params.numpy()

    def drain(self, checkpoint: bool = False, **extra: Any) -> tuple[list[Any], int, dict[str, Any] | None]:
        """The calls recorded since the last drain, the env steps, and (if asked) a checkpoint taken with them."""
        state = self.global_model.checkpoint(**extra) if checkpoint else None
        return self.rows.take(), self.global_model.counters.env_steps, state


def first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


class Actors:
    """One run's server and worker actors: created with their resources, started, restarted after a failure
    (while ``algo.max_restarts`` allows), and killed at the end."""

    def __init__(self, cfg: Any, record: Record):
        self.cfg, self.record = cfg, record
        settings, algo = cfg.ray, cfg.algo
        self.server = ray.remote(ParameterServer).options(num_cpus=settings.server_cpus, max_restarts=0).remote(
            cfg, record.resume_state)
        worker_actor = ray.remote(RayWorker).options(num_cpus=settings.cpus_per_worker,
                                                     max_restarts=algo.max_restarts, max_task_retries=0)
        self.workers = [worker_actor.remote(cfg, worker) for worker in range(algo.num_workers)]
        self.pids: dict[int, int] = {}
        self.restarts = 0

    def start_all(self, env_steps: int, collector_states: list[dict[str, Any]] | None = None) -> None:
        settings = self.cfg.ray
        refs = [actor.start.remote(env_steps, collector_states[worker] if collector_states else None)
                for worker, actor in enumerate(self.workers)]
        try:
            started = ray.get(refs, timeout=settings.start_timeout_s)
        except GetTimeoutError:
            raise WorkerFailure(
                f"the worker actors did not all start within ray.start_timeout_s={settings.start_timeout_s:g}s: the "
                f"run asks for algo.num_workers={self.cfg.algo.num_workers} x ray.cpus_per_worker="
                f"{settings.cpus_per_worker:g} CPUs, and the cluster has {ray.available_resources().get('CPU', 0):g} "
                f"of {ray.cluster_resources().get('CPU', 0):g} CPUs free") from None
        for worker, (pid, node) in enumerate(started):
            self.pids[worker] = pid
            self.record.event("worker_started", worker=worker, pid=pid, node=node)

    def restart_or_fail(self, worker: int, error: BaseException, env_steps: int, finishing: bool) -> bool:
        """Log a worker's failure; restart it at ``env_steps`` and return True, or return False when the run is
        finishing anyway; raise :class:`WorkerFailure` when no restart is left."""
        died = isinstance(error, RayActorError)
        what = "died" if died else "raised an exception"
        self.record.event("worker_failed", worker=worker, pid=self.pids.get(worker), exitcode=None,
                          env_steps=env_steps, reason=f"actor {what}: {first_line(error)}",
                          error=None if died else str(error))
        if finishing:
            return False
        limit = self.cfg.algo.max_restarts
        detail = "" if died else f"\n{str(error).strip().splitlines()[-1]}"
        if self.restarts >= limit:
            raise WorkerFailure(f"worker {worker} (pid {self.pids.get(worker)}) {what} at env step {env_steps}: "
                                f"restarts exhausted (algo.max_restarts={limit}){detail}")
        self.restarts += 1
        pid, node = self._start_again(worker, env_steps, what)
        self.pids[worker] = pid
        self.record.event("worker_restarted", worker=worker, env_steps=env_steps, restart=self.restarts, pid=pid,
                          node=node)
        return True

    def _start_again(self, worker: int, env_steps: int, what: str) -> tuple[int, str]:
        """Start a failed worker's actor at ``env_steps``: once Ray has restarted a dead one's process, which a
        call made while it does so waits for (a call that reached the old process first is retried)."""
        deadline = time.monotonic() + self.cfg.ray.start_timeout_s
        while True:
            try:
                # at-least-once for this call: Ray resubmits it to the restarted process
                call = self.workers[worker].start.options(max_task_retries=-1)
                return ray.get(call.remote(env_steps), timeout=max(0.1, deadline - time.monotonic()))
            except (RayActorError, GetTimeoutError) as again:
                if time.monotonic() >= deadline - 0.2:
                    raise WorkerFailure(
                        f"worker {worker} {what} at env step {env_steps} and was not running again within "
                        f"ray.start_timeout_s={self.cfg.ray.start_timeout_s:g}s (restarts exhausted or no node to "
                        f"place it): {first_line(again)}") from again
                time.sleep(0.2)

    def kill(self) -> None:
        for actor in [*self.workers, self.server]:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass


@contextmanager
def run_actors(cfg: Any, record: Record) -> Iterator[Actors]:
    """A run's actors on the cluster ``cfg.ray`` names; every one of them is killed when the run ends."""
    with ray_cluster(cfg, record):
        actors = Actors(cfg, record)
        try:
            yield actors
        finally:
            actors.kill()


# --------------------------------------------------------------------------- a3c: parameter server
def serve_parameters(cfg: Any, record: Record) -> None:
    """The a3c parameter-server schedule on actors; the driver records and supervises."""
    with run_actors(cfg, record) as actors:
        _serve_parameters(cfg, record, actors)


def _serve_parameters(cfg: Any, record: Record, actors: Actors) -> None:
    server = actors.server

    def drain(checkpoint: bool) -> tuple[bool, int]:
        calls, env_steps, state = ray.get(server.drain.remote(checkpoint))
        replay(record, calls)
        if state is not None:
            record.save_checkpoint(state)
        return bool(calls), env_steps

    _, env_steps = ray.get(server.counters.remote())
    actors.start_all(env_steps)
    runs = {actor.run.remote(server): worker for worker, actor in enumerate(actors.workers)}
    stopping, last_progress = False, time.monotonic()
    try:
        while runs:
            ready, _ = ray.wait(list(runs), num_returns=len(runs), timeout=POLL_S)
            if record.stop_requested and not stopping:
                server.request_stop.remote()
                stopping = True
            progressed, env_steps = drain(checkpoint=record.checkpoint_due(record.env_steps))
            if progressed:
                last_progress = time.monotonic()
            finishing = stopping or env_steps >= cfg.total_env_steps
            for ref in ready:
                worker = runs.pop(ref)
                try:
                    ray.get(ref)
                except WORKER_ERRORS as error:
                    if actors.restart_or_fail(worker, error, env_steps, finishing):
                        runs[actors.workers[worker].run.remote(server)] = worker
                        last_progress = time.monotonic()
            idle = time.monotonic() - last_progress
            if idle > STALL_TIMEOUT_S:
                raise WorkerFailure(f"no update in {idle:.0f}s with workers {sorted(runs.values())} running; "
                                    "stopping instead of hanging")
    finally:
        try:
            server.request_stop.remote()
            drain(checkpoint=True)  # the final checkpoint, with every row recorded before it
        except RayActorError as error:  # the server itself died: nothing left to save
            record.event("server_failed", reason=first_line(error))


# --------------------------------------------------------------------------- a2c: workers
def train_workers(cfg: Any, record: Record) -> None:
    """The synchronous a2c schedule on actors: the driver is the barrier, the server applies the mean."""
    with run_actors(cfg, record) as actors:
        _train_workers(cfg, record, actors)


def barrier(actors: Actors, params: Any, pending: dict[int, tuple[Any, Any]], env_steps: int
            ) -> tuple[list[Any], list[Any], list[float]]:
    """Wait for every worker's round; redo the round of a worker that failed (restarted, same parameters).

    Returns the gradients' object refs in worker order, each worker's (statistics, episodes), and each
    worker's wait: the time from its result's arrival at the driver to the last one's.
    """
    waiting = {info: worker for worker, (_, info) in pending.items()}
    arrived: dict[int, tuple[Any, float]] = {}
    while waiting:
        ready, _ = ray.wait(list(waiting), num_returns=1, timeout=STALL_TIMEOUT_S)
        if not ready:
            raise WorkerFailure(f"no synchronous update in {STALL_TIMEOUT_S:.0f}s after env step {env_steps} "
                                f"(waiting for workers {sorted(waiting.values())}); stopping instead of hanging")
        now = time.perf_counter()
        for ref in ready:
            worker = waiting.pop(ref)
            try:
                arrived[worker] = (ray.get(ref), now)
            except WORKER_ERRORS as error:
                actors.restart_or_fail(worker, error, env_steps, finishing=False)
                pending[worker] = actors.workers[worker].learn.remote(params)
                waiting[pending[worker][1]] = worker
    last = max(at for _, at in arrived.values())
    workers = sorted(pending)
    return ([pending[worker][0] for worker in workers], [arrived[worker][0] for worker in workers],
            [last - arrived[worker][1] for worker in workers])


def collector_states(actors: Actors, env_steps: int) -> list[dict[str, Any]]:
    """Every worker's collector state, for a checkpoint; a worker that fails meanwhile is restarted first."""
    states = []
    for worker, actor in enumerate(actors.workers):
        while True:
            try:
                states.append(ray.get(actor.collector_state.remote()))
                break
            except WORKER_ERRORS as error:
                actors.restart_or_fail(worker, error, env_steps, finishing=False)
    return states


def _train_workers(cfg: Any, record: Record, actors: Actors) -> None:
    algo, server = cfg.algo, actors.server
    version, env_steps = ray.get(server.counters.remote())
    collectors = record.resume_state["collectors"] if record.resume_state is not None else None
    if collectors is not None and len(collectors) != algo.num_workers:
        raise ValueError(f"the checkpoint holds the state of {len(collectors)} workers' collectors; it cannot "
                         f"resume with algo.num_workers={algo.num_workers}")
    actors.start_all(env_steps, collectors)
    steps_per_update = algo.num_workers * algo.n_steps * algo.num_envs
    log = SyncLog(record, algo.num_workers, version, env_steps)
    params = server.parameters.remote()
    pending = {worker: actor.learn.remote(params) for worker, actor in enumerate(actors.workers)}
    finishing = False
    while not finishing:
        gradients, results, waits = barrier(actors, params, pending, env_steps)
        lr = learning_rate(algo, env_steps, cfg.total_env_steps)
        params = server.average.remote(*gradients)  # the next round's parameters, left in the object store
        for worker, ((stats, finished), wait) in enumerate(zip(results, waits, strict=True)):
            episodes = [(version, env_steps + steps * algo.num_workers, ret, length) for steps, ret, length in finished]
            log.add(worker, [(version, env_steps + steps_per_update, wait, lr, 0, *stats)], episodes)
        version, env_steps = version + 1, env_steps + steps_per_update
        finishing = env_steps >= cfg.total_env_steps or record.stop_requested
        # Before the next round is submitted, which would change them.
        collectors = collector_states(actors, env_steps) if finishing or record.checkpoint_due(env_steps) else None
        if not finishing:
            pending = {worker: actor.learn.remote(params) for worker, actor in enumerate(actors.workers)}
        log.record_complete()
        if collectors is not None:
            _, _, state = ray.get(server.drain.remote(checkpoint=True, collectors=collectors))
            record.save_checkpoint(state)
