"""The a3c parameter-server and a2c workers schedules on Ray actors (``backend=ray``), for more than one machine.

The same schedules as the local transport's, over Ray calls instead of pipes: worker actors run the
parameter-server worker loop (``algorithms.schedules.parameter_server``) on a
:class:`~algorithms.schedules.worker.RolloutWorker`;
the server actor holds the :class:`~algorithms.schedules.global_model.GlobalModel` and applies pushes with the local
server's rules (a3c), or is the a2c barrier and applies the workers' mean (:class:`SynchronousServer`).
The driver records what the server did (:class:`RecordBuffer`, replayed every ``POLL_S``) and supervises
the workers with the local backend's :class:`~algorithms.infra.supervision.RestartPolicy`. See docs/ray.md and
docs/design.md.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

import algorithms
from algorithms.config import AlgoConfig, RunConfig
from algorithms.core.evaluation import next_evaluation_at
from algorithms.core.model import learner_device
from algorithms.core.rollout import UNROLL_FIELDS, Unrolls, join_unrolls
from algorithms.infra.checkpoint import Checkpoint, check_collectors
from algorithms.infra.messages import (
    EvalSnapshot,
    Push,
    Record,
    Reply,
    UnrollReady,
    from_wire,
    read_only_view,
    to_wire,
)
from algorithms.infra.reaper import Reaper
from algorithms.infra.supervision import (
    NonFiniteUpdate,
    ProgressWatch,
    RestartPolicy,
    StallWatchdog,
    WorkerFailure,
    run_watchdog,
    silence_detail,
)
from algorithms.schedules.actor_learner import UnrollLearner, act, starving
from algorithms.schedules.global_model import GlobalModel, evaluate_if_due
from algorithms.schedules.parameter_server import (
    ParameterServer,
    parameter_server_worker,
)
from algorithms.schedules.synchronous import SyncLog, checkpoint_crossed, mean_step, round_episodes, round_row
from algorithms.schedules.worker import RolloutWorker
from algorithms.updates import rule_for

POLL_S = 0.05  # how often the driver replays the server's record calls and checks its workers
WORKER_ERRORS = (RayActorError, RayTaskError)  # a worker actor that died, or whose code raised


# --------------------------------------------------------------------------- the cluster
def local_cluster_cpus(cfg: RunConfig) -> int:
    """CPUs of a cluster started for this run: ``ray.num_cpus``, or this machine's, or what the actors ask."""
    if cfg.ray.num_cpus is not None:
        return cfg.ray.num_cpus
    asked = cfg.algo.num_workers * cfg.ray.cpus_per_worker + cfg.ray.server_cpus
    return max(os.cpu_count() or 1, math.ceil(asked))


@contextmanager
def ray_cluster(cfg: RunConfig, record: Record) -> Iterator[None]:
    """Connect to the cluster ``cfg.ray`` names, or start a local one; shut down what this call started."""
    connect = not ray.is_initialized()
    with ExitStack() as started:
        if connect:
            if cfg.ray.address is None:
                started.enter_context(Reaper())  # a SIGKILLed driver's cluster must not outlive it
            connect_to_cluster(cfg)
            started.callback(ray.shutdown)
        resources = ray.cluster_resources()
        record.event("ray_cluster", address=cfg.ray.address, started_here=connect and cfg.ray.address is None,
                     nodes=sum(node["Alive"] for node in ray.nodes()), cpus=resources.get("CPU", 0.0),
                     ray_version=ray.__version__)
        yield


def connect_to_cluster(cfg: RunConfig) -> None:
    """``ray.init`` for the cluster ``cfg.ray`` names, or a new local one, keeping this process's SIGTERM handler."""
    settings = cfg.ray
    handler = signal.getsignal(signal.SIGTERM)  # ray.init replaces it with an exit
    try:
        if settings.address is None:
            # address="local": a new cluster even when one runs on this machine (ray.init would join it)
            ray.init(address="local", num_cpus=local_cluster_cpus(cfg), include_dashboard=False,
                     logging_level=logging.WARNING)
        else:
            # the actors need only the algorithms package (their config is its dataclasses), shipped as a
            # directory (a Ray Client driver, ray://, must pickle the runtime env: a module would not do)
            packages = [str(Path(algorithms.__file__).parent)]
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


