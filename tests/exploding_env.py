"""Real envs with real bugs, for failure tests: CartPoles that raise on a step, or give one NaN or huge reward.

Importing the module registers it, so ``env.id=tests.exploding_env:ExplodingCartPole-v0`` works from
the command line (gymnasium imports the module named before the colon).
"""

import gymnasium as gym
from gymnasium.envs.classic_control import CartPoleEnv

FAILING_STEP = 300


class ExplodingCartPole(CartPoleEnv):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.steps = 0

    def step(self, action):
        self.steps += 1
        if self.steps == FAILING_STEP:
            raise RuntimeError("simulator diverged")
        return super().step(action)


if "ExplodingCartPole-v0" not in gym.registry:
    gym.register("ExplodingCartPole-v0", entry_point=ExplodingCartPole, max_episode_steps=500)


NAN_REWARD_STEP = 100


SPIKE_STEP, SPIKE_REWARD = 1500, 1e4


class OddRewardCartPole(CartPoleEnv):
    """A CartPole whose reward is ``odd_reward`` once, on step ``odd_step`` (a simulator glitch)."""

    odd_step: int
    odd_reward: float

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.steps = 0

    def step(self, action):
        self.steps += 1
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, self.odd_reward if self.steps == self.odd_step else reward, terminated, truncated, info


class NaNRewardCartPole(OddRewardCartPole):
    odd_step, odd_reward = NAN_REWARD_STEP, float("nan")


class RewardSpikeCartPole(OddRewardCartPole):
    odd_step, odd_reward = SPIKE_STEP, SPIKE_REWARD


for env_class in (NaNRewardCartPole, RewardSpikeCartPole):
    if f"{env_class.__name__}-v0" not in gym.registry:
        gym.register(f"{env_class.__name__}-v0", entry_point=env_class, max_episode_steps=500)
