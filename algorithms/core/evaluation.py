"""Evaluation episodes, played apart from training, as papers and benchmarks report returns.

A schedule hands the run record an :class:`EvalSnapshot` (the policy's flat parameters and the observation
normalizer's statistics at an env step) when :func:`next_evaluation_at` says one is due; the record has an
:class:`Evaluator` play ``eval.episodes`` episodes with it. An evaluation:

- plays on envs of its own, reset with the seed ``seed + EVAL_SEED_OFFSET`` at every evaluation, so that every
  evaluation of a run starts the same episodes and the differences between evaluations are the policy's;
- takes the most probable action, or the Gaussian mean (``eval.deterministic``), or samples with a generator of
  its own seeded the same way;
- normalizes observations with the training statistics frozen at the snapshot, and sums raw rewards;
- plays Atari as papers score it: whole games (a lost life does not end the episode) and the unclipped score;
- touches no training state: not the envs, counters or normalizers, nor any random generator (the model is
  built under ``torch.random.fork_rng``), so a run gives the same training record with or without evaluation.

With ``eval.num_envs`` envs, env ``i`` plays ``(episodes + i) // num_envs`` of the episodes (as Stable-Baselines3's
``evaluate_policy``), so that short episodes are not over-represented.
"""

from __future__ import annotations

import copy
import math
import time
from typing import NamedTuple

import numpy as np
import torch
from gymnasium import spaces

from algorithms.config import EnvConfig, EvalConfig, RunConfig
from algorithms.core.envs import ObservationNormalizer, make_vector_env
from algorithms.core.model import build_model
from algorithms.infra.messages import EvalSnapshot, from_wire, to_wire
from algorithms.infra.shared_memory import ObsStatistics

# Evaluation envs' seeds sit this far above the run's seed, apart from every training env's (seed + worker
# offsets + env steps); MinAtar seeds numpy's RandomState, which takes seeds below 2**32.
EVAL_SEED_OFFSET = 1_000_000_000


class EvalResult(NamedTuple):
    returns: list[float]  # each episode's undiscounted raw return (Atari: the game score), in the order they ended
    lengths: list[int]
    seconds: float


def next_evaluation_at(env_steps: int, eval_cfg: EvalConfig, total_env_steps: int) -> float:
    """The env step at which the evaluation after ``env_steps`` is due: the next multiple of ``eval.interval``
    (none when it is null), the end of the run at the latest; infinity once the run has reached its end, or
    when evaluation is off (``eval.episodes=0``)."""
    if eval_cfg.episodes == 0 or env_steps >= total_env_steps:
        return math.inf
    if eval_cfg.interval is None:
        return total_env_steps
    return min((env_steps // eval_cfg.interval + 1) * eval_cfg.interval, total_env_steps)


def take_snapshot(params: torch.Tensor, env_steps: int, version: int,
                  obs_statistics: ObservationNormalizer | ObsStatistics | None) -> EvalSnapshot:
    """An :class:`EvalSnapshot` of ``params`` with the observation statistics training normalizes with (a
    collector's normalizer, or those a worker published; None when observations are not normalized)."""
    return EvalSnapshot(int(env_steps), int(version), to_wire(params),
                        obs_statistics.state_dict() if obs_statistics is not None else None)


def evaluation_env_config(env_cfg: EnvConfig) -> EnvConfig:
    """The env config evaluation plays: Atari without episodic lives or reward clipping, the rest unchanged."""
    env_cfg = copy.deepcopy(env_cfg)
    env_cfg.atari.episodic_life = False
    env_cfg.atari.clip_rewards = False
    return env_cfg


class Evaluator:
    """Plays evaluation episodes for one run; its envs and model are built once and reused."""

    def __init__(self, cfg: RunConfig):
        self.eval_cfg, self.seed = cfg.eval, cfg.seed + EVAL_SEED_OFFSET
        num_envs = min(cfg.eval.num_envs, cfg.eval.episodes)
        self.envs = make_vector_env(evaluation_env_config(cfg.env), num_envs)
        self.targets = np.array([(cfg.eval.episodes + i) // num_envs for i in range(num_envs)])
        with torch.random.fork_rng(devices=[]):  # build_model seeds torch's generator: keep training's intact
            self.model = build_model(cfg, self.envs)
        space = self.envs.single_action_space
        self.action_bounds = (space.low, space.high) if isinstance(space, spaces.Box) else None
        self.obs_normalizer = (ObservationNormalizer(self.model.observation_shape, cfg.env.clip_obs)
                               if cfg.env.normalize_obs else None)

    def evaluate(self, snapshot: EvalSnapshot) -> EvalResult:
        start = time.monotonic()
        self.model.flat_params.copy_(from_wire(snapshot.params))
        if self.obs_normalizer is not None:
            assert snapshot.obs_normalizer is not None  # training normalizes observations as evaluation does
            self.obs_normalizer.load_state_dict(snapshot.obs_normalizer)
        returns, lengths = self._play(np.random.default_rng(self.seed))
        return EvalResult(returns, lengths, time.monotonic() - start)

    def _play(self, rng: np.random.Generator) -> tuple[list[float], list[int]]:
        obs, _ = self.envs.reset(seed=self.seed)
        counts = np.zeros_like(self.targets)
        episode_returns = np.zeros(len(self.targets))
        episode_lengths = np.zeros(len(self.targets), dtype=np.int64)
        returns, lengths = [], []
        while (counts < self.targets).any():
            actions, _ = self.model.act(self._observe(obs), rng, deterministic=self.eval_cfg.deterministic)
            if self.action_bounds is not None:
                actions = np.clip(actions, *self.action_bounds)
            obs, rewards, terminated, truncated, _ = self.envs.step(actions)
            episode_returns += rewards
            episode_lengths += 1
            for i in np.flatnonzero(terminated | truncated):
                if counts[i] < self.targets[i]:
                    returns.append(float(episode_returns[i]))
                    lengths.append(int(episode_lengths[i]))
                    counts[i] += 1
                episode_returns[i], episode_lengths[i] = 0.0, 0
        return returns, lengths

    def _observe(self, obs: np.ndarray) -> np.ndarray:
        """What the model takes, as training's collector gives it: frames as uint8, the rest as float32."""
        if self.obs_normalizer is not None:
            return self.obs_normalizer(obs, update=False)
        return obs if obs.dtype == np.uint8 else obs.astype(np.float32)

    def close(self) -> None:
        self.envs.close()
