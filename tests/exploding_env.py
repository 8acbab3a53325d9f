"""Real envs with real bugs, for failure tests: a CartPole that raises on its 300th step, one whose 100th reward is NaN.

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


class NaNRewardCartPole(CartPoleEnv):
    """A CartPole whose reward is NaN on its 100th step (a simulator that produces a NaN once)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.steps = 0

    def step(self, action):
        self.steps += 1
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, float("nan") if self.steps == NAN_REWARD_STEP else reward, terminated, truncated, info


if "NaNRewardCartPole-v0" not in gym.registry:
    gym.register("NaNRewardCartPole-v0", entry_point=NaNRewardCartPole, max_episode_steps=500)
