"""IMPALA (Espeholt et al. 2018) and APPO: actors make trajectories stale, the learner corrects for it.

``num_workers`` actor processes each step ``num_envs`` envs. At the start of every unroll an actor copies the
latest parameters the learner published (a :class:`~algorithms.infra.shared_memory.ParameterBoard`, ``staleness.delay``
versions behind if set), acts ``n_steps`` steps without autograd, writes the unroll with its behaviour
log-probabilities into one of its ``queue_depth`` preallocated shared-memory slots (:class:`UnrollSlots`) and
tells the learner which slot and which policy version (:class:`~algorithms.infra.messages.UnrollReady`, a few bytes:
the arrays never travel through a pipe). An actor whose slots are all waiting for the learner waits too, so
the queue is bounded. The learner (the trainer process, on ``device``) takes unrolls in the order they were
sent, ``batch_size`` at a time, takes its update rule's steps on them (impala's one step, appo's epochs; corrected
as ``algo.correction`` says: :mod:`algorithms.updates.off_policy`) and publishes the new parameters.

Every unroll is one row of ``updates.csv`` per step of the rule: ``version_at_sync`` is the version it was acted
with, ``version_at_apply`` the version the step was applied to. With one actor, ``batch_size=1`` and
``wait_for_update`` (the actor acts again only once its unroll's update is published), impala's schedule is
``single``'s and appo's is ``ppo``'s: on-policy V-trace with lambda 1 is the n-step advantage, and the parameters
agree to float32 rounding (the learner computes the values in one batched pass, the others while acting).

An actor that dies is restarted from the current parameters (``algo.max_restarts``); the unrolls it had sent are
kept. Checkpoints hold the learner's state; resumed actors start fresh episodes.
"""

from __future__ import annotations

from multiprocessing import connection
from typing import Any, Protocol

import torch

from algorithms.config import RunConfig
from algorithms.core.envs import make_vector_env
from algorithms.core.model import learner_device
from algorithms.core.rollout import UNROLL_FIELDS, Unrolls, build_collector, join_unrolls
from algorithms.infra.messages import Record, SlotFree, UnrollReady
from algorithms.infra.shared_memory import ParameterBoard
from algorithms.infra.supervision import POLL_S, RestartPolicy, Supervisor, WorkerProcesses
from algorithms.infra.timing import TIMINGS
from algorithms.schedules.actor_learner import InFlightUnroll, UnrollLearner, act, starving
from algorithms.schedules.global_model import GlobalModel, evaluate_if_due
from algorithms.schedules.worker import RolloutWorker
from algorithms.transports.local.asynchronous import tend_workers


class UnrollSlots:
    """``queue_depth`` unroll slots per actor in shared memory, laid out as an actor's collector lays out its
    rollout. Slot ``(worker, slot)`` is written by that actor alone, and read by the learner only after the
    actor announced it; the learner hands it back with :class:`~algorithms.infra.messages.SlotFree`."""

    def __init__(self, cfg: RunConfig):
        envs = make_vector_env(cfg.env, cfg.algo.num_envs)
        try:
            rollout = build_collector(cfg, envs, 0).rollout
        finally:
            envs.close()
        lead = (cfg.algo.num_workers, cfg.algo.queue_depth)
        layout = {name: getattr(rollout, name) for name in UNROLL_FIELDS if hasattr(rollout, name)}
        layout["behaviour_log_probs"] = rollout.rewards
        layout["behaviour_versions"] = torch.zeros(rollout.rewards.shape, dtype=torch.int64)
        layout["bootstrap_obs"] = rollout.obs[0]
        self.tensors = {name: torch.zeros(lead + like.shape, dtype=like.dtype).share_memory_()
                        for name, like in layout.items()}

    def write(self, worker: int, slot: int, unroll: Unrolls) -> None:
        for name, tensor in self.tensors.items():
            tensor[worker, slot].copy_(getattr(unroll, name))

    def gather(self, unrolls: list[UnrollReady]) -> Unrolls:
        """The announced unrolls side by side (their envs concatenated), copied out of their slots."""
        return join_unrolls([self.unroll_in(unroll.worker, unroll.slot) for unroll in unrolls])

    def unroll_in(self, worker: int, slot: int) -> Unrolls:
        return Unrolls(**{name: tensor[worker, slot] for name, tensor in self.tensors.items()})


# --------------------------------------------------------------------------- the actor process
class Inbox:
    """An actor's free slots, replenished by the learner's :class:`~algorithms.infra.messages.SlotFree` answers;
    ``None`` from the learner stops the actor."""

    def __init__(self, conn: connection.Connection, free_slots: list[int]):
        self.conn, self.free, self.stopped = conn, list(free_slots), False

    def take(self) -> int | None:
        """A free slot, waiting for one only when none is free; None once the learner said stop."""
        while not self.stopped and (self.conn.poll() or not self.free):
            self._receive()
        return None if self.stopped else self.free.pop(0)

    def wait_for(self, slot: int) -> None:
        """Wait until the learner hands ``slot`` back (or says stop)."""
        while not self.stopped and slot not in self.free:
            self._receive()

    def _receive(self) -> None:
        message = self.conn.recv()
        if message is None:
            self.stopped = True
        else:
            self.free.append(message.slot)