# --------------------------------------------------------------------------- actors
class RayLink:
    """The parameter-server transport over Ray calls to the server actor."""

    def __init__(self, server: Any, worker: int):
        self.server, self.worker = server, worker

    def join(self) -> Reply | None:
        return ray.get(self.server.join.remote(self.worker))

    def push(self, push: Push) -> Reply | None:
        return ray.get(self.server.push.remote(push))


class RayWorker:
    """A worker actor: a :class:`~algorithms.schedules.worker.RolloutWorker` that computes gradients (or acts
    unrolls) and never applies them."""

    def __init__(self, cfg: RunConfig, worker: int):
        torch.set_num_threads(cfg.torch_threads)
        self.cfg, self.worker = cfg, worker
        self.rollouts: RolloutWorker | None = None

    def start(self, env_steps: int, collector_state: dict[str, Any] | None = None) -> tuple[int, str]:
        """(Re)build the rollout worker at ``env_steps`` (a resumed a2c worker also continues its collector's state);
        return this process's pid and node address."""
        if self.rollouts is not None:
            self.rollouts.close()
        self.rollouts = RolloutWorker(self.cfg, self.worker, env_steps, collector_state)
        return os.getpid(), ray.util.get_node_ip_address()

    def run(self, server: Any) -> None:
        assert self.rollouts is not None, "start() first"
        parameter_server_worker(self.rollouts, RayLink(server, self.worker))

    def unroll(self, params: bytes, version: int) -> tuple[UnrollReady, dict[str, np.ndarray]]:
        """An impala actor's unroll, acted with ``params`` of ``version``: its announcement and its arrays."""
        actor = self.rollouts
        assert actor is not None, "start() first"
        actor.model.flat_params.copy_(from_wire(params))
        ready, unroll = act(actor, version)
        return ready, {name: getattr(unroll, name).numpy() for name in UNROLL_FIELDS}


