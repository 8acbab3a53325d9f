"""The parameter-server protocol, written once over any transport (pipes, Ray calls, a simulated clock).

A worker joins, then loops: sync to the parameters of the server's :class:`~algorithms.infra.messages.Reply` ->
learn -> push the gradient tagged with the reply's version (one push in flight per worker). The server
applies each push at its current version and answers with what to learn with next, or ``None`` to stop.
A transport only has to carry :class:`~algorithms.infra.messages.Join`, :class:`~algorithms.infra.messages.Push` and
replies: :class:`PipeLink` does it over a process pipe.
"""

from __future__ import annotations

import time
from typing import Protocol

from algorithms.config import RunConfig
from algorithms.infra.messages import Push, RecordRows, Reply, from_wire, record_update, to_wire
from algorithms.schedules.global_model import GlobalModel
from algorithms.schedules.worker import RolloutWorker
from algorithms.updates import rule_for


class ServerLink(Protocol):
    """A worker's end of the transport to its server."""

    def join(self) -> Reply | None: ...

    def push(self, push: Push) -> Reply | None: ...


def parameter_server_worker(rollouts: RolloutWorker, server: ServerLink) -> None:
    """Join, then sync -> learn -> push the gradient tagged with its version, until the server answers ``None``."""
    reply = server.join()
    while reply is not None:
        rollouts.model.flat_params.copy_(from_wire(reply.params))
        episodes, stats = rollouts.compute_gradient()
        collector_state = rollouts.collector.state_dict() if reply.send_collector_state else None
        reply = server.push(Push(rollouts.worker, reply.version, to_wire(rollouts.model.flat_grads), stats, episodes,
                                 rollouts.steps, collector_state, time.monotonic(), rollouts.evaluation_statistics()))


class ParameterServer:
    """The server half of the protocol, whatever carries its messages.

    Each :class:`~algorithms.infra.messages.Push` is applied at the current version (or dropped as too stale),
    its episodes and update recorded; every join or push is answered with the parameters to learn with next
    (``delay`` versions behind, if set), or ``None`` once the budget is spent or a stop was requested.
    """

    def __init__(self, cfg: RunConfig, record: RecordRows, global_model: GlobalModel):
        self.cfg, self.record, self.global_model = cfg, record, global_model
        self.stop = False
        self.rule = rule_for(cfg, global_model.target())

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
        counters = self.global_model.counters
        self.global_model.keep_statistics(push.obs_statistics)
        for episode in push.episodes:
            self.record.episode(push.worker, counters.env_steps + episode.steps_into_rollout, episode.ret,
                                episode.length)
        row = self.rule.update(counters, push.worker, push.stats, push.version_at_sync, push.steps,
                               from_wire(push.gradient))
        record_update(self.record, push.worker, row)
