"""The a3c parameter-server and a2c workers schedules on Ray actors (``backend=ray``), for more than one machine.

The schedules are those of ``a3c`` and ``a2c``, built from the same parts: a worker actor holds the a3c
:class:`~algorithms.a3c.LocalLearner` (its own envs, collector and model copy: collect ``n_steps``,
compute the clipped gradient), and the server actor holds the a3c :class:`~algorithms.a3c.GlobalModel`
(the parameters, the optimizer, the policy-version and env-step counters, the snapshot ring). Workers
are placed by Ray on any node with ``ray.cpus_per_worker`` CPUs free; parameters and gradients travel as
bytes of flat float32 vectors, directly between worker and server. Both schedules run one worker loop: join
the server, then learn, push the gradient tagged with the version it was computed at, and sync to the
parameters the push is answered with (``None`` once the budget is spent or a stop was requested). The
driver (the process that runs ``experiments.train``) is off that path: it owns the run record, which the
server fills through a :class:`RecordBuffer` that the driver drains every ``POLL_S`` seconds and replays
(checkpoints included, in their place among the rows), and it supervises the workers.

Parameter server (``algo=a3c algo.mode=parameter_server``)
    The server is a sequential actor: it applies pushes one at a time in the order they reach it, with the
    local parameter server's own code (:func:`~algorithms.a3c.apply_worker_gradient`), so
    ``version_at_sync``, ``version_at_apply``, staleness and ``algo.staleness.{delay,max,lr_scaling}`` mean
    exactly what they mean locally. ``wall_time`` in ``updates.csv`` is when the driver recorded the row, as
    for local hogwild. A drain after the run crosses ``checkpoint_interval`` ends with a checkpoint, so it
    matches the rows recorded before it.

Workers (``algo=a2c algo.mode=workers``)
    The server is the barrier (a threaded actor): it holds each push of a round until every worker's
    gradient has arrived, steps once with their mean (:func:`~algorithms.a2c.average_gradients`, summed
    in worker order, then the optimizer step: the bits every local replica computes, so a run gives the
    local backend's parameters exactly) and answers every worker with the new parameters. A round costs
    one call per worker, as a parameter-server update does. A worker's ``wait_time`` is the time from its
    gradient's arrival at the server to the last one's (``barrier_wait_mean``). Updates are recorded as
    the local backend records them (:class:`~algorithms.a2c.SyncLog`), never stale. A checkpoint needs
    the collectors' states after a round: a round that crosses ``checkpoint_interval`` or is the last
    (budget spent, or the round after a stop request) asks every worker to send its state with its
    gradient, and the server checkpoints after it, where the local workers do.

Faults
    Worker actors are created with ``max_restarts=algo.max_restarts``: Ray restarts the process of a
    worker that dies. The driver sees the failure as an error of the worker's pending task, logs
    ``worker_failed`` (worker, pid, env steps, Ray's reason; a worker that raised gives its traceback),
    waits for the restarted actor, starts it again at the server's current env step and resyncs it from
    the current parameters (an a3c worker joins the server first; an a2c worker redoes the current round
    with the parameters of that round, or waits for the next if its gradient had reached the server), and
    logs ``worker_restarted``. As locally, ``algo.max_restarts`` is the number of restarts in the whole
    run: one failure more ends the run with a ``WorkerFailure`` that names the worker and says its
    restarts are exhausted; the episodes of an a2c round that will not complete are recorded, as
    locally. The server holds the run's state and is not restarted: its death fails the run. If no update
    completes for ``STALL_TIMEOUT_S`` the run fails.

Cluster
    ``ray.address=null`` starts a local cluster of ``ray.num_cpus`` CPUs (default: this machine's, or what
    the run's actors ask if more) for this run and shuts it down at the end; ``ray.address=auto`` or
    ``HOST:PORT`` connects to a running cluster from one of its nodes, ``ray://HOST:PORT`` through Ray Client
    from anywhere (either uploads this checkout's ``algorithms`` and ``experiments`` packages unless
    ``ray.ship_code=false``); a process that has already called ``ray.init`` is used as it is.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
import torch.multiprocessing as mp
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

import algorithms
from algorithms.a2c import SyncLog, average_gradients, checkpoint_crossed, resumed_collectors
from algorithms.a3c import GlobalModel, LocalLearner, apply_worker_gradient, parameters_for_worker
from algorithms.learn import Record, learning_rate, reset_seed, set_learning_rate
from algorithms.losses import LOSS_STATS
from algorithms.shared import STALL_TIMEOUT_S, WorkerFailure

POLL_S = 0.05  # how often the driver replays the server's record calls and checks its workers
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
                # the config the actors receive is made of experiments.config's dataclasses: ship both packages,
                # as directories (a Ray Client driver, ray://, must pickle the runtime env: modules would not do)
                packages = [str(Path(module.__file__).parent)
                            for module in (algorithms, importlib.import_module("experiments"))]
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
# What a server answers a worker with: the version and parameters to learn with next, and whether to send
# its collector's state with that gradient (for a checkpoint); ``None`` once the run is ending.
Reply = tuple[int, bytes, bool] | None


def to_wire(vector: torch.Tensor) -> bytes:
    """A flat float32 parameter or gradient vector as Ray should move it: as bytes, which Ray 2.60 moved
    0.3-0.4 ms faster per call than the same numpy array at every size tried (18 kB to 7 MB)."""
    return vector.numpy().tobytes()


def from_wire(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.float32)


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
        """Join the server, then learn and push each gradient tagged with the version it was computed at,
        syncing to the parameters of the server's answer; until the server answers ``None``."""
        learner = self.learner
        steps = learner.collector.steps_per_collect
        reply = ray.get(server.join.remote(self.worker))
        while reply is not None:
            version, params, with_state = reply
            learner.model.flat_params.copy_(torch.from_numpy(from_wire(params)))
            episodes, stats = learner.learn()
            finished = [(episode.steps_into_rollout, episode.ret, episode.length) for episode in episodes]
            state = learner.collector.state_dict() if with_state else None
            reply = ray.get(server.push.remote(self.worker, version, to_wire(learner.model.flat_grads), stats,
                                               finished, steps, state))


