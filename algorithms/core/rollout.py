"""Fixed-size rollout storage and its collection, shared by every schedule.

Storage is allocated once as numpy arrays with torch views over the same memory, so per step the env's
outputs and the actor's numpy outputs are written into place, and the learner reads the whole batch
as tensors without conversion. uint8 observations (image frames) stay uint8 there, a quarter of float32's
size; the model scales them. Acting runs without autograd; the learner recomputes log-probabilities and
values for the whole batch with autograd once per update.

Episodes: by default an episode ends at every done, with the collector's own sums of raw rewards and
steps. With ``episodes_from_info`` (Atari), a done may be a lost life while the recorded episode is the
whole game: it is what gymnasium's ``RecordEpisodeStatistics``, wrapped below the episodic-life wrapper,
reports in the vector env's info at a game over (its score and length; see :func:`game_overs`).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import VectorEnv

from algorithms.config import RunConfig
from algorithms.core.envs import ObservationNormalizer, RewardScaler, restore_envs, save_envs, worker_seed
from algorithms.core.nets import ActorCritic
from algorithms.infra.messages import Episode


@dataclass
class Rollout:
    """One rollout of ``T`` steps of ``N`` envs; the tensors share memory with the collector."""

    obs: torch.Tensor  # [T, N, *obs_shape], the observation each action was taken in
    actions: torch.Tensor  # [T, N] discrete, [T, N, action_dim] continuous (before clipping)
    rewards: torch.Tensor  # [T, N], after reward scaling when enabled
    values: torch.Tensor  # [T, N], V(obs) when acting
    terminated: torch.Tensor  # [T, N], 1.0 where the step ended the episode for real
    truncated: torch.Tensor  # [T, N], 1.0 where a time limit cut the episode
    truncation_values: torch.Tensor  # [T, N], V(final obs) where truncated, else 0
    next_value: torch.Tensor  # [N], V of the observation after the last step


@dataclass
class Unrolls:
    """Rollouts as an off-policy learner takes them (IMPALA): ``T`` steps of ``N`` envs, the envs of several unrolls
    side by side, each with the log-probabilities of its actions under the policy that acted (the behaviour policy)
    and the observation that follows its last step, whose value the learner computes itself."""

    obs: torch.Tensor  # [T, N, *obs_shape]
    actions: torch.Tensor  # [T, N] discrete, [T, N, action_dim] continuous
    rewards: torch.Tensor  # [T, N]
    terminated: torch.Tensor  # [T, N]
    truncated: torch.Tensor  # [T, N]
    truncation_values: torch.Tensor  # [T, N], V(final obs) where truncated, by the behaviour policy's critic
    behaviour_log_probs: torch.Tensor  # [T, N], log mu(a_t | x_t)
    behaviour_versions: torch.Tensor  # [T, N] int64, the policy version (mu's) that acted each step
    bootstrap_obs: torch.Tensor  # [N, *obs_shape], the observation after the last step

    def copy(self) -> Unrolls:
        return Unrolls(**{name: getattr(self, name).clone() for name in UNROLL_FIELDS})


UNROLL_FIELDS = tuple(spec.name for spec in fields(Unrolls))


def join_unrolls(unrolls: list[Unrolls]) -> Unrolls:
    """Unrolls side by side, their envs concatenated (in a new tensor: the parts may be reused at once)."""
    return Unrolls(**{name: torch.cat([getattr(unroll, name) for unroll in unrolls],
                                      dim=0 if name == "bootstrap_obs" else 1) for name in UNROLL_FIELDS})


def game_overs(info: dict[str, Any]) -> list[tuple[np.intp, float, int]]:
    """(env, return, length) of each episode ``RecordEpisodeStatistics`` reported in a vector env step's
    ``info``. In same-step autoreset mode an ended env's last info moves to ``info["final_info"]`` and the
    info of the reset that follows takes its place; a game can end in either (Atari's reset after a lost life
    steps the game on). Both are batched over the envs: ``"episode"`` holds arrays ``"r"``, ``"l"`` and
    ``"t"``, and ``"_episode"`` marks the envs that carry one."""
    ended = []
    for source in (info.get("final_info", {}), info):
        if "episode" in source:
            stats = source["episode"]
            ended += [(i, stats["r"][i], stats["l"][i]) for i in np.flatnonzero(source["_episode"])]
    return ended


class Collector:
    """Steps a vector env with a model ``n_steps`` at a time into preallocated storage.

    ``episodes_from_info``: record episodes from ``RecordEpisodeStatistics`` in the env's info (see the
    module's docstring) rather than at every done.
    """

    def __init__(
        self,
        envs: VectorEnv,
        n_steps: int,
        sampling_seed: int,
        obs_normalizer: ObservationNormalizer | None = None,
        reward_scaler: RewardScaler | None = None,
        episodes_from_info: bool = False,
    ):
        self.envs = envs
        self.episodes_from_info = episodes_from_info
        self.n_steps, self.num_envs = n_steps, envs.num_envs
        self.obs_normalizer, self.reward_scaler = obs_normalizer, reward_scaler
        self.rng = np.random.default_rng(sampling_seed)
        action_space = envs.single_action_space
        self.discrete = isinstance(action_space, spaces.Discrete)
        if isinstance(action_space, spaces.Box):  # else Discrete
            self.action_low, self.action_high = action_space.low, action_space.high
        observation_space = envs.single_observation_space
        assert observation_space.shape is not None  # a Box
        action_shape = action_space.shape if isinstance(action_space, spaces.Box) else ()
        size = (n_steps, self.num_envs)
        keeps_uint8 = observation_space.dtype == np.uint8 and obs_normalizer is None
        self._obs = np.zeros(size + observation_space.shape, dtype=np.uint8 if keeps_uint8 else np.float32)
        self._actions = np.zeros(size + action_shape, dtype=np.int64 if self.discrete else np.float32)
        self._rewards = np.zeros(size, dtype=np.float32)
        self._terminated = np.zeros(size, dtype=np.float32)
        self._truncated = np.zeros(size, dtype=np.float32)
        self._truncation_values = np.zeros(size, dtype=np.float32)
        self._values = np.zeros(size, dtype=np.float32)
        self._next_value = np.zeros(self.num_envs, dtype=np.float32)
        self.rollout = Rollout(
            obs=torch.from_numpy(self._obs),
            actions=torch.from_numpy(self._actions),
            rewards=torch.from_numpy(self._rewards),
            values=torch.from_numpy(self._values),
            terminated=torch.from_numpy(self._terminated),
            truncated=torch.from_numpy(self._truncated),
            truncation_values=torch.from_numpy(self._truncation_values),
            next_value=torch.from_numpy(self._next_value),
        )
        self.episode_returns = np.zeros(self.num_envs, dtype=np.float64)
        self.episode_lengths = np.zeros(self.num_envs, dtype=np.int64)
        self.current_obs: np.ndarray | None = None
        self._envs_savable = True  # until pickling them fails once

    @property
    def started(self) -> bool:
        """Whether the envs are mid-episode: after :meth:`reset`, or after loading a state that saved them."""
        return self.current_obs is not None

    def reset(self, seed: int) -> None:
        """Start fresh episodes in every env; env ``j`` is seeded with ``seed + j``."""
        obs, _ = self.envs.reset(seed=seed)
        self.current_obs = self._normalize(obs)
        self.episode_returns[:] = 0.0
        self.episode_lengths[:] = 0
        if self.reward_scaler is not None:
            self.reward_scaler.discounted_return[:] = 0.0

    def _normalize(self, obs: np.ndarray, update: bool = True) -> np.ndarray:
        if self.obs_normalizer is None:
            return obs.astype(self._obs.dtype, copy=False)
        return self.obs_normalizer(obs, update=update)

    def collect(self, model: ActorCritic) -> list[Episode]:
        """Fill :attr:`rollout` with ``n_steps`` steps of every env; return the episodes that ended."""
        steps = self.steps(model)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value

    def steps(self, model: ActorCritic) -> Generator[int, None, list[Episode]]:
        """:meth:`collect` a step at a time: yields the index of each step after the first before taking it, so that
        the caller may give ``model`` new parameters between steps (in-flight updates); returns the episodes."""
        if self.current_obs is None:
            raise RuntimeError("call reset(seed) before collect()")
        episodes: list[Episode] = []
        for t in range(self.n_steps):
            if t:
                yield t
            self._obs[t] = self.current_obs
            actions, self._values[t] = model.act(self.current_obs, self.rng)
            self._actions[t] = actions
            if not self.discrete:
                actions = np.clip(actions, self.action_low, self.action_high)
            next_obs, rewards, terminated, truncated, info = self.envs.step(actions)
            self.episode_returns += rewards
            self.episode_lengths += 1
            dones = terminated | truncated
            self._terminated[t] = terminated
            self._truncated[t] = truncated
            self._truncation_values[t] = 0.0
            if dones.any():
                episodes += self._end_episodes(dones, info, (t + 1) * self.num_envs)
                cut = np.flatnonzero(truncated & ~terminated)
                if len(cut):
                    final_obs = np.stack([info["final_obs"][i] for i in cut])
                    self._truncation_values[t, cut] = model.predict_values(self._normalize(final_obs, update=False))
            if self.reward_scaler is not None:
                rewards = self.reward_scaler(rewards, dones)
            self._rewards[t] = rewards
            self.current_obs = self._normalize(next_obs)
        self._next_value[:] = model.predict_values(self.current_obs)
        return episodes

    def _end_episodes(self, dones: np.ndarray, info: dict[str, Any], steps_into_rollout: int) -> list[Episode]:
        """The episodes that ended at this step, whose sums in progress restart."""
        if self.episodes_from_info:
            ended = game_overs(info)
        else:
            ended = [(i, self.episode_returns[i], self.episode_lengths[i]) for i in np.flatnonzero(dones)]
        envs = [i for i, _, _ in ended]
        self.episode_returns[envs] = 0.0
        self.episode_lengths[envs] = 0
        return [Episode(float(ret), int(length), steps_into_rollout) for _, ret, length in ended]

    @property
    def steps_per_collect(self) -> int:
        return self.n_steps * self.num_envs

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to continue sampling, normalizing and, when the envs can be saved, the
        episodes in progress exactly where they are (``envs`` is None when they cannot)."""
        return {
            "rng": self.rng.bit_generator.state,
            "obs_normalizer": self.obs_normalizer.state_dict() if self.obs_normalizer else None,
            "reward_scaler": self.reward_scaler.state_dict() if self.reward_scaler else None,
            "episodes_in_progress": {"returns": self.episode_returns.copy(), "lengths": self.episode_lengths.copy()},
            "envs": self._saved_envs(),
        }

    def _saved_envs(self) -> dict[str, Any] | None:
        envs = save_envs(self.envs) if self._envs_savable and self.started else None
        self._envs_savable = self._envs_savable and envs is not None
        if envs is None:
            return None
        assert self.current_obs is not None  # saved only once started
        return {"envs": envs, "current_obs": self.current_obs.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`; the episodes in progress too when it saved the envs (then
        :attr:`started`), else :meth:`reset` must start fresh ones."""
        self.rng.bit_generator.state = state["rng"]
        if self.obs_normalizer is not None:
            self.obs_normalizer.load_state_dict(state["obs_normalizer"])
        if self.reward_scaler is not None:
            self.reward_scaler.load_state_dict(state["reward_scaler"])
        if (saved := state.get("envs")) is not None:
            restore_envs(self.envs, saved["envs"])
            self.current_obs = saved["current_obs"].copy()
            self.episode_returns[:] = state["episodes_in_progress"]["returns"]
            self.episode_lengths[:] = state["episodes_in_progress"]["lengths"]


@torch.no_grad()
def behaviour_log_probs(rollout: Rollout, model: ActorCritic, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """log pi(a_t | x_t) of steps ``start`` to ``stop`` of ``rollout`` under ``model``, [stop - start, N]: one
    batched pass, the same computation the learner makes, so that an on-policy ratio is exactly 1."""
    obs, actions = rollout.obs[start:stop], rollout.actions[start:stop]
    with torch.no_grad():
        log_probs, _, _ = model.evaluate(obs.flatten(0, 1), actions.flatten(0, 1))
    return log_probs.view(obs.shape[:2])


def unroll_from(collector: Collector, model: ActorCritic, version: int, log_probs: torch.Tensor | None = None,
                versions: torch.Tensor | None = None) -> Unrolls:
    """The unroll ``collector`` just collected with ``model``, the parameters of ``version``, with its behaviour
    log-probabilities; an unroll whose parameters changed between steps gives each step's ``log_probs`` and
    ``versions``."""
    rollout = collector.rollout
    if log_probs is None or versions is None:
        log_probs = behaviour_log_probs(rollout, model)
        versions = torch.full(rollout.rewards.shape, version, dtype=torch.int64)
    return Unrolls(rollout.obs, rollout.actions, rollout.rewards, rollout.terminated, rollout.truncated,
                   rollout.truncation_values, log_probs, versions, torch.from_numpy(collector.current_obs))


def reset_seed(cfg: RunConfig, worker: int, num_envs: int, env_steps: int) -> int:
    """Seed for a worker's envs and sampling when (re)starting at ``env_steps``: fresh runs use the worker seed."""
    return worker_seed(cfg.seed, worker, num_envs) + env_steps


def build_collector(cfg: RunConfig, envs: VectorEnv, worker: int, env_steps: int = 0) -> Collector:
    """A collector over ``envs`` with the normalizers the env config asks for, sampling with the seed of a
    worker (re)starting at ``env_steps`` (a resumed one then loads its saved generator). Atari's episodes are
    the games its envs' ``RecordEpisodeStatistics`` reports, not the lives its training episodes end at."""
    env_cfg, num_envs, obs_shape = cfg.env, envs.num_envs, envs.single_observation_space.shape
    assert obs_shape is not None  # a Box
    obs_normalizer = (ObservationNormalizer(obs_shape, env_cfg.clip_obs)
                      if env_cfg.normalize_obs else None)
    reward_scaler = (RewardScaler(num_envs, cfg.algo.gamma, env_cfg.clip_reward)
                     if env_cfg.normalize_reward else None)
    return Collector(envs, cfg.algo.n_steps, reset_seed(cfg, worker, num_envs, env_steps),
                     obs_normalizer, reward_scaler, episodes_from_info=env_cfg.preprocessing == "atari")


def start_collector(cfg: RunConfig, envs: VectorEnv, worker: int, env_steps: int = 0,
                    state: dict[str, Any] | None = None) -> Collector:
    """A collector ready to collect: continuing a checkpoint's ``state`` when given (its episodes in progress
    too when the state saved the envs), else in fresh episodes seeded for ``env_steps``."""
    collector = build_collector(cfg, envs, worker, env_steps)
    if state is not None:
        collector.load_state_dict(state)
    if not collector.started:
        collector.reset(reset_seed(cfg, worker, envs.num_envs, env_steps))
    return collector
