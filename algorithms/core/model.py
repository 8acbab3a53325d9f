"""The worker side of learning, which every schedule shares: build the model, its optimizer and a collector,
and turn a rollout into a clipped gradient.

``single``, ``a2c`` and ``a3c`` differ only in who collects, who computes the gradient and when it is
applied; the server side (applying a gradient to the global parameters) is ``algorithms.schedules.global_model``.
Written once, these parts make the schedules' comparison a controlled experiment: with one worker and
one seed they produce identical parameters.
"""

from __future__ import annotations

import torch
from gymnasium import spaces
from gymnasium.vector import VectorEnv

from algorithms.config import RunConfig
from algorithms.core.envs import make_vector_env
from algorithms.core.nets import ActorCritic


def build_model(cfg: RunConfig, envs: VectorEnv) -> ActorCritic:
    """The actor-critic for ``envs``; its initial parameters depend on ``cfg.seed`` alone."""
    torch.manual_seed(cfg.seed)
    observation_space, action_space = envs.single_observation_space, envs.single_action_space
    # The only spaces experiments.config admits.
    assert isinstance(observation_space, spaces.Box) and isinstance(action_space, spaces.Discrete | spaces.Box)
    return ActorCritic(
        observation_space,
        action_space,
        hidden_sizes=list(cfg.model.hidden_sizes),
        activation=cfg.model.activation,
        log_std_init=cfg.model.log_std_init,
        ortho_init=cfg.model.ortho_init,
        cnn=cfg.model.cnn,
        share_torso=cfg.model.share_torso,
    )


def learner_device(cfg: RunConfig) -> torch.device:
    """Where a one-process learner's model lives: ``cfg.device``, ``auto`` being CUDA when there is one."""
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def build_spaces_model(cfg: RunConfig) -> ActorCritic:
    """The model every worker builds, from a throwaway env that only gives the spaces."""
    envs = make_vector_env(cfg.env, 1)
    try:
        return build_model(cfg, envs)
    finally:
        envs.close()


