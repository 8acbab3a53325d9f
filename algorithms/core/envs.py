"""Environment construction shared by every schedule.

Every worker steps a gymnasium vector env (``num_envs`` copies, in-process or one subprocess each) in
``SAME_STEP`` autoreset mode: when an episode ends, ``step`` returns the first observation of the next
episode and puts the last one in ``info["final_obs"]``, which the rollout needs to bootstrap through
time-limit truncations. Observation and reward normalization are running statistics owned by the
learner (not env wrappers), so episode statistics always see raw rewards and the statistics travel
in checkpoints.

Preprocessing (``env.preprocessing``): ``none`` makes the registered env as it is; ``minatar`` turns MinAtar's
10x10xC boolean grids into channels-first uint8; ``atari`` builds the Atari stack of ``algorithms.core.atari``
(4x84x84 uint8 frame stacks). Image observations stay uint8 until the model scales them. MinAtar's and the
ALE's ids are registered by :func:`make_env` itself, because spawned processes start with gymnasium's only.

Saving: the envs of an in-process vector env are pickled whole (simulator state, generator and the
wrappers' counters, such as the time limit's), so that a resumed single-process run continues its
episodes exactly; envs in subprocesses or whose simulators cannot be pickled (Box2D, MuJoCo, ALE) are
not saved, and a resume starts fresh episodes there.

Seeding: env ``j`` of worker ``w`` is seeded with ``seed + w * num_envs + j``, so with one env per
worker the seed is ``seed + worker`` and no two envs in a run share a seed.
"""

from __future__ import annotations

import importlib
import logging
import pickle
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from types import ModuleType
from typing import Any, cast

import gymnasium as gym
import numpy as np
from gymnasium.utils import EzPickle
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorEnv

from algorithms.config import EnvConfig
from algorithms.core.atari import wrap_atari
from algorithms.infra.processes import process_context


def worker_seed(seed: int, worker: int, num_envs: int) -> int:
    """Seed of the first env of ``worker``; its env ``j`` gets this plus ``j``."""
    return seed + worker * num_envs


def make_env(env_cfg: EnvConfig) -> gym.Env:
    """One env from an EnvConfig: the registered env (id, kwargs, optional episode-step limit), then the
    preprocessing that ``env_cfg.preprocessing`` names."""
    return ENV_BUILDERS[env_cfg.preprocessing](env_cfg)


def make_registered_env(env_cfg: EnvConfig, **forced_kwargs: Any) -> gym.Env:
    """The env as registered, made with ``env_cfg.kwargs`` (``forced_kwargs`` win) and the optional step limit."""
    kwargs = {**env_cfg.kwargs, **forced_kwargs}
    if env_cfg.max_episode_steps is not None:
        kwargs["max_episode_steps"] = env_cfg.max_episode_steps
    return gym.make(env_cfg.id, **kwargs)


def make_minatar_env(env_cfg: EnvConfig) -> gym.Env:
    register_minatar_envs()
    return ChannelsFirst(make_registered_env(env_cfg))


def make_atari_env(env_cfg: EnvConfig) -> gym.Env:
    register_ale_envs()
    # The preprocessing repeats each action; the ALE's own frame skip would multiply with it.
    return wrap_atari(make_registered_env(env_cfg, frameskip=1), env_cfg.atari)


ENV_BUILDERS = {"none": make_registered_env, "minatar": make_minatar_env, "atari": make_atari_env}
# The preprocessing an env id needs, by the entry point it is registered with.
PREPROCESSING_BY_ENTRY_POINT = {"minatar.gym:BaseEnv": "minatar", "ale_py.env:AtariEnv": "atari"}
MINATAR_PROBE_ID = "MinAtar/Breakout-v1"  # registered with all the others, v0 and v1


def register_minatar_envs() -> None:
    """MinAtar's ids, once per process (registering them again warns). MinAtar imports matplotlib and seaborn
    for its renderer, seconds of CPU in every process that steps its games: they load on the first render."""
    if MINATAR_PROBE_ID not in gym.registry:
        with _plotting_deferred(minatar_modules=("minatar.environment", "minatar.gym")):
            import minatar.gym

        minatar.gym.register_envs()


class _DeferredModule:
    """Stands for a module until one of its attributes is read, then imports it."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(importlib.import_module(self._name), attribute)


PLOTTING = {"plt": "matplotlib.pyplot", "colors": "matplotlib.colors", "sns": "seaborn"}


def _cannot_render_filter(record: logging.LogRecord) -> bool:
    """Drops MinAtar's warning that it cannot render, which the stand-ins make untrue."""
    return not record.getMessage().startswith("Cannot import")


@contextmanager
def _plotting_deferred(minatar_modules: tuple[str, ...]) -> Iterator[None]:
    """Import MinAtar with matplotlib and seaborn unavailable (it catches that, and logs that it cannot render),
    then give its modules stand-ins that import them when a render first uses them."""
    hidden = {name: sys.modules.get(name) for name in ("matplotlib", "seaborn")}
    # None: importing the name raises ImportError (typeshed's sys.modules holds modules only)
    cast("dict[str, ModuleType | None]", sys.modules).update(dict.fromkeys(hidden))
    root = logging.getLogger()
    root.addFilter(_cannot_render_filter)
    try:
        yield
    finally:
        root.removeFilter(_cannot_render_filter)
        for name, module in hidden.items():
            if module is None:
                del sys.modules[name]
            else:
                sys.modules[name] = module
    for minatar_module in minatar_modules:
        for alias, name in PLOTTING.items():
            setattr(sys.modules[minatar_module], alias, _DeferredModule(name))


