"""A real env with a real bug, for failure tests: a CartPole that raises on its 300th step.

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
