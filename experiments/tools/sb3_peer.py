"""Stable-Baselines3's A2C or PPO on one of our run configs: the peer that ``experiments.tools.throughput --sb3``
measures.

The peer gets what our learner gets: the same number of envs stepped in lockstep, the same hyperparameters
and optimizer (``rmsprop_tf`` is SB3's ``RMSpropTFLike``), the same network (separate MLPs; the Nature CNN;
for MinAtar the paper's torso as a features extractor, over frames already in [0, 1]), ``VecNormalize`` where the
env normalizes observations or rewards, and one torch thread.
Its envs are ours (``algorithms.core.envs.make_env``), except on Atari by default, where they are SB3's own
``AtariWrapper`` and ``VecFrameStack`` with the same settings, as its users run them (``envs_from="ours"``
leaves only the learners' difference). Its steady rate is timed past a warm-up, as ours is read from metrics
rows past the same fraction of the run. Stable-Baselines3 is a development dependency: this module imports
it when a peer is built.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from algorithms.core.envs import make_env
from algorithms.core.nets import cnn_kind, cnn_torso


def minatar_extractor() -> type:
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

    class MinAtarExtractor(BaseFeaturesExtractor):
        """The MinAtar paper's torso, as our ``model.cnn=minatar``."""

        def __init__(self, observation_space: Any):
            super().__init__(observation_space, features_dim=128)
            self.torso = cnn_torso("minatar", observation_space.shape)

        def forward(self, observations: torch.Tensor) -> torch.Tensor:
            return self.torso(observations)

    return MinAtarExtractor


def policy_for(cfg: DictConfig, observation_space: Any) -> tuple[str, dict[str, Any]]:
    """SB3's policy name and keyword arguments for our model config over ``observation_space``."""
    kwargs: dict[str, Any] = {"ortho_init": cfg.model.ortho_init}
    if cfg.algo.optimizer == "rmsprop_tf":
        from stable_baselines3.common.sb2_compat.rmsprop_tf_like import RMSpropTFLike

        kwargs.update(optimizer_class=RMSpropTFLike,
                      optimizer_kwargs={"alpha": cfg.algo.rmsprop_alpha, "eps": cfg.algo.optimizer_eps})
    if len(observation_space.shape) != 3:
        activation = {"tanh": nn.Tanh, "relu": nn.ReLU}[cfg.model.activation]
        hidden = list(cfg.model.hidden_sizes)
        return "MlpPolicy", {**kwargs, "net_arch": {"pi": hidden, "vf": hidden}, "activation_fn": activation}
    if cnn_kind(cfg.model.cnn, observation_space.shape) == "minatar":  # frames of 0s and 1s: nothing to scale
        # heads straight on the torso, as ours (SB3 adds two 64-unit layers after any extractor but its NatureCNN)
        kwargs.update(features_extractor_class=minatar_extractor(), normalize_images=False, net_arch=[])
    if cfg.model.share_torso is False:  # SB3's CnnPolicy shares one extractor unless told otherwise, as ours does
        kwargs.update(share_features_extractor=False)
    return "CnnPolicy", kwargs


def sb3_atari_envs(cfg: DictConfig) -> Any:
    """SB3's own Atari stack (``AtariWrapper``, ``VecFrameStack``) with our ``env.atari`` settings: what an SB3
    user runs. Its ``AtariWrapper`` clips rewards and ends training episodes at lost lives as ours does."""
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    from algorithms.core.envs import register_ale_envs

    register_ale_envs()
    atari = cfg.env.atari
    wrapper = {"noop_max": atari.noop_max, "frame_skip": atari.frame_skip, "screen_size": atari.screen_size,
               "terminal_on_life_loss": atari.episodic_life, "clip_reward": atari.clip_rewards}
    envs = make_atari_env(cfg.env.id, n_envs=cfg.algo.num_envs, seed=cfg.seed, wrapper_kwargs=wrapper,
                          env_kwargs={**cfg.env.kwargs, "frameskip": 1})  # the wrapper skips frames
    return VecFrameStack(envs, atari.frame_stack)


PEER_ENVS = ("native", "ours")  # SB3's own Atari stack, or ours (which leaves only the learners' difference)


def peer_envs(cfg: DictConfig, envs_from: str) -> Any:
    """The peer's vectorized envs: SB3's own Atari stack (``native``, on Atari only) or the envs our run steps
    (``ours``), under ``VecNormalize`` where our collector normalizes."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    algo, env_cfg = cfg.algo, cfg.env
    envs = (sb3_atari_envs(cfg) if envs_from == "native" and env_cfg.preprocessing == "atari"
            else DummyVecEnv([partial(make_env, env_cfg) for _ in range(algo.num_envs)]))
    if env_cfg.normalize_obs or env_cfg.normalize_reward:  # what our collector's normalizers do, the zoo's way
        from stable_baselines3.common.vec_env import VecNormalize

        envs = VecNormalize(envs, norm_obs=env_cfg.normalize_obs, norm_reward=env_cfg.normalize_reward,
                            clip_obs=env_cfg.clip_obs, clip_reward=env_cfg.clip_reward, gamma=algo.gamma)
    return envs


def build_peer(cfg: DictConfig, envs_from: str = "native") -> Any:
    """SB3's learner for the one-learner run ``cfg`` describes: its PPO for ``algo=ppo``, its A2C for ``single`` and
    ``a2c`` vector mode."""
    from stable_baselines3 import A2C, PPO

    algo, envs = cfg.algo, peer_envs(cfg, envs_from)
    policy, policy_kwargs = policy_for(cfg, envs.observation_space)
    lr = algo.lr if algo.lr_schedule == "constant" else (lambda remaining: remaining * algo.lr)
    common = dict(learning_rate=lr, n_steps=algo.n_steps, gamma=algo.gamma, gae_lambda=algo.gae_lambda,
                  ent_coef=algo.entropy_coef, vf_coef=algo.value_coef, max_grad_norm=algo.max_grad_norm,
                  normalize_advantage=algo.normalize_advantage, seed=cfg.seed, device="cpu", verbose=0)
    if algo.name == "ppo":  # SB3's value loss, like ours, has no factor 0.5; its Adam takes our eps
        return PPO(policy, envs, batch_size=algo.num_envs * algo.n_steps // algo.minibatches, n_epochs=algo.epochs,
                   clip_range=algo.clip_range, clip_range_vf=algo.clip_range if algo.clip_value else None,
                   target_kl=algo.target_kl, **common,
                   policy_kwargs={"optimizer_kwargs": {"eps": algo.optimizer_eps}, **policy_kwargs})
    return A2C(policy, envs, rms_prop_eps=algo.optimizer_eps, use_rms_prop=algo.optimizer != "adam",
               policy_kwargs=policy_kwargs, **common)


def peer_steady_rate(cfg: DictConfig, warmup: float, envs_from: str = "native") -> float:
    """Env steps per second of SB3's A2C over ``cfg.total_env_steps``, timed past the first ``warmup`` of them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.torch_threads)
    try:
        peer = build_peer(cfg, envs_from)
        warm = int(cfg.total_env_steps * warmup)
        peer.learn(total_timesteps=warm)
        started = time.perf_counter()
        peer.learn(total_timesteps=cfg.total_env_steps - warm, reset_num_timesteps=False)
        steps = peer.num_timesteps - warm
        peer.env.close()
        return steps / (time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