class RecordBuffer:
    """The run record as a server actor sees it: its ``episode``, ``update`` and ``save_checkpoint`` calls,
    kept in order for the driver to replay into the real record."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def episode(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append(("episode", args, kwargs))

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append(("update", args, kwargs))

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        self.calls.append(("save_checkpoint", (state,), {}))

    def take(self) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
        calls, self.calls = self.calls, []
        return calls


def replay(record: Record, calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> None:
    for name, args, kwargs in calls:
        getattr(record, name)(*args, **kwargs)


class ParameterServer:
    """The a3c server actor: the run's :class:`~algorithms.a3c.GlobalModel`, applying each gradient as it
    arrives (the local parameter server's code) and answering with the parameters to sync to."""

    def __init__(self, cfg: Any, resume_state: dict[str, Any] | None):
        torch.set_num_threads(cfg.torch_threads)
        quiet_numpy_views()
        self.cfg = cfg
        self.global_model = GlobalModel(cfg, resume_state, mp.get_context(cfg.algo.start_method), shared=False)
        self.rows = RecordBuffer()
        self.stop = False
        self.next_checkpoint_at = next_checkpoint_at(self.global_model.counters.env_steps, cfg.checkpoint_interval)

    def counters(self) -> tuple[int, int]:
        counters = self.global_model.counters
        return counters.version, counters.env_steps

    def request_stop(self) -> None:
        self.stop = True

    def join(self, worker: int) -> Reply:
        """What a worker syncs to: the current version (``delay`` behind it, if set) and its parameters."""
        if self.stop or self.global_model.counters.env_steps >= self.cfg.total_env_steps:
            return None
        version, params = parameters_for_worker(self.global_model)
        return version, params.tobytes(), False

    def push(self, worker: int, version_at_sync: int, gradient: bytes, stats: dict[str, float],
             finished: list[tuple[int, float, int]], steps: int, collector_state: dict[str, Any] | None) -> Reply:
        """Apply one worker's gradient at the current version and answer with what it syncs to next (an a3c
        checkpoint holds no collector state: none is ever asked for)."""
        apply_worker_gradient(self.cfg, self.rows, self.global_model, worker, version_at_sync, from_wire(gradient),
                              stats, finished, steps)
        return self.join(worker)

    def drain(self, ending: bool) -> tuple[list[Any], int]:
        """The record calls since the last drain and the env steps; they end with a checkpoint when the run
        has crossed ``checkpoint_interval`` since the last one (the local server's rule) or is ending."""
        env_steps = self.global_model.counters.env_steps
        if ending or env_steps >= self.next_checkpoint_at:
            self.rows.save_checkpoint(self.global_model.checkpoint())
            self.next_checkpoint_at = next_checkpoint_at(env_steps, self.cfg.checkpoint_interval)
        return self.rows.take(), env_steps


def next_checkpoint_at(env_steps: int, interval: int) -> int:
    return (env_steps // interval + 1) * interval


@dataclass
class Round:
    """One synchronous update as the server gathers it: each push's arrival time, loss statistics and
    collector state by worker, and the answer they all wait for."""

    version: int
    with_state: bool  # every worker sends its collector's state with its gradient: a checkpoint follows
    pushes: dict[int, tuple[float, dict[str, float], dict[str, Any] | None]] = field(default_factory=dict)
    done: bool = False
    reply: Reply = None


class SynchronousServer(ParameterServer):
    """The a2c server actor, and the barrier: it holds each worker's push until every worker's gradient of
    the round has arrived, steps once with their mean and answers all of them with the new parameters.

    A threaded actor (see :func:`synchronous_server_concurrency`): each push waits in its own thread on one
    condition, whose lock guards the server's state. (An asyncio actor would need no lock, but answered
    each call about 0.4 ms later on Ray 2.60.) Checkpoints follow the rounds that cross
    ``checkpoint_interval`` and the last round, as the local workers' do.
    """

    def __init__(self, cfg: Any, resume_state: dict[str, Any] | None):
        super().__init__(cfg, resume_state)
        algo, counters = cfg.algo, self.global_model.counters
        self.steps_per_round = algo.num_workers * algo.n_steps * algo.num_envs
        self.gradients = torch.zeros(algo.num_workers, self.global_model.model.flat_params.numel())
        self.log = SyncLog(self.rows, algo.num_workers, counters.version, counters.env_steps)
        self.condition = threading.Condition()
        self.params = to_wire(self.global_model.model.flat_params)
        self.round = self.next_round()

    def next_round(self) -> Round:
        """The round after the current counters; it asks for the collectors' states if a checkpoint follows it:
        when it crosses ``checkpoint_interval``, spends the budget, or is the last after a stop request."""
        after = self.global_model.counters.env_steps + self.steps_per_round
        with_state = (after >= self.cfg.total_env_steps or self.stop
                      or checkpoint_crossed(after, self.steps_per_round, self.cfg.checkpoint_interval))
        return Round(self.global_model.counters.version, with_state)

    def join(self, worker: int) -> Reply:
        """The current round; a worker that already pushed to it (and was restarted) waits for the next."""
        with self.condition:
            current = self.round
            if worker not in current.pushes:
                return current.version, self.params, current.with_state
            self.condition.wait_for(lambda: current.done)
            return current.reply

    def push(self, worker: int, version_at_sync: int, gradient: bytes, stats: dict[str, float],
             finished: list[tuple[int, float, int]], steps: int,
             collector_state: dict[str, Any] | None) -> Reply:
        """Add one worker's gradient and finished episodes to the round and wait for the round's answer
        (``steps``, the env steps of the rollout, is the same for every push: the round counts them itself)."""
        with self.condition:
            current, num_workers = self.round, self.cfg.algo.num_workers
            if version_at_sync != current.version:
                raise RuntimeError(f"worker {worker} pushed a gradient of round {version_at_sync} during round "
                                   f"{current.version}")
            self.gradients[worker].copy_(torch.from_numpy(from_wire(gradient)))
            current.pushes[worker] = (time.perf_counter(), stats, collector_state)
            # Workers step in lockstep, so the run has made num_workers steps for each of this worker's.
            env_steps = self.global_model.counters.env_steps
            self.log.add(worker, [], [(current.version, env_steps + steps_into_rollout * num_workers, ret, length)
                                      for steps_into_rollout, ret, length in finished])
            if len(current.pushes) == num_workers:
                self.complete(current)
                self.condition.notify_all()
            else:
                self.condition.wait_for(lambda: current.done)
            return current.reply

    def complete(self, current: Round) -> None:
        """Step with the mean gradient (summed in worker order: the local replicas' bits), record the round as
        the local backend does, checkpoint if the round brought the collectors' states, and set the answer."""
        algo, model, counters = self.cfg.algo, self.global_model, self.global_model.counters
        lr = learning_rate(algo, counters.env_steps, self.cfg.total_env_steps)
        average_gradients(self.gradients, out=model.model.flat_grads)
        set_learning_rate(model.optimizer, lr)
        model.optimizer.step()
        counters.version += 1
        counters.env_steps += self.steps_per_round
        last = max(arrived for arrived, _, _ in current.pushes.values())
        for worker, (arrived, stats, _) in sorted(current.pushes.items()):
            update = (current.version, counters.env_steps, last - arrived, lr, 0, *(stats[name] for name in LOSS_STATS))
            self.log.add(worker, [update], [])
        self.log.record_complete()
        if current.with_state:
            collectors = [state for _, (_, _, state) in sorted(current.pushes.items())]
            self.rows.save_checkpoint(model.checkpoint(collectors=collectors))
        self.params = to_wire(model.model.flat_params)
        if not (counters.env_steps >= self.cfg.total_env_steps or (self.stop and current.with_state)):
            self.round = self.next_round()
            current.reply = self.round.version, self.params, self.round.with_state
        current.done = True

    def drain(self, ending: bool) -> tuple[list[Any], int]:
        """The record calls since the last drain and the env steps; when the run is ending, also the episodes
        of a round that will not complete (as the local backend records them after a failure)."""
        with self.condition:
            if ending:
                self.log.record_rest()
            return self.rows.take(), self.global_model.counters.env_steps


def synchronous_server_concurrency(algo: Any) -> int:
    """Calls the a2c server must run at once: a push or join of every worker; the call of each worker that
    died waiting at the barrier, which waits on until its round completes (one per restart, and one for
    the failure that ends the run); and the driver's drain and stop request."""
    return algo.num_workers + algo.max_restarts + 1 + 2


def first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


class Actors:
    """One run's server and worker actors: created with their resources, started, restarted after a failure
    (while ``algo.max_restarts`` allows), and killed at the end."""

    def __init__(self, cfg: Any, record: Record):
        self.cfg, self.record = cfg, record
        settings, algo = cfg.ray, cfg.algo
        if algo.name == "a2c":
            server = ray.remote(SynchronousServer).options(
                num_cpus=settings.server_cpus, max_restarts=0,
                max_concurrency=synchronous_server_concurrency(algo))
        else:
            server = ray.remote(ParameterServer).options(num_cpus=settings.server_cpus, max_restarts=0)
        self.server = server.remote(cfg, record.resume_state)
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


# --------------------------------------------------------------------------- the driver
def run(cfg: Any, record: Record) -> None:
    """The a3c parameter-server or a2c workers schedule on actors; the driver records and supervises."""
    collectors = resumed_collectors(cfg, record.resume_state) if cfg.algo.name == "a2c" else None
    with run_actors(cfg, record) as actors:
        supervise(cfg, record, actors, collectors)


def supervise(cfg: Any, record: Record, actors: Actors, collectors: list[dict[str, Any]] | None) -> None:
    """Start the workers, replay the server's record calls every ``POLL_S`` seconds, restart failed workers,
    and stop the run when asked."""
    server = actors.server
    # A synchronous round needs every worker: one that fails while the run stops is restarted to finish it.
    synchronous = cfg.algo.name == "a2c"

    def drain(ending: bool) -> tuple[bool, int]:
        calls, env_steps = ray.get(server.drain.remote(ending))
        replay(record, calls)
        return bool(calls), env_steps

    _, env_steps = ray.get(server.counters.remote())
    actors.start_all(env_steps, collectors)
    runs = {actor.run.remote(server): worker for worker, actor in enumerate(actors.workers)}
    stopping, last_progress = False, time.monotonic()
    try:
        while runs:
            ready, _ = ray.wait(list(runs), num_returns=len(runs), timeout=POLL_S)
            if record.stop_requested and not stopping:
                server.request_stop.remote()
                stopping = True
            if drain(ending=False)[0]:
                last_progress = time.monotonic()
            for ref in ready:
                worker = runs.pop(ref)
                try:
                    ray.get(ref)
                except WORKER_ERRORS as error:
                    _, env_steps = ray.get(server.counters.remote())  # where the failed worker restarts
                    finishing = env_steps >= cfg.total_env_steps or (stopping and not synchronous)
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
            drain(ending=True)  # every row, and the final checkpoint (a synchronous run's follows its last round)
        except RayActorError as error:  # the server itself died: nothing left to save
            record.event("server_failed", reason=first_line(error))
