"""The parameter-server protocol, written once over any transport (pipes here, Ray calls in ``ray_backend``).

A worker joins, then loops: sync to the parameters of the server's :class:`~algorithms.infra.messages.Reply` ->
learn -> push the gradient tagged with the reply's version (one push in flight per worker). The server
applies each push at its current version and answers with what to learn with next, or ``None`` to stop.
A transport only has to carry :class:`~algorithms.infra.messages.Join`, :class:`~algorithms.infra.messages.Push` and
replies: :class:`PipeLink` does it over a process pipe.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from algorithms.infra.messages import Push, Record, Reply, UpdateRow, from_wire, record_update, to_wire
from algorithms.schedules.global_model import GlobalModel
from algorithms.schedules.worker import LocalLearner
from algorithms.updates.guard import NonFiniteGuard
from algorithms.updates.rule import apply_gradient, learning_rate


class ServerLink(Protocol):
    """A worker's end of the transport to its server."""

    def join(self) -> Reply | None: ...

    def push(self, push: Push) -> Reply | None: ...


def parameter_server_worker(learner: LocalLearner, server: ServerLink) -> None:
    """Join, then sync -> learn -> push the gradient tagged with its version, until the server answers ``None``."""
    reply = server.join()
    while reply is not None:
        learner.model.flat_params.copy_(from_wire(reply.params))
        episodes, stats = learner.learn()
        collector_state = learner.collector.state_dict() if reply.send_collector_state else None
        reply = server.push(Push(learner.worker, reply.version, to_wire(learner.model.flat_grads), stats, episodes,
                                 learner.steps, collector_state, time.monotonic(), evaluation_statistics(learner)))


def evaluation_statistics(learner: LocalLearner) -> dict[str, Any] | None:
    """Worker 0's observation statistics, which the server keeps for evaluating the global parameters."""
    normalizer = learner.collector.obs_normalizer
    return normalizer.state_dict() if normalizer is not None and learner.worker == 0 else None


def keep_statistics(global_model: GlobalModel, push: Push) -> None:
    """The observation statistics a push carries, for the server's evaluations."""
    if push.obs_statistics is not None and global_model.obs_statistics is not None:
        global_model.obs_statistics.publish(push.obs_statistics)


class ParameterServer:
    """The server half of the protocol, whatever carries its messages.

    Each :class:`~algorithms.infra.messages.Push` is applied at the current version (or dropped as too stale),
    its episodes and update recorded; every join or push is answered with the parameters to learn with next
    (``delay`` versions behind, if set), or ``None`` once the budget is spent or a stop was requested.
    """

    def __init__(self, cfg: Any, record: Record, global_model: GlobalModel):
        self.cfg, self.record, self.global_model = cfg, record, global_model
        self.stop = False
        self.guards: dict[int, NonFiniteGuard] = {}  # by worker: non-finite updates in a row are per worker

    def finishing(self) -> bool:
        return self.stop or self.global_model.counters.env_steps >= self.cfg.total_env_steps

    def reply(self) -> Reply | None:
        if self.finishing():
            return None
        version, params = self.global_model.params_for_worker()
        return Reply(version, to_wire(params), False)

    def push(self, push: Push) -> Reply | None:
        self.apply(push)
        return self.reply()

    def apply(self, push: Push) -> None:
        """Record the push's episodes, apply its gradient at the current version, advance the counters and
        record the update."""
        cfg, model, counters = self.cfg, self.global_model, self.global_model.counters
        keep_statistics(model, push)
        env_steps, version = counters.env_steps, counters.version
        for episode in push.episodes:
            self.record.episode(push.worker, env_steps + episode.steps_into_rollout, episode.ret, episode.length)
        lr = learning_rate(cfg.algo, env_steps, cfg.total_env_steps)
        guard = self.guards.setdefault(push.worker, NonFiniteGuard(cfg.algo, push.worker))
        applied = guard.admits(push.stats, version, env_steps + push.steps)
        if applied:
            applied, lr = apply_gradient(model.optimizer, model.model.flat_params, from_wire(push.gradient), version,
                                         push.version_at_sync, lr, cfg.algo.staleness, model.snapshots)
            guard.check_parameters(model.model.flat_params, version, env_steps + push.steps)
        counters.version, counters.env_steps = version + applied, env_steps + push.steps
        record_update(self.record, push.worker, UpdateRow(env_steps + push.steps, push.version_at_sync, version,
                                                          applied, lr, **push.stats))
