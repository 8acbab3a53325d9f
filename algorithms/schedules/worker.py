"""A worker's side of every schedule: its own envs, collector and model copy, which collect rollouts and
compute gradients with the run's update rule but never apply them.
"""

from __future__ import annotations

from typing import Any

from algorithms.core.envs import make_vector_env
from algorithms.core.model import build_model
from algorithms.core.rollout import start_collector
from algorithms.infra.messages import Episode
from algorithms.updates.actor_critic import compute_gradients


class LocalLearner:
    """A worker's own envs, collector and model copy: it computes gradients and never applies them.

    It starts at ``env_steps`` (0, or where a restarted or resumed worker joins the run), continuing the
    collector's saved state when given one.
    """

    def __init__(self, cfg: Any, worker: int, env_steps: int, collector_state: dict[str, Any] | None = None):
        self.algo, self.worker = cfg.algo, worker
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

    def learn(self) -> tuple[list[Episode], dict[str, float]]:
        """Collect one rollout with the local model and leave its gradient in ``model.flat_grads``."""
        episodes = self.collector.collect(self.model)
        return episodes, compute_gradients(self.model, self.collector.rollout, self.algo)

    def close(self) -> None:
        self.envs.close()