class RecordCall(NamedTuple):
    """One call a server actor made on the run record, to be replayed by the driver."""

    method: str  # episode, update, event, evaluate or save_checkpoint
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class RecordBuffer:
    """The run record as a server actor sees it: its ``episode``, ``update``, ``event``, ``evaluate`` and
    ``save_checkpoint`` calls, kept in order for the driver to replay into the real record, and the record's rule
    for when an evaluation is due (from the run's env step at ``env_steps``)."""

    def __init__(self, cfg: RunConfig, env_steps: int) -> None:
        self.calls: list[RecordCall] = []
        self.cfg = cfg
        self.next_evaluation_at = next_evaluation_at(env_steps, cfg.eval, cfg.total_env_steps)

    def episode(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append(RecordCall("episode", args, kwargs))

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append(RecordCall("update", args, kwargs))

    def event(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append(RecordCall("event", args, kwargs))

    def evaluation_due(self, env_steps: int) -> bool:
        return env_steps >= self.next_evaluation_at

    def evaluate(self, snapshot: EvalSnapshot) -> None:
        self.next_evaluation_at = next_evaluation_at(snapshot.env_steps, self.cfg.eval, self.cfg.total_env_steps)
        self.calls.append(RecordCall("evaluate", (snapshot,), {}))

    def save_checkpoint(self, state: Checkpoint) -> None:
        self.calls.append(RecordCall("save_checkpoint", (state,), {}))

    def take(self) -> list[RecordCall]:
        calls, self.calls = self.calls, []
        return calls


def replay(record: Record, calls: list[RecordCall]) -> None:
    for call in calls:
        getattr(record, call.method)(*call.args, **call.kwargs)


class ParameterServerActor:
    """The a3c server actor: the parameter server's rules
    (:class:`~algorithms.schedules.parameter_server.ParameterServer`) over the run's
    :class:`~algorithms.schedules.global_model.GlobalModel`, recording into a :class:`RecordBuffer`."""

    @staticmethod
    def actor_options(algo: AlgoConfig) -> dict[str, Any]:
        return {}

    def __init__(self, cfg: RunConfig, resume_state: Checkpoint | None):
        torch.set_num_threads(cfg.torch_threads)
        self.cfg = cfg
        self.global_model = GlobalModel(cfg, resume_state)
        self.rows = RecordBuffer(cfg, self.global_model.counters.env_steps)
        self.server = ParameterServer(cfg, self.rows, self.global_model)
        self.diverged: str | None = None  # a NonFiniteUpdate's message: the driver fails the run with it
        self.next_checkpoint_at = next_checkpoint_at(self.global_model.counters.env_steps, cfg.checkpoint_interval)
        self.heard: set[int] = set()  # workers whose join or push arrived since the last drain: their progress

    def counters(self) -> tuple[int, int]:
        counters = self.global_model.counters
        return counters.version, counters.env_steps

    def request_stop(self) -> None:
        self.server.stop = True

    def join(self, worker: int) -> Reply | None:
        self.heard.add(worker)
        return self.server.reply()

    def push(self, push: Push) -> Reply | None:
        self.heard.add(push.worker)
        try:
            return self.server.push(push)
        except NonFiniteUpdate as error:  # the run's failure, not the worker's: stop every worker
            self.diverge(error)
            return None

    def diverge(self, error: NonFiniteUpdate) -> None:
        self.diverged, self.server.stop = str(error), True

    def drain(self, ending: bool) -> Drained:
        """The record calls since the last drain and the env steps; they end with a checkpoint when the run
        has crossed ``checkpoint_interval`` since the last one (the local server's rule) or is ending."""
        env_steps = self.global_model.counters.env_steps
        evaluate_if_due(self.cfg, self.rows, self.global_model, workers_done=ending)
        if ending or env_steps >= self.next_checkpoint_at:
            self.rows.save_checkpoint(self.global_model.checkpoint())
            self.next_checkpoint_at = next_checkpoint_at(env_steps, self.cfg.checkpoint_interval)
        return Drained(self.rows.take(), env_steps, self.diverged)

    def progress(self) -> WorkerProgress:
        """The workers heard from since the last call (their progress), and none that the others wait for."""
        heard, self.heard = sorted(self.heard), set()
        return WorkerProgress(heard, [])


class Drained(NamedTuple):
    """What the driver takes from the server actor every ``POLL_S``."""

    calls: list[RecordCall]
    env_steps: int
    diverged: str | None  # the run diverged: fail it with this message


class WorkerProgress(NamedTuple):
    """What the driver takes from the server actor with each drain, to watch its workers."""

    heard: list[int]  # workers whose join or push arrived since the last call
    behind: list[int]  # a2c: the workers that have not pushed to the round the others wait in


def next_checkpoint_at(env_steps: int, interval: int) -> int:
    return (env_steps // interval + 1) * interval


@dataclass
class SyncRound:
    """One synchronous update as the server gathers it: the pushes by worker with their arrival times, and
    the answer they all wait for."""

    version: int
    with_state: bool  # every worker sends its collector's state with its gradient: a checkpoint follows
    pushes: dict[int, tuple[float, Push]] = field(default_factory=dict)
    done: bool = False
    reply: Reply | None = None


class SynchronousServer(ParameterServerActor):
    """The a2c server actor, and the barrier: it holds each worker's push until every worker's gradient of
    the round has arrived, steps once with their mean and answers all of them with the new parameters.

    A threaded actor (see :func:`synchronous_server_concurrency`): each push waits in its own thread on one
    condition, whose lock guards the server's state. (An asyncio actor would need no lock, but answered
    each call about 0.4 ms later on Ray 2.60.) Checkpoints follow the rounds that cross
    ``checkpoint_interval`` and the last round, as the local workers' do.
    """

    @staticmethod
    def actor_options(algo: AlgoConfig) -> dict[str, Any]:
        return {"max_concurrency": synchronous_server_concurrency(algo)}

    def __init__(self, cfg: RunConfig, resume_state: Checkpoint | None):
        super().__init__(cfg, resume_state)
        algo, counters = cfg.algo, self.global_model.counters
        self.steps_per_round = algo.num_workers * algo.n_steps * algo.num_envs
        self.gradients = torch.zeros(algo.num_workers, self.global_model.model.flat_params.numel())
        self.log = SyncLog(self.rows, algo.num_workers, counters.version, counters.env_steps)
        self.rule = rule_for(cfg, self.global_model.target(), can_skip=False)  # every replica takes the same step
        self.condition = threading.Condition()
        self.params = to_wire(self.global_model.model.flat_params)
        self.round = self.next_round()

    def next_round(self) -> SyncRound:
        """The round after the current counters; it asks for the collectors' states if a checkpoint follows it:
        when it crosses ``checkpoint_interval``, spends the budget, or is the last after a stop request."""
        after = self.global_model.counters.env_steps + self.steps_per_round
        with_state = (after >= self.cfg.total_env_steps or self.server.stop
                      or checkpoint_crossed(after, self.steps_per_round, self.cfg.checkpoint_interval))
        return SyncRound(self.global_model.counters.version, with_state)

    def join(self, worker: int) -> Reply | None:
        """The current round; a worker that already pushed to it (and was restarted) waits for the next."""
        with self.condition:
            self.heard.add(worker)
            current = self.round
            if worker not in current.pushes:
                return Reply(current.version, self.params, current.with_state)
            self.condition.wait_for(lambda: current.done)
            return current.reply

    def push(self, push: Push) -> Reply | None:
        """Add one worker's gradient and finished episodes to the round and wait for the round's answer
        (the rollout's env steps are the same for every push: the round counts them itself)."""
        with self.condition:
            current, num_workers = self.round, self.cfg.algo.num_workers
            self.heard.add(push.worker)
            if push.version_at_sync != current.version:
                raise RuntimeError(f"worker {push.worker} pushed a gradient of round {push.version_at_sync} during "
                                   f"round {current.version}")
            self.gradients[push.worker].copy_(from_wire(push.gradient))
            self.global_model.keep_statistics(push.obs_statistics)
            current.pushes[push.worker] = (time.perf_counter(), push)
            self.log.add(push.worker, [], round_episodes(current.version, self.global_model.counters.env_steps,
                                                         push.episodes, num_workers))
            if len(current.pushes) == num_workers:
                try:
                    self.complete(current)
                except NonFiniteUpdate as error:  # the run's failure: answer every worker with a stop
                    self.diverge(error)
                    current.done = True
                self.condition.notify_all()
            else:
                self.condition.wait_for(lambda: current.done)
            return current.reply

    def complete(self, current: SyncRound) -> None:
        """Step with the mean gradient (summed in worker order: the local replicas' bits), record the round as
        the local backend does, checkpoint if the round brought the collectors' states, and set the answer."""
        model, counters = self.global_model, self.global_model.counters
        pushes = [push for _, (_, push) in sorted(current.pushes.items())]
        step = mean_step(self.rule, self.gradients, [push.stats for push in pushes], counters, self.steps_per_round)
        last = max(arrived for arrived, _ in current.pushes.values())
        for worker, (arrived, push) in sorted(current.pushes.items()):
            row = round_row(current.version, current.version, counters.env_steps, step, push.stats, last - arrived)
            self.log.add(worker, [row], [])
        self.log.record_complete()
        if current.with_state:
            collectors = []
            for _, (_, push) in sorted(current.pushes.items()):
                assert push.collector_state is not None  # the round asked every worker for its state
                collectors.append(push.collector_state)
            self.rows.save_checkpoint(model.checkpoint(collectors=collectors))
        self.params = to_wire(model.model.flat_params)
        if not (counters.env_steps >= self.cfg.total_env_steps or (self.server.stop and current.with_state)):
            self.round = self.next_round()
            current.reply = Reply(self.round.version, self.params, self.round.with_state)
        current.done = True

    def drain(self, ending: bool) -> Drained:
        """The record calls since the last drain and the env steps; when the run is ending, also the episodes
        of a round that will not complete (as the local backend records them after a failure)."""
        with self.condition:
            if ending:
                self.log.record_rest()
            evaluate_if_due(self.cfg, self.rows, self.global_model, workers_done=ending)
            return Drained(self.rows.take(), self.global_model.counters.env_steps, self.diverged)

    def progress(self) -> WorkerProgress:
        """The workers heard from since the last call, and those that have not pushed to the round the others wait
        in."""
        with self.condition:
            heard, pushed = super().progress().heard, self.round.pushes
            return WorkerProgress(heard, [worker for worker in range(self.cfg.algo.num_workers)
                                          if pushed and worker not in pushed])


def synchronous_server_concurrency(algo: AlgoConfig) -> int:
    """Calls the a2c server must run at once: a push or join of every worker; the call of each worker that
    died waiting at the barrier, which waits on until its round completes (one per restart, and one for
    the failure that ends the run); and the driver's drain, progress and stop request."""
    return algo.num_workers + algo.max_restarts + 1 + 3


def first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


class Actors:
    """One run's server and worker actors: created with their resources, started, watched for progress, restarted
    after a failure or a stall (while ``algo.max_restarts`` allows), and killed at the end."""

    def __init__(self, cfg: RunConfig, record: Record, server_class: type[ParameterServerActor] | None):
        self.cfg, self.record = cfg, record
        settings, algo = cfg.ray, cfg.algo
        # Ray actor handles, typed Any: ray's types give their methods no .remote or .options
        self.server: Any = None  # impala's learner is the driver itself
        if server_class is not None:
            server = ray.remote(server_class).options(num_cpus=settings.server_cpus, max_restarts=0,
                                                      **server_class.actor_options(algo))
            self.server = server.remote(cfg, record.resume_state)
        worker_actor = ray.remote(RayWorker).options(num_cpus=settings.cpus_per_worker,
                                                     max_restarts=algo.max_restarts, max_task_retries=0)
        self.workers: list[Any] = [worker_actor.remote(cfg, worker) for worker in range(algo.num_workers)]
        self.pids: dict[int, int] = {}
        self.nodes: dict[int, str] = {}  # each worker's node address
        self.policy = RestartPolicy(record, algo.max_restarts, name_pid=True)
        self.watch = ProgressWatch(algo.worker_stall_s)

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
            self.pids[worker], self.nodes[worker] = pid, node
            self.watch.expect(worker)
            self.record.event("worker_started", worker=worker, pid=pid, node=node)

    def restart_or_fail(self, worker: int, error: BaseException, env_steps: int, finishing: bool) -> bool:
        """Log a worker's failure (a death, an exception, or its kill for stalling); restart it at ``env_steps`` and
        return True, or return False when the run is finishing anyway; raise :class:`WorkerFailure` when no restart
        is left."""
        died = isinstance(error, RayActorError)
        what = "died" if died else "raised an exception"
        self.watch.forget(worker)
        if not self.policy.failed(worker, what, env_steps, finishing, error=None if died else str(error),
                                  pid=self.pids.get(worker), exitcode=None,
                                  reason=f"actor {what}: {first_line(error)}"):
            return False
        pid, node = self._start_again(worker, env_steps, what)
        self.pids[worker], self.nodes[worker] = pid, node
        self.watch.restarted(worker)
        self.policy.restarted(worker, env_steps, pid=pid, node=node)
        return True

    def check(self, watchdog: StallWatchdog, env_steps: int, workers: list[int], finishing: bool = False,
              waited_on: list[int] | None = None) -> None:
        """Kill each stalled worker actor (its calls then fail, and :meth:`restart_or_fail` answers), then fail the
        run if no update came for ``watchdog``'s timeout; ``waited_on``: the workers the others wait for (those that
        have not pushed to a synchronous round, or whose unrolls the learner needs)."""
        for stall in self.watch.stalled(waited_on or (), finishing):
            self.policy.stalled(stall, env_steps, self.pids.get(stall.worker))
            self.kill_stalled(stall.worker)
        watchdog.check(env_steps, workers, silence_detail(self.watch, waited_on))

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

    def kill_stalled(self, worker: int) -> None:
        """Kill a worker's process; Ray restarts it (while its restarts last) and its calls fail meanwhile. A stopped
        process cannot answer Ray's kill request, which ends it only after a few seconds: one on this node gets a
        SIGKILL at once as well."""
        ray.kill(self.workers[worker], no_restart=False)
        if self.nodes.get(worker) == ray.util.get_node_ip_address():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pids[worker], signal.SIGKILL)

    def kill(self) -> None:
        for actor in [*self.workers, *([self.server] if self.server is not None else [])]:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass


@contextmanager
def run_actors(cfg: RunConfig, record: Record, server_class: type[ParameterServerActor] | None) -> Iterator[Actors]:
    """A run's actors on the cluster ``cfg.ray`` names; every one of them is killed when the run ends."""
    with ray_cluster(cfg, record):
        actors = Actors(cfg, record, server_class)
        try:
            yield actors
        finally:
            actors.kill()


# --------------------------------------------------------------------------- the driver
def run_parameter_server(cfg: RunConfig, record: Record) -> None:
    """a3c parameter server: a resumed worker keeps no state but the server's parameters."""
    with run_actors(cfg, record, ParameterServerActor) as actors:
        supervise(cfg, record, actors, collectors=None, synchronous=False)


def run_workers(cfg: RunConfig, record: Record) -> None:
    """a2c workers: a resumed worker continues its collector's state."""
    resume = record.resume_state
    collectors = check_collectors(resume, cfg.algo.num_workers) if resume is not None else None
    with run_actors(cfg, record, SynchronousServer) as actors:
        supervise(cfg, record, actors, collectors, synchronous=True)


def supervise(cfg: RunConfig, record: Record, actors: Actors, collectors: list[dict[str, Any]] | None,
              synchronous: bool) -> None:
    """Start the workers, replay the server's record calls every ``POLL_S`` seconds, restart failed workers
    (a synchronous round needs every worker: one that fails while the run stops is restarted to finish it),
    and stop the run when asked."""
    server = actors.server

    def finishing(env_steps: int) -> bool:
        """A worker that fails now is not restarted (a synchronous round needs every worker while stopping)."""
        return env_steps >= cfg.total_env_steps or (stopping and not synchronous)

    def drain(ending: bool) -> tuple[bool, int, list[int]]:
        """Replay the server's record calls; whether there were any, the env steps, and the workers a round waits
        for."""
        actors.watch.listened()
        drained, progress = ray.get([server.drain.remote(ending), server.progress.remote()])
        replay(record, drained.calls)
        for worker in progress.heard:
            actors.watch.heard(worker)
        if drained.diverged and not ending:
            raise NonFiniteUpdate(drained.diverged)
        return bool(drained.calls), drained.env_steps, progress.behind

    _, env_steps = ray.get(server.counters.remote())
    actors.start_all(env_steps, collectors)
    runs = {actor.run.remote(server): worker for worker, actor in enumerate(actors.workers)}
    stopping, watchdog = False, run_watchdog(cfg.algo.worker_stall_s)
    try:
        while runs:
            ready, _ = ray.wait(list(runs), num_returns=len(runs), timeout=POLL_S)
            if record.stop_requested and not stopping:
                server.request_stop.remote()
                stopping = True
            progressed, env_steps, behind = drain(ending=False)
            if progressed:
                watchdog.progressed()
            for ref in ready:
                worker = runs.pop(ref)
                try:
                    ray.get(ref)
                    actors.watch.forget(worker)  # done
                except WORKER_ERRORS as error:
                    _, env_steps = ray.get(server.counters.remote())  # where the failed worker restarts
                    if actors.restart_or_fail(worker, error, env_steps, finishing(env_steps)):
                        runs[actors.workers[worker].run.remote(server)] = worker
                        watchdog.progressed()
            actors.check(watchdog, env_steps, sorted(runs.values()), finishing(env_steps), behind)
    finally:
        try:
            server.request_stop.remote()
            drain(ending=True)  # every row, and the final checkpoint (a synchronous run's follows its last round)
        except RayActorError as error:  # the server itself died: nothing left to save
            record.event("server_failed", reason=first_line(error))


# --------------------------------------------------------------------------- impala: the driver learns
class UnrollCalls:
    """impala's unroll calls in flight: ``queue_depth`` per actor, each with the parameters published when it was
    made (a Ray call's arguments are fixed when it is made, so an actor acts with the parameters of its call);
    finished unrolls wait in arrival order for the learner."""

    def __init__(self, cfg: RunConfig, actors: Actors, global_model: GlobalModel):
        self.algo, self.actors, self.global_model = cfg.algo, actors, global_model
        self.in_flight: dict[Any, int] = {}  # call -> worker
        self.pending: list[tuple[UnrollReady, dict[str, np.ndarray]]] = []
        self.publish()

    def publish(self) -> None:
        version, params = self.global_model.params_for_worker()
        self.params, self.version = ray.put(to_wire(params)), version

    def fill(self, worker: int) -> None:
        """Calls for ``worker`` up to ``queue_depth``, counting its unrolls waiting for the learner."""
        waiting = sum(ready.worker == worker for ready, _ in self.pending)
        for _ in range(self.algo.queue_depth - waiting - sum(w == worker for w in self.in_flight.values())):
            self.in_flight[self.actors.workers[worker].unroll.remote(self.params, self.version)] = worker
            self.actors.watch.unblocked(worker)  # an actor waiting for a call of its own starts one now

    def waited_on(self) -> list[int]:
        """The actors whose unrolls the learner waits for, to fill a batch."""
        return starving([ready.worker for ready, _ in self.pending], self.algo.batch_size, self.algo.num_workers)

    def drop(self, worker: int) -> None:
        """Forget a failed actor's calls: every one of them fails with it."""
        self.in_flight = {call: w for call, w in self.in_flight.items() if w != worker}

    def batch(self) -> tuple[list[UnrollReady], Unrolls] | None:
        """The oldest ``batch_size`` unrolls side by side, if there are that many."""
        if len(self.pending) < self.algo.batch_size:
            return None
        taken, self.pending = self.pending[:self.algo.batch_size], self.pending[self.algo.batch_size:]
        parts = [Unrolls(**{name: read_only_view(array) for name, array in arrays.items()}) for _, arrays in taken]
        return [ready for ready, _ in taken], join_unrolls(parts)


def run_impala(cfg: RunConfig, record: Record) -> None:
    """impala: actors on the cluster, the learner in this driver (on ``device``), recording directly."""
    torch.set_num_threads(cfg.torch_threads)
    global_model = GlobalModel(cfg, record.resume_state, device=learner_device(cfg))
    counters, learner = global_model.counters, UnrollLearner(cfg, record, global_model)
    with run_actors(cfg, record, None) as actors:
        actors.start_all(counters.env_steps)
        calls, watchdog = UnrollCalls(cfg, actors, global_model), run_watchdog(cfg.algo.worker_stall_s)
        for worker in range(cfg.algo.num_workers):
            calls.fill(worker)
        try:
            while calls.in_flight and not (record.stop_requested or learner.finished()):
                actors.watch.listened()
                ready, _ = ray.wait(list(calls.in_flight), num_returns=1, timeout=POLL_S)
                for call in ready:
                    collect_unroll(cfg, actors, calls, call, counters.env_steps)
                while not learner.finished() and (taken := calls.batch()) is not None:
                    learner.learn(*taken)
                    calls.publish()
                    watchdog.progressed()
                    for worker in {ready.worker for ready in taken[0]}:
                        calls.fill(worker)  # with wait_for_update, an actor's next call waits for this update
                evaluate_if_due(cfg, record, global_model, workers_done=False)
                if record.checkpoint_due(counters.env_steps):
                    record.save_checkpoint(global_model.checkpoint())
                actors.check(watchdog, counters.env_steps, sorted(set(calls.in_flight.values())),
                             waited_on=calls.waited_on())
        finally:
            record.save_checkpoint(global_model.checkpoint())
    evaluate_if_due(cfg, record, global_model, workers_done=True)


def collect_unroll(cfg: RunConfig, actors: Actors, calls: UnrollCalls, call: Any, env_steps: int) -> None:
    """Take a finished call's unroll, or answer its actor's failure (restart it, or fail the run)."""
    if call not in calls.in_flight:
        return  # its actor failed and was restarted meanwhile
    worker = calls.in_flight.pop(call)
    try:
        calls.pending.append(ray.get(call))
        actors.watch.heard(worker)
    except WORKER_ERRORS as error:
        calls.drop(worker)
        actors.restart_or_fail(worker, error, env_steps, finishing=False)
        calls.fill(worker)  # a restarted actor's calls failed with it
        return
    if not cfg.algo.wait_for_update:
        calls.fill(worker)
