"""A worker's side of every schedule: its own envs, collector and model copy, which collect rollouts and compute
gradients with the run's update rule but never apply them."""

from __future__ import annotations

from typing import Any

from algorithms.config import RunConfig
from algorithms.core.envs import make_vector_env
from algorithms.core.model import build_model
from algorithms.core.rollout import start_collector
from algorithms.infra.messages import Episode
from algorithms.infra.timing import TIMINGS
from algorithms.updates import rule_for


class RolloutWorker:
    """One worker's envs, collector and model copy.

    It starts at ``env_steps`` (0, or where a restarted or resumed worker joins the run), continuing the
    collector's saved state when given one.
    """

    def __init__(self, cfg: RunConfig, worker: int, env_steps: int, collector_state: dict[str, Any] | None = None):
        self.algo, self.worker = cfg.algo, worker
        self.rule = rule_for(cfg)
        self.envs = make_vector_env(cfg.env, self.algo.num_envs, self.algo.vector_backend)
        try:
            self.model = build_model(cfg, self.envs)
            self.collector = start_collector(cfg, self.envs, worker, env_steps, collector_state)
        except BaseException:
            self.envs.close()
            raise

    @property
    def steps(self) -> int:
        """Env steps of one rollout."""
        return self.collector.steps_per_collect

    def collect(self) -> list[Episode]:
        """One rollout with the local model, into the collector's buffers; the episodes that ended in it."""
        with TIMINGS.part("rollout"):
            return self.collector.collect(self.model)

    def compute_gradient(self) -> tuple[list[Episode], dict[str, float]]:
        """Collect one rollout and leave the rule's gradient in ``model.flat_grads``: the schedules that send one
        gradient per rollout (a parameter server's pushes, a synchronous round)."""
        episodes = self.collect()
        with TIMINGS.part("gradient"):
            (stats,) = self.rule.gradients(self.model, self.collector.rollout)  # such a schedule takes one step
        return episodes, stats

    def evaluation_statistics(self) -> dict[str, Any] | None:
        """Worker 0's observation statistics (``env.normalize_obs``), which the run keeps for evaluating the
        global parameters as worker 0 sees observations."""
        normalizer = self.collector.obs_normalizer
        return normalizer.state_dict() if normalizer is not None and self.worker == 0 else None

    def close(self) -> None:
        self.envs.close()
