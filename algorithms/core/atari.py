"""The Atari training stack of Mnih et al. (2015), as rl-baselines3-zoo trains A2C on it, from gymnasium's wrappers.

Bottom to top, over an ALE env made without frame skipping:

1. gymnasium's ``AtariPreprocessing``: up to ``noop_max`` no-ops at reset, each action repeated ``frame_skip``
   frames with the last two max-pooled (sprites flicker between frames), grayscale, resized to ``screen_size``.
2. ``RecordEpisodeStatistics``: below everything that changes rewards or episode ends, so that
   ``info["episode"]`` carries the game's own score and length (in agent steps) once, when the game is over.
3. What only training sees: :class:`EpisodicLife` (a lost life ends the training episode, not the game),
   :class:`FireReset`, and the sign of each reward.
4. ``FrameStackObservation``: the last ``frame_stack`` frames, channels first, uint8.

The vector envs run in gymnasium's same-step autoreset mode, which calls ``reset()`` right after every
terminated step, lost lives included; that is why :class:`EpisodicLife` continues the game there. A game
that ends inside a ``reset()`` (a no-op or FIRE step finishing it) has its statistics in the info that
``reset()`` returns, because the step's ``final_info`` has already been taken.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, SupportsFloat, cast

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation, RecordEpisodeStatistics, TransformReward

from algorithms.config import AtariConfig

if TYPE_CHECKING:
    from ale_py.env import AtariEnv

NOOP = 0  # the ALE's action 0 in every game


def wrap_atari(env: gym.Env, atari: AtariConfig) -> gym.Env:
    """The stack above over ``env`` (an ALE env with ``frameskip=1``), configured by an AtariConfig."""
    env = AtariPreprocessing(env, noop_max=atari.noop_max, frame_skip=atari.frame_skip,
                             screen_size=atari.screen_size, terminal_on_life_loss=False, grayscale_obs=True)
    env = RecordEpisodeStatistics(env)
    if atari.episodic_life:
        env = EpisodicLife(env)
    if atari.fire_reset and "FIRE" in ale_env(env).get_action_meanings():
        env = FireReset(env)
    if atari.clip_rewards:
        env = TransformReward(env, np.sign)  # type: ignore[arg-type]  # numpy's ufunc overloads omit SupportsFloat
    return FrameStackObservation(env, atari.frame_stack)


def ale_env(env: gym.Env) -> AtariEnv:
    """The ALE env under ``env``'s wrappers."""
    return cast("AtariEnv", env.unwrapped)


def restart_game(env: gym.Env, ended: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Reset ``env`` from inside a ``reset()`` after a step that ``ended``, keeping that game's statistics."""
    obs, info = env.reset()
    if "episode" in ended:
        info["episode"] = ended["episode"]
    return obs, info


class EpisodicLife(gym.Wrapper):
    """A lost life ends the training episode; ``reset()`` then continues the game with a no-op step.

    Bootstrapping through a lost life would value it as if nothing happened. Only a game over, or a seeded
    reset (the start of a run or a resume), starts a new game.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.lives = 0
        self.game_over = True

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_over = terminated or truncated
        lives = ale_env(self.env).ale.lives()
        # Some games show 0 lives a few frames before the game ends; their last life ends with the game.
        life_lost = 0 < lives < self.lives
        self.lives = lives
        return obs, reward, terminated or life_lost, truncated, info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        if self.game_over or seed is not None:
            obs, info = self.env.reset(seed=seed, options=options)
        else:
            obs, _, terminated, truncated, info = self.env.step(NOOP)
            if terminated or truncated:
                obs, info = restart_game(self.env, info)
        self.lives = ale_env(self.env).ale.lives()
        self.game_over = False
        return obs, info


class FireReset(gym.Wrapper):
    """Presses FIRE after every reset, for games that stand still until it is pressed (Breakout serves the ball).

    A policy that has stopped pressing FIRE would otherwise stand still until the ALE's frame limit.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.fire = ale_env(env).get_action_meanings().index("FIRE")

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        _, info = self.env.reset(seed=seed, options=options)
        obs, _, terminated, truncated, fire_info = self.env.step(self.fire)
        info.update(fire_info)
        if terminated or truncated:
            return restart_game(self.env, info)
        return obs, info
