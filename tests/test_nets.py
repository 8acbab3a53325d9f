"""The CNN torsos for image observations, uint8 frames through rollout and model, and Atari-style episode
accounting from RecordEpisodeStatistics."""

from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from gymnasium.wrappers import RecordEpisodeStatistics

from algorithms.core.nets import ActorCritic
from algorithms.core.rollout import Collector
from algorithms.updates.actor_critic import compute_gradients

ATARI = spaces.Box(0, 255, (4, 84, 84), np.uint8)
MINATAR = spaces.Box(0, 1, (7, 10, 10), np.uint8)
ACTIONS = spaces.Discrete(6)
# Parameters of each torso (convolutions, then the linear layer), as SB3's NatureCNN has for 4x84x84 frames.
NATURE_PARAMS = (4 * 32 * 8 * 8 + 32) + (32 * 64 * 4 * 4 + 64) + (64 * 64 * 3 * 3 + 64) + (64 * 7 * 7 * 512 + 512)
MINATAR_PARAMS = (7 * 16 * 3 * 3 + 16) + (16 * 8 * 8 * 128 + 128)
HEAD_PARAMS = {"nature": 512 * 6 + 6 + 512 + 1, "minatar": 128 * 6 + 6 + 128 + 1}


def cnn_model(observation_space: spaces.Box, **kwargs) -> ActorCritic:
    """A model without orthogonal initialisation, which takes a second for the Nature torso's linear layer."""
    torch.manual_seed(0)
    return ActorCritic(observation_space, ACTIONS, [64, 64], ortho_init=False, **kwargs)


def frames(observation_space: spaces.Box, batch: int, seed: int = 0) -> np.ndarray:
    high = int(observation_space.high.max())
    return np.random.default_rng(seed).integers(0, high + 1, (batch, *observation_space.shape), dtype=np.uint8)


@pytest.mark.parametrize("observation_space, kernel, torso_params",
                         [(ATARI, 8, NATURE_PARAMS), (MINATAR, 3, MINATAR_PARAMS)])
def test_auto_picks_the_cnn_by_frame_size_and_shares_it(observation_space, kernel, torso_params):
    model = cnn_model(observation_space)
    assert model.torso.convolutions[0].kernel_size == (kernel, kernel)
    assert sum(p.numel() for p in model.torso.parameters()) == torso_params
    logits, values = model(torch.from_numpy(frames(observation_space, 5)))
    assert logits.shape == (5, ACTIONS.n) and values.shape == (5,)


def test_separate_torsos_double_the_torso_parameters():
    shared, separate = cnn_model(ATARI), cnn_model(ATARI, share_torso=False)
    assert shared.flat_params.numel() == NATURE_PARAMS + HEAD_PARAMS["nature"]
    assert separate.flat_params.numel() == 2 * NATURE_PARAMS + HEAD_PARAMS["nature"]
    minatar = cnn_model(MINATAR, cnn="minatar", share_torso=False)
    assert minatar.flat_params.numel() == 2 * MINATAR_PARAMS + HEAD_PARAMS["minatar"]


def test_the_mlp_and_small_frames_refuse_what_they_cannot_do():
    with pytest.raises(ValueError, match="cannot be shared"):
        ActorCritic(spaces.Box(-1, 1, (4,)), ACTIONS, [64, 64], share_torso=True)
    with pytest.raises(ValueError, match="at least 36 pixels"):
        cnn_model(MINATAR, cnn="nature")


def test_uint8_frames_are_scaled_by_the_space_high():
    as_bytes = cnn_model(ATARI)
    as_floats = cnn_model(spaces.Box(0.0, 1.0, ATARI.shape, np.float32))
    assert torch.equal(as_bytes.flat_params, as_floats.flat_params)
    batch = torch.from_numpy(frames(ATARI, 3))
    for byte_out, float_out in zip(as_bytes(batch), as_floats(batch.float() / 255), strict=True):
        torch.testing.assert_close(byte_out, float_out)
    grid_model = cnn_model(MINATAR)  # MinAtar's high is 1: its 0/1 grids go in unscaled
    grid = torch.from_numpy(frames(MINATAR, 3))
    torch.testing.assert_close(grid_model(grid), grid_model(grid.float()))


def test_cnn_acting_samples_with_gumbel_max_from_the_callers_generator():
    model = cnn_model(ATARI, share_torso=False)
    obs = frames(ATARI, 8)
    actions, values = model.act(obs, np.random.default_rng(3))
    logits, expected_values = (out.detach().numpy() for out in model(torch.from_numpy(obs)))
    uniform = np.random.default_rng(3).random(logits.shape)
    np.testing.assert_array_equal(actions, np.argmax(logits - np.log(-np.log(uniform + 1e-20)), axis=1))
    np.testing.assert_array_equal(values, expected_values)
    np.testing.assert_array_equal(model.predict_values(obs), values)
    again = model.act(obs, np.random.default_rng(3))
    np.testing.assert_array_equal(again[0], actions)
    np.testing.assert_array_equal(again[1], values)
    assert actions.dtype == np.int64 and ((0 <= actions) & (actions < ACTIONS.n)).all()