def actor_loop(cfg: RunConfig, worker: int, conn: connection.Connection, slots: UnrollSlots, board: ParameterBoard,
               free_slots: list[int], env_steps: int) -> None:
    """An actor process: read the parameters -> act one unroll -> write it into a free slot -> announce it."""
    actor = RolloutWorker(cfg, worker, env_steps)
    inbox = Inbox(conn, free_slots)
    try:
        while (slot := inbox.take()) is not None:
            with TIMINGS.part("unroll"):  # what backend=simulated's costs are calibrated on
                if cfg.algo.in_flight_updates:
                    ready, unroll = act_taking_updates(actor, board, slot)
                else:
                    ready, unroll = act(actor, board.read_into(actor.model.flat_params), slot)
                slots.write(actor.worker, slot, unroll)
                conn.send(ready)
            if cfg.algo.wait_for_update:
                inbox.wait_for(slot)
    finally:
        actor.close()


def act_taking_updates(actor: RolloutWorker, board: ParameterBoard, slot: int) -> tuple[UnrollReady, Unrolls]:
    """One unroll whose actor loads each version the learner publishes meanwhile, between two steps."""
    unroll = InFlightUnroll(actor, board.read_into(actor.model.flat_params))
    while unroll.step():
        if board.version > unroll.version:
            unroll.load(board.read_into)
    return unroll.finish(slot)


# --------------------------------------------------------------------------- the learner


class SendsToWorkers(Protocol):
    """What the queue needs of a :class:`~algorithms.infra.supervision.Supervisor`: a message to a worker."""

    def send(self, worker: int, message: Any) -> None: ...


class SlotQueue:
    """The local transport: announced unrolls wait here in the order they were sent, their arrays in their actors'
    slots, until the learner takes ``batch_size`` of them; new parameters go on the board."""

    def __init__(self, cfg: RunConfig, learner: UnrollLearner):
        self.algo, self.learner, self.slots = cfg.algo, learner, UnrollSlots(cfg)
        self.board = ParameterBoard(*learner.global_model.params_for_worker())
        self.pending: list[UnrollReady] = []
        self.stopped = False  # the actors were told to stop

    def free_slots(self, worker: int) -> list[int]:
        """A (re)starting actor's free slots: those holding none of its unrolls still waiting here."""
        waiting = {unroll.slot for unroll in self.pending if unroll.worker == worker}
        return [slot for slot in range(self.algo.queue_depth) if slot not in waiting]

    def waited_on(self) -> list[int]:
        """The actors whose unrolls the learner waits for, to fill a batch."""
        if self.stopped:
            return []
        return starving([unroll.worker for unroll in self.pending], self.algo.batch_size, self.algo.num_workers)

    def receive(self, unroll: UnrollReady) -> None:
        if not self.stopped:
            self.pending.append(unroll)

    def update_if_ready(self, supervisor: SendsToWorkers) -> bool:
        """One update from the oldest ``batch_size`` waiting unrolls, if there are that many; whether it made one."""
        if len(self.pending) < self.algo.batch_size or self.stopped or self.learner.finished():
            return False
        batch, self.pending = self.pending[:self.algo.batch_size], self.pending[self.algo.batch_size:]
        self.update(batch, supervisor)
        return True

    def update(self, batch: list[UnrollReady], supervisor: SendsToWorkers) -> None:
        """Learn from ``batch``'s unrolls, publish the new parameters and hand their slots back (before learning,
        unless ``wait_for_update``). Timed as ``learn/<batch size>``."""
        with TIMINGS.part(f"learn/{len(batch)}"):
            unrolls = self.slots.gather(batch)
            if not self.algo.wait_for_update:
                self._hand_back(batch, supervisor)
            self.learner.learn(batch, unrolls)
            self.board.publish(*self.learner.global_model.params_for_worker())
            if self.algo.wait_for_update:
                self._hand_back(batch, supervisor)

    def _hand_back(self, batch: list[UnrollReady], supervisor: SendsToWorkers) -> None:
        for unroll in batch:
            supervisor.send(unroll.worker, SlotFree(unroll.slot))

    def stop_actors(self, supervisor: SendsToWorkers) -> None:
        self.stopped = True
        for worker in range(self.algo.num_workers):
            supervisor.send(worker, None)


def run(cfg: RunConfig, record: Record) -> None:
    """Start the actors, then learn from their unrolls and supervise them until the budget or a stop."""
    torch.set_num_threads(cfg.torch_threads)
    algo = cfg.algo
    global_model = GlobalModel(cfg, record.resume_state, device=learner_device(cfg))
    counters, learner = global_model.counters, UnrollLearner(cfg, record, global_model)
    queue = SlotQueue(cfg, learner)
    with WorkerProcesses(algo.start_method) as processes:
        supervisor = Supervisor(cfg, record, processes, actor_loop,
                                lambda worker: (queue.slots, queue.board, queue.free_slots(worker), counters.env_steps),
                                RestartPolicy(record, algo.max_restarts), lambda: counters.env_steps,
                                waited_on=queue.waited_on)
        try:
            supervisor.start_all()
            while supervisor.running():
                for _, unroll in sorted(supervisor.messages(POLL_S), key=lambda item: item[1].sent_at):
                    queue.receive(unroll)
                while queue.update_if_ready(supervisor):
                    supervisor.progressed()
                if not queue.stopped and (record.stop_requested or learner.finished()):
                    queue.stop_actors(supervisor)
                tend_workers(cfg, record, global_model, supervisor, finishing=queue.stopped)
        finally:
            processes.stop()
            record.save_checkpoint(global_model.checkpoint())
    evaluate_if_due(cfg, record, global_model, workers_done=True)
