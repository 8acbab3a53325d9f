"""The pixel envs, real ones: MinAtar grids and the Atari stack as the vector envs of a run see them."""

from __future__ import annotations

from typing import NamedTuple

import gymnasium as gym
import numpy as np
import pytest

import algorithms.core.envs
from algorithms.core.envs import make_env, make_vector_env
from experiments.config import ConfigError, validate
from tests.conftest import compose_config

MINATAR_GAMES = ["breakout", "space_invaders", "asterix", "freeway", "seaquest"]
MAX_STEPS = 3000  # a random policy ends a game of Breakout in about 130 steps, Space Invaders in about 450
NOOP = 0


def env_config(name: str, *overrides: str):
    return compose_config(f"env={name}", *overrides).env


@pytest.mark.parametrize("game", MINATAR_GAMES)
def test_minatar_observations_are_channels_first_binary_uint8(game):
    env = make_env(env_config(f"minatar_{game}"))
    channels = env.unwrapped.game.state_shape()[2]
    assert env.observation_space == gym.spaces.Box(0, 1, (channels, 10, 10), np.uint8)
    env.action_space.seed(0)
    obs, _ = env.reset(seed=0)
    for _ in range(20):
        assert obs.shape == (channels, 10, 10) and obs.dtype == np.uint8
        assert set(np.unique(obs)) <= {0, 1}
        obs, *_ = env.step(env.action_space.sample())
    env.close()


def test_atari_observations_are_stacks_of_the_last_four_84x84_frames():
    env = make_env(env_config("atari_breakout"))
    assert env.observation_space == gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    previous, _ = env.reset(seed=0)
    obs, *_ = env.step(NOOP)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    np.testing.assert_array_equal(obs[:-1], previous[1:])  # oldest frame first; the newest one is appended
    env.close()


@pytest.mark.parametrize("name", ["minatar_breakout", "atari_pong"])
def test_spawned_env_processes_register_the_game_ids_themselves(name):
    envs = make_vector_env(env_config(name), 1, backend="async")
    try:
        obs, _ = envs.reset(seed=0)
        assert obs.shape == (1, *envs.single_observation_space.shape) and obs.dtype == np.uint8
    finally:
        envs.close()


class GameScores(gym.Wrapper):
    """Under the whole Atari stack: the raw score of every game started, the last one still in progress."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.scores: list[float] = []

    def reset(self, **kwargs):
        self.scores.append(0.0)
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.scores[-1] += reward
        return obs, reward, terminated, truncated, info


class Game(NamedTuple):
    scores: list[float]  # the raw score of each game started, as GameScores saw it
    episode: dict  # final_info["episode"] of the step that ended the game, for env 0
    agent_steps: int
    lives: list[int]  # the lives at the start, and after each lost life, as reset() left them
    training_rewards: list[float]
    stats_before_game_over: bool  # whether any training episode before the game over carried episode stats


def play_one_game(monkeypatch, name: str) -> Game:
    """One game with random actions in a run's vector env (same-step autoreset), with GameScores underneath."""
    probes: list[GameScores] = []
    make_registered_env = algorithms.core.envs.make_registered_env

    def probed(env_cfg, **forced_kwargs):
        probes.append(GameScores(make_registered_env(env_cfg, **forced_kwargs)))
        return probes[-1]

    monkeypatch.setattr(algorithms.core.envs, "make_registered_env", probed)
    envs = make_vector_env(env_config(name), 1)
    rng = np.random.default_rng(0)
    _, info = envs.reset(seed=0)
    lives, rewards, stats_early = [int(info["lives"][0])], [], False
    for step in range(1, MAX_STEPS + 1):
        _, reward, terminated, truncated, info = envs.step(rng.integers(envs.single_action_space.n, size=1))
        rewards.append(float(reward[0]))
        assert not truncated[0]
        if terminated[0] and not info["final_info"]["lives"][0]:
            envs.close()
            return Game(probes[0].scores, info["final_info"]["episode"], step, lives, rewards, stats_early)
        if terminated[0]:
            stats_early |= "episode" in info["final_info"]
            lives.append(int(info["lives"][0]))
    raise AssertionError(f"no game over in {MAX_STEPS} steps")


def test_a_lost_life_ends_the_training_episode_but_not_the_game(monkeypatch):
    game = play_one_game(monkeypatch, "atari_breakout")
    assert game.lives == [5, 4, 3, 2, 1]  # each reset after a lost life kept the lives: the game went on
    assert len(game.scores) == 2  # one game played through, the next one started only at the game over
    assert not game.stats_before_game_over
    assert game.episode["r"][0] == game.scores[0]