def test_cnn_parameters_and_gradients_live_in_flat_buffers():
    model = cnn_model(MINATAR).share_memory()
    params = list(model.parameters())
    assert sum(p.numel() for p in params) == model.flat_params.numel() and model.flat_params.is_shared()
    assert all(p.untyped_storage().data_ptr() == model.flat_params.untyped_storage().data_ptr() for p in params)
    obs, actions = torch.from_numpy(frames(MINATAR, 16)), torch.randint(0, ACTIONS.n, (16,))
    log_probs, entropy, values = model.evaluate(obs, actions)
    (log_probs.sum() + entropy.sum() + values.sum()).backward()
    assert torch.equal(torch.cat([p.grad.reshape(-1) for p in params]), model.flat_grads)
    before = [p.detach().clone() for p in params]
    torch.optim.SGD([model.flat_params], lr=0.1).step()
    assert all(not torch.equal(old, p) for old, p in zip(before, params, strict=True))


class Grid(gym.ObservationWrapper):
    """CartPole's state as a MinAtar-like 4x10x10 uint8 grid: one channel per state variable, its bin lit."""

    SCALE = np.array([2.4, 2.0, 0.21, 2.0])

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.observation_space = spaces.Box(0, 1, (4, 10, 10), np.uint8)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        grid = np.zeros((4, 10, 10), dtype=np.uint8)
        bins = np.clip((observation / self.SCALE + 1) * 5, 0, 9).astype(int)
        grid[np.arange(4), bins, :] = 1
        return grid


def vector_env(make_env) -> SyncVectorEnv:
    return SyncVectorEnv([make_env] * 3, autoreset_mode=AutoresetMode.SAME_STEP, copy=False)


def test_uint8_frames_are_stored_as_bytes_and_learned_from():
    envs = vector_env(lambda: Grid(gym.make("CartPole-v1", max_episode_steps=12)))
    torch.manual_seed(0)
    model = ActorCritic(envs.single_observation_space, envs.single_action_space, [64, 64])
    collector = Collector(envs, n_steps=8, sampling_seed=0)
    collector.reset(seed=0)
    for _ in range(3):
        collector.collect(model)
    rollout = collector.rollout
    assert rollout.obs.dtype == torch.uint8 and set(rollout.obs.unique().tolist()) == {0, 1}
    truncated = rollout.truncated.bool()
    assert truncated.any() and (rollout.truncation_values[truncated] != 0).all()
    algo = SimpleNamespace(gamma=0.99, gae_lambda=1.0, normalize_advantage=False, value_coef=0.5, entropy_coef=0.01,
                           max_grad_norm=0.5)
    stats = compute_gradients(model, rollout, algo)
    assert np.isfinite(stats["grad_norm"]) and model.flat_grads.abs().sum() > 0


class LifeLoss(gym.Wrapper):
    """Ends a training episode every ``life_steps`` steps, as a lost life does, while the game goes on. As the
    episodic-life wrapper does, the reset after a lost life steps the game on (pushing left) rather than
    resetting it; when that step ends the game, it starts the next and reports the ended one in its info."""

    def __init__(self, env: gym.Env, life_steps: int):
        super().__init__(env)
        self.life_steps, self.steps, self.game_over, self.games_ended_in_reset = life_steps, 0, True, 0

    def reset(self, *, seed=None, options=None):
        if self.game_over:
            return self.env.reset(seed=seed, options=options)
        obs, _, terminated, truncated, info = self.env.step(0)
        if not (terminated or truncated):
            return obs, info
        self.games_ended_in_reset += 1
        obs, reset_info = self.env.reset()
        return obs, {**reset_info, "episode": info["episode"]}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        self.game_over = terminated or truncated
        return obs, reward, terminated or self.steps % self.life_steps == 0, truncated, info


def test_episodes_from_info_are_whole_games_not_lives():
    envs = vector_env(lambda: LifeLoss(RecordEpisodeStatistics(gym.make("CartPole-v1")), life_steps=5))
    torch.manual_seed(0)
    model = ActorCritic(envs.single_observation_space, envs.single_action_space, [16])
    collector = Collector(envs, n_steps=8, sampling_seed=0, episodes_from_info=True)
    collector.reset(seed=0)
    episodes, training_ends = [], 0
    for _ in range(25):
        episodes += collector.collect(model)
        training_ends += int(collector.rollout.terminated.sum())
    games = [env.env for env in envs.envs]
    recorded = sorted(zip((g for game in games for g in game.return_queue),
                          (g for game in games for g in game.length_queue), strict=True))
    assert len(episodes) >= 10 and training_ends > 2 * len(episodes)
    assert any(env.games_ended_in_reset for env in envs.envs)
    assert sorted((episode.ret, episode.length) for episode in episodes) == recorded
    assert all(episode.ret == episode.length for episode in episodes)  # CartPole's reward is 1 a step


def test_cnn_orthogonal_init_has_sb3_gains():
    torch.manual_seed(0)
    model = ActorCritic(MINATAR, ACTIONS, [64, 64])
    convolution, linear = model.torso.convolutions[0], model.torso.linear
    for layer, gain in ((convolution, 2**0.5), (linear, 2**0.5), (model.policy_head, 0.01), (model.value_head, 1.0)):
        weight = layer.weight.detach().flatten(1)  # every layer here has fewer rows than columns
        torch.testing.assert_close(weight @ weight.T, gain**2 * torch.eye(len(weight)), atol=1e-5, rtol=1e-5)
        assert not layer.bias.any()
