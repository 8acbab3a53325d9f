"""A user's own env, as a first comparison brings one: ``env.id=tests.toy_envs:Maze-v0``.

Importing the module registers the env; gymnasium imports the module named before the colon, in every process
that makes the env (a sweep's jobs, their worker processes), so the command line needs nothing else.
"""

import gymnasium as gym
import numpy as np
from gymnasium import spaces

LENGTH = 5  # cells of the corridor; the agent starts in the first and is paid 1 for reaching the last
MAX_STEPS = 20


class Maze(gym.Env):
    """A corridor of ``LENGTH`` cells: step left (0) or right (1); reaching the last cell pays 1 and ends the
    episode. Observations are the one-hot cell. A random policy reaches the end about half the time within
    ``MAX_STEPS``; a learned one always does, in ``LENGTH - 1`` steps."""

    observation_space = spaces.Box(0.0, 1.0, (LENGTH,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self) -> None:
        self.cell = 0

    def _observation(self) -> np.ndarray:
        observation = np.zeros(LENGTH, np.float32)
        observation[self.cell] = 1.0
        return observation

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.cell = 0
        return self._observation(), {}

    def step(self, action):
        self.cell = min(max(self.cell + (1 if action == 1 else -1), 0), LENGTH - 1)
        reached = self.cell == LENGTH - 1
        return self._observation(), float(reached), reached, False, {}


if "Maze-v0" not in gym.registry:
    gym.register("Maze-v0", entry_point=Maze, max_episode_steps=MAX_STEPS)