def register_ale_envs() -> None:
    """The ALE's ids (``ALE/Pong-v5``, ``PongNoFrameskip-v4``, ...): importing ale_py registers them."""
    import ale_py

    gym.register_envs(ale_py)


def preprocessing_for(env_id: str) -> str:
    """The ``env.preprocessing`` a registered env id needs: ``atari``, ``minatar`` or ``none``."""
    entry_point = gym.spec(env_id).entry_point  # a string, or the env's creator itself
    return PREPROCESSING_BY_ENTRY_POINT.get(entry_point, "none") if isinstance(entry_point, str) else "none"


class ChannelsFirst(gym.ObservationWrapper):
    """MinAtar's (10, 10, C) boolean grids as (C, 10, 10) uint8, the layout and dtype of the Atari frames."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        assert env.observation_space.shape is not None  # a Box
        height, width, channels = env.observation_space.shape
        self.observation_space = gym.spaces.Box(0, 1, (channels, height, width), np.uint8)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(observation.transpose(2, 0, 1), dtype=np.uint8)


def make_vector_env(env_cfg: EnvConfig, num_envs: int, backend: str = "sync",
                    start_method: str = "forkserver") -> VectorEnv:
    """``num_envs`` copies of the env in lockstep; ``backend="async"`` runs each in a subprocess started with
    ``start_method``."""
    env_fns = [partial(make_env, env_cfg) for _ in range(num_envs)]
    if backend == "async":
        process_context(start_method)  # a forkserver with the run's preloads, shared with its workers
        return AsyncVectorEnv(env_fns, autoreset_mode=AutoresetMode.SAME_STEP, context=start_method)
    # copy=False: the collector copies observations into its own storage before the next step.
    return SyncVectorEnv(env_fns, autoreset_mode=AutoresetMode.SAME_STEP, copy=False)


def save_envs(envs: VectorEnv) -> list[bytes] | None:
    """Each env of ``envs`` pickled, or None when they are in subprocesses or cannot be pickled. An env that
    pickles as ``EzPickle`` (Box2D, MuJoCo, ALE) pickles its constructor's arguments, not its state."""
    if not isinstance(envs, SyncVectorEnv) or any(isinstance(env.unwrapped, EzPickle) for env in envs.envs):
        return None
    try:
        return [pickle.dumps(env) for env in envs.envs]
    except Exception:  # simulators refuse in many ways: TypeError, PicklingError, Box2D's AssertionError
        return None


def restore_envs(envs: VectorEnv, saved: list[bytes]) -> None:
    """Put the envs :func:`save_envs` saved in place of ``envs``' own. In same-step autoreset mode a
    ``SyncVectorEnv`` keeps no state between steps outside its envs."""
    if not isinstance(envs, SyncVectorEnv) or len(saved) != envs.num_envs:
        raise ValueError(f"{len(saved)} saved envs cannot replace the envs of {envs}")
    for env in envs.envs:
        env.close()
    envs.envs = [pickle.loads(blob) for blob in saved]


class RunningMeanStd:
    """Mean and variance over a stream of batches (parallel-variance update of Chan et al.)."""

    def __init__(self, shape: tuple[int, ...] = ()):
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        self.count = 1e-4

    def update(self, batch: np.ndarray) -> None:
        batch_mean, batch_var, batch_count = batch.mean(axis=0), batch.var(axis=0), batch.shape[0]
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.var = m2 / total
        self.count = total

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.copy(), "var": self.var.copy(), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean, self.var, self.count = state["mean"].copy(), state["var"].copy(), state["count"]


class ObservationNormalizer:
    """(obs - mean) / std, clipped, with statistics updated from every observed batch."""

    def __init__(self, shape: tuple[int, ...], clip: float, epsilon: float = 1e-8):
        self.stats = RunningMeanStd(shape)
        self.clip, self.epsilon = clip, epsilon

    def __call__(self, obs: np.ndarray, update: bool = True) -> np.ndarray:
        if update:
            self.stats.update(obs)
        normalized = (obs - self.stats.mean) / np.sqrt(self.stats.var + self.epsilon)
        return np.clip(normalized, -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        return self.stats.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stats.load_state_dict(state)


class RewardScaler:
    """Divides rewards by the running std of the discounted return (Stable-Baselines3's VecNormalize).
    Its state holds the discounted returns in progress, so that a resumed run scales as it would have."""

    def __init__(self, num_envs: int, gamma: float, clip: float, epsilon: float = 1e-8):
        self.stats = RunningMeanStd(())
        self.discounted_return = np.zeros(num_envs, dtype=np.float64)
        self.gamma, self.clip, self.epsilon = gamma, clip, epsilon

    def __call__(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        self.discounted_return = self.discounted_return * self.gamma + rewards
        self.stats.update(self.discounted_return)
        self.discounted_return[dones] = 0.0
        scaled = rewards / np.sqrt(self.stats.var + self.epsilon)
        return np.clip(scaled, -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        return {**self.stats.state_dict(), "discounted_return": self.discounted_return.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stats.load_state_dict(state)
        if "discounted_return" in state:  # absent from checkpoints of older versions
            self.discounted_return = state["discounted_return"].copy()