def test_the_game_over_reports_the_unclipped_score_and_the_whole_length(monkeypatch):
    game = play_one_game(monkeypatch, "atari_space_invaders")
    assert set(game.training_rewards) <= {-1.0, 0.0, 1.0}
    assert game.episode["r"][0] == game.scores[0] > sum(game.training_rewards)  # aliens are worth 5 to 30
    # The length also counts the steps resets take: FIRE after each reset, a no-op after each lost life.
    lost_lives = len(game.lives) - 1
    assert game.episode["l"][0] == game.agent_steps + 1 + 2 * lost_lives


def test_a_game_that_ends_inside_a_reset_reports_its_statistics_there():
    def first_life_lost(*overrides: str) -> tuple[int, dict]:
        """Steps of never pressing FIRE until the first ball FireReset served is lost; that step's info."""
        envs = make_vector_env(env_config("atari_breakout", *overrides), 1)
        envs.reset(seed=0)
        for step in range(1, 150):
            _, _, terminated, _, info = envs.step(np.array([NOOP]))
            if terminated[0]:
                envs.close()
                return step, info
        raise AssertionError("no life lost in 150 steps")

    steps, info = first_life_lost()
    # The same game again, cut by the ALE's frame limit inside the no-op step that reset() takes to go on.
    frame_limit = info["final_info"]["episode_frame_number"][0] + 2
    steps_again, info = first_life_lost(f"+env.kwargs.max_num_frames_per_episode={frame_limit}")
    assert steps_again == steps and "episode" not in info["final_info"]
    assert info["_episode"][0] and info["episode"]["l"][0] == steps + 2  # and FIRE before, the no-op after


@pytest.mark.parametrize("fire_reset, lives_after", [(True, 0), (False, 5)])
def test_fire_reset_serves_the_ball_after_every_reset(fire_reset, lives_after):
    env = make_env(env_config("atari_breakout", f"env.atari.fire_reset={fire_reset}"))
    env.reset(seed=0)
    for _ in range(150):  # never pressing FIRE: only FireReset puts a ball in play, after each lost life too
        _, _, terminated, _, info = env.step(NOOP)
        if "episode" in info:
            break
        if terminated:
            env.reset()
    assert env.unwrapped.ale.lives() == lives_after
    env.close()


def test_each_game_starts_after_a_random_number_of_noops():
    def frames_at_start(noop_max: int) -> list[int]:
        # Without episodic life every reset starts a new game; without FIRE no frames but the no-ops pass.
        env = make_env(env_config("atari_breakout", "env.atari.episodic_life=false", "env.atari.fire_reset=false",
                                  f"env.atari.noop_max={noop_max}"))
        env.reset(seed=0)
        frames = [env.unwrapped.ale.getEpisodeFrameNumber()]
        for _ in range(7):
            env.reset()
            frames.append(env.unwrapped.ale.getEpisodeFrameNumber())
        env.close()
        return frames

    with_noops = frames_at_start(30)
    assert all(1 <= frames <= 30 for frames in with_noops) and len(set(with_noops)) > 1
    assert frames_at_start(0) == [0] * 8


@pytest.mark.parametrize(
    "env, override, key",
    [
        ("cartpole", "env.preprocessing=pixels", "env.preprocessing"),
        ("cartpole", "env.preprocessing=atari", "env.preprocessing"),
        ("cartpole", "env.id=ALE/Pong-v5", "env.preprocessing"),
        ("atari_pong", "env.preprocessing=none", "env.preprocessing"),
        ("atari_pong", "env.id=MinAtar/Breakout-v1", "env.preprocessing"),
        ("minatar_breakout", "env.id=ALE/Breakout-v5", "env.preprocessing"),
        ("minatar_breakout", "env.id=MinAtar/Breakout-v9", "env.id"),
        ("minatar_breakout", "env.normalize_obs=true", "env.normalize_obs"),
        ("atari_pong", "env.normalize_obs=true", "env.normalize_obs"),
        ("atari_pong", "env.atari.noop_max=-1", "env.atari.noop_max"),
        ("atari_pong", "env.atari.frame_skip=0", "env.atari.frame_skip"),
        ("atari_pong", "env.atari.screen_size=0", "env.atari.screen_size"),
        ("atari_pong", "env.atari.frame_stack=0", "env.atari.frame_stack"),
        ("atari_pong", "env.max_episode_steps=27000", "env.max_episode_steps"),
        ("atari_pong", "+env.kwargs.frameskip=4", "env.kwargs.frameskip"),
    ],
)
def test_validation_rejects_pixel_settings_that_cannot_work(env, override, key):
    with pytest.raises(ConfigError) as error:
        validate(compose_config("algo=single", f"env={env}", override))
    assert error.value.key == key
    assert str(error.value).startswith(f"{key}=") and "\n" not in str(error.value)
