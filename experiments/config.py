"""Hydra's config schema, :class:`Config`, and :func:`validate`, the rules that types cannot express.

``Config`` is the algorithms' :class:`~algorithms.config.RunConfig` plus what only the harness reads
(logging, resuming, the CPU budget), registered in Hydra's ConfigStore as ``base_config``; the YAML files
in ``conf/`` only set values. :func:`validate` rejects anything else that makes a config unusable, naming
the key and the value. It holds the rules every schedule shares; which (algo, mode, backend) combinations
exist, and what each of them accepts beyond those rules, is decided by its entry in ``algorithms.SCHEDULES``
(this module names no schedule). ``experiments.composition`` turns what Hydra and OmegaConf refuse while
composing (``algo.lr=fast``, unknown keys and groups) into the same :class:`ConfigError`, and
:func:`exit_on_config_error` prints any of them as one line with exit status 2.
"""

from __future__ import annotations

import difflib
import importlib
import math
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from typing import Any, cast

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from algorithms import NoSuchSchedule, Schedule, schedule_for
from algorithms.config import EnvConfig, RunConfig

OPTIMIZERS = ("rmsprop", "adam", "rmsprop_tf")
LR_SCHEDULES = ("constant", "linear")
STALENESS_LR_SCALINGS = ("none", "inverse")
VECTOR_BACKENDS = ("sync", "async")
START_METHODS = ("spawn", "forkserver", "fork")
ACTIVATIONS = ("tanh", "relu")
CNN_TORSOS = ("auto", "nature", "minatar")
NATURE_MIN_SIDE = 36  # algorithms.core.nets' (spelt out so that validating does not import torch)
WANDB_MODES = ("online", "offline", "disabled")
WANDB_FALLBACKS = ("offline", "fail")
NONFINITE_POLICIES = ("fail", "skip_update")
# What each env.preprocessing takes, as its error message says it.
PREPROCESSING_TAKES = {
    "none": "ids of envs with flat observations",
    "minatar": "MinAtar ids such as MinAtar/Breakout-v1",
    "atari": "ALE ids such as ALE/Pong-v5",
}


@dataclass
class WandbConfig:
    mode: str = "offline"
    project: str = "sync-vs-async-rl"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    fallback: str = "offline"  # when the W&B mode cannot start (no API key, no network): offline or fail


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class Config(RunConfig):
    """A run's whole config: what its algorithm reads, and what the harness around it reads."""

    logger: LoggerConfig = field(default_factory=LoggerConfig)
    log_interval: int = 2_000  # env steps between rows of metrics.csv
    return_window: int = 20  # episodes behind return_mean in metrics.csv
    # Warn when the value loss or grad norm exceeds this times its scale: its recent median, or blowup_floor where
    # the median is below it (null: off). A healthy CartPole run reached 385x its median while the median was
    # above 1 (value-loss jumps at truncations); with a nearly exact critic (a median of 1e-7 to 0.4) an ordinary
    # failed episode gives value losses and gradient norms up to about 1.5e4 in the demo's runs, which the floor
    # keeps below the bar (1e6); a reward of 1e4 once gives a value loss near 1e8.
    blowup_factor: float | None = 10_000.0
    blowup_window: int = 200  # updates behind that median
    blowup_floor: float = 100.0  # the smallest scale: a value below blowup_factor x this is never a blow-up
    resume: bool = False
    # resume=true continues only the same experiment (experiments.admission); this accepts a changed one, recorded.
    resume_accept_changes: bool = False
    quiet: bool = False  # no progress bar: for sweeps
    cpu_budget: int | None = None  # CPUs a parallel sweep may keep busy (null: all of this machine's)


def register_configs() -> None:
    ConfigStore.instance().store(name="base_config", node=Config)


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and the value."""

    def __init__(self, key: str, value: Any, reason: str):
        self.key, self.value, self.reason = key, value, reason
        self.job: str | None = None  # the overrides of the multirun job it was found in, when it was
        super().__init__(f"{key}={value!r}: {reason}")


def _require(ok: bool, key: str, value: Any, reason: str) -> None:
    if not ok:
        raise ConfigError(key, value, reason)


def _one_of(key: str, value: Any, choices: tuple[str, ...]) -> None:
    _require(value in choices, key, value, f"must be one of {', '.join(choices)}")


def _positive_int(key: str, value: int) -> None:
    _require(value >= 1, key, value, "must be a positive integer")


@cache
def env_spaces(env_yaml: str) -> tuple[Any, Any]:
    """Observation and action spaces of the env an EnvConfig (as YAML, to be hashable) makes, preprocessing
    included (builds the env once, then caches)."""
    from algorithms.core.envs import make_env

    env = make_env(cast(EnvConfig, OmegaConf.create(env_yaml)))  # a DictConfig reads as its dataclass
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def _validate_atari(env: DictConfig) -> None:
    atari = env.atari
    _require(atari.noop_max >= 0, "env.atari.noop_max", atari.noop_max, "must be >= 0 (0: no no-op starts)")
    for key in ("frame_skip", "screen_size", "frame_stack"):
        _positive_int(f"env.atari.{key}", atari[key])
    if env.preprocessing != "atari":
        return
    _require(env.max_episode_steps is None, "env.max_episode_steps", env.max_episode_steps,
             "would count emulator frames below the Atari preprocessing; set env.kwargs.max_num_frames_per_episode "
             "(frames, 108000 by default) instead")
    frameskip = env.kwargs.get("frameskip")
    _require(frameskip is None, "env.kwargs.frameskip", frameskip,
             "the Atari preprocessing repeats each action; set env.atari.frame_skip instead")


def _registered_id(env: DictConfig) -> str:
    """env.id without gymnasium's optional "module:" part (importing the module registers the env)."""
    import gymnasium as gym

    from algorithms.core.envs import register_ale_envs, register_minatar_envs

    module, _, name = env.id.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ConfigError("env.id", env.id, f"cannot import module {module!r}: {error}") from error
    # MinAtar's and the ALE's ids are registered only when something asks for them: a process that trains
    # CartPole imports neither. An ALE id is then told which preprocessing it needs whatever env.preprocessing says.
    if env.preprocessing == "minatar" or name.lower().startswith("minatar/"):
        register_minatar_envs()
    if name not in gym.registry:
        register_ale_envs()
    ids = tuple(gym.registry.keys())
    if name not in ids:
        close = difflib.get_close_matches(name, ids, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ConfigError("env.id", env.id, f"is not a registered gymnasium environment{hint}")
    return name


def _validate_env(env: DictConfig) -> None:
    from gymnasium import spaces

    from algorithms.core.envs import preprocessing_for

    _one_of("env.preprocessing", env.preprocessing, tuple(PREPROCESSING_TAKES))
    _validate_atari(env)
    if env.max_episode_steps is not None:
        _positive_int("env.max_episode_steps", env.max_episode_steps)
    needed = preprocessing_for(_registered_id(env))
    _require(env.preprocessing == needed, "env.preprocessing", env.preprocessing,
             f"takes {PREPROCESSING_TAKES[env.preprocessing]}; env.id={env.id} needs env.preprocessing={needed}")
    try:
        observation_space, action_space = env_spaces(OmegaConf.to_yaml(env, resolve=True))
    except Exception as error:  # missing extras, bad kwargs: the env's own words say why
        raise ConfigError("env.id", env.id, f"cannot be created: {error}") from error
    _require(
        isinstance(action_space, spaces.Discrete | spaces.Box) and len(action_space.shape or ()) <= 1,
        "env.id", env.id,
        f"has action space {action_space}; the actor-critic supports Discrete and 1-D Box actions",
    )
    flat = isinstance(observation_space, spaces.Box) and len(observation_space.shape) == 1
    _require(
        env.preprocessing != "none" or flat,
        "env.id", env.id,
        f"has observation space {observation_space}; the MLP actor-critic takes 1-D Box observations "
        "(the CNN takes the frames of env.preprocessing=atari or minatar)",
    )
    for key in ("clip_obs", "clip_reward"):
        _require(env[key] > 0, f"env.{key}", env[key], "must be > 0")


def _validate_nonfinite(algo: DictConfig) -> None:
    _one_of("algo.on_nonfinite", algo.on_nonfinite, NONFINITE_POLICIES)
    _positive_int("algo.max_nonfinite_skips", algo.max_nonfinite_skips)


def _validate_algo(algo: DictConfig) -> None:
    for key in ("num_workers", "num_envs", "n_steps", "epochs", "minibatches"):
        _positive_int(f"algo.{key}", algo[key])
    _require(math.isfinite(algo.clip_range) and algo.clip_range > 0, "algo.clip_range", algo.clip_range,
             "must be a finite number > 0")
    if algo.target_kl is not None:
        _require(algo.target_kl > 0, "algo.target_kl", algo.target_kl, "must be > 0 (null: never stop early)")
    _require(math.isfinite(algo.lr) and algo.lr > 0, "algo.lr", algo.lr, "must be a finite number > 0")
    _require(0 < algo.gamma <= 1, "algo.gamma", algo.gamma, "must lie in (0, 1]")
    _require(0 <= algo.gae_lambda <= 1, "algo.gae_lambda", algo.gae_lambda, "must lie in [0, 1]")
    for key in ("value_coef", "entropy_coef"):
        _require(math.isfinite(algo[key]) and algo[key] >= 0, f"algo.{key}", algo[key],
                 "must be a finite number >= 0")
    if algo.max_grad_norm is not None:
        _require(algo.max_grad_norm > 0, "algo.max_grad_norm", algo.max_grad_norm,
                 "must be > 0 (null disables clipping)")
    _one_of("algo.optimizer", algo.optimizer, OPTIMIZERS)
    _one_of("algo.lr_schedule", algo.lr_schedule, LR_SCHEDULES)
    _require(0 <= algo.rmsprop_alpha < 1, "algo.rmsprop_alpha", algo.rmsprop_alpha, "must lie in [0, 1)")
    _require(algo.optimizer_eps > 0, "algo.optimizer_eps", algo.optimizer_eps, "must be > 0")
    _one_of("algo.vector_backend", algo.vector_backend, VECTOR_BACKENDS)
    _one_of("algo.start_method", algo.start_method, START_METHODS)
    _require(algo.max_restarts >= 0, "algo.max_restarts", algo.max_restarts, "must be >= 0")
    staleness = algo.staleness
    _require(staleness.delay >= 0, "algo.staleness.delay", staleness.delay, "must be >= 0")
    if staleness.max is not None:
        _require(staleness.max >= 0, "algo.staleness.max", staleness.max, "must be >= 0 (null: never drop)")
    _one_of("algo.staleness.lr_scaling", staleness.lr_scaling, STALENESS_LR_SCALINGS)


def _validate_torso(model: DictConfig, env: DictConfig) -> None:
    """The model's torso against the observations of ``env.preprocessing``: flat for none, else uint8 frames."""
    _one_of("model.cnn", model.cnn, CNN_TORSOS)
    if env.preprocessing == "none":
        _require(model.share_torso is not True, "model.share_torso", model.share_torso,
                 "flat observations get separate actor and critic MLPs; only a CNN torso (env.preprocessing=atari "
                 "or minatar) can be shared")
        return
    _require(not env.normalize_obs, "env.normalize_obs", env.normalize_obs,
             f"the frames of env.preprocessing={env.preprocessing} are scaled to [0, 1] inside the model; running "
             "normalization would store them as float32 and normalize each pixel")
    side = env.atari.screen_size if env.preprocessing == "atari" else 10  # MinAtar's grids are 10x10
    _require(model.cnn != "nature" or side >= NATURE_MIN_SIDE, "model.cnn", model.cnn,
             f"needs frames of at least {NATURE_MIN_SIDE}x{NATURE_MIN_SIDE} pixels; env.preprocessing="
             f"{env.preprocessing} gives {side}x{side} (use auto or minatar)")


def _schedule_of(cfg: DictConfig) -> Schedule:
    """The run's entry in ``algorithms.SCHEDULES``; a combination without one is refused naming the key to change."""
    try:
        return schedule_for(cfg.algo.name, cfg.algo.mode, cfg.backend)
    except NoSuchSchedule as error:
        raise ConfigError(error.key, error.value, error.reason) from error


def _validate_for_schedule(schedule: Schedule, cfg: DictConfig) -> None:
    """What the run's schedule declares beyond the rules every schedule shares (its settings, its transport's):
    the first problem its entry's checks find."""
    # the composed config has RunConfig's fields (its schema), so the checks read it as one
    problem = next(schedule.problems(cast(RunConfig, cfg)), None)
    if problem is not None:
        raise ConfigError(problem.key, problem.value, problem.reason)


def _validate_eval(cfg: DictConfig) -> None:
    evaluation = cfg.eval
    if evaluation.interval is not None:
        _positive_int("eval.interval", evaluation.interval)
    _require(evaluation.episodes >= 0, "eval.episodes", evaluation.episodes, "must be >= 0 (0: no evaluation)")
    _positive_int("eval.num_envs", evaluation.num_envs)


def _validate_device(cfg: DictConfig, schedule: Schedule) -> None:
    """A device torch can name; an accelerator only for a schedule whose learner is one process, and only
    where there is one (``auto`` falls back to the CPU instead)."""
    device = cfg.device
    _require(re.fullmatch(r"cpu|auto|cuda(:\d+)?", device) is not None, "device", device,
             "must be cpu, cuda, cuda:N or auto")
    if device in ("cpu", "auto"):
        return
    _require(schedule.learner_on_device, "device", device,
             f"algo={schedule.algo} algo.mode={schedule.mode} backend={schedule.backend} learns in worker processes "
             "that stay on the CPU; a device serves single, a2c vector and the local a3c parameter server")
    import torch  # only for an accelerator: validation stays torch-free otherwise

    index = int(device.partition(":")[2] or 0)
    _require(torch.cuda.is_available() and index < torch.cuda.device_count(), "device", device,
             f"this machine has {torch.cuda.device_count()} CUDA devices (device=auto uses one when there is)")


def validate(cfg: DictConfig) -> None:
    """Check every rule that types alone cannot express; raise ConfigError naming the key and value."""
    schedule = _schedule_of(cfg)
    _validate_algo(cfg.algo)
    _validate_nonfinite(cfg.algo)
    _require(math.isfinite(cfg.algo.worker_stall_s) and cfg.algo.worker_stall_s > 0, "algo.worker_stall_s",
             cfg.algo.worker_stall_s, "must be a finite number of seconds > 0")
    # Before the env is built: a schedule's own rules are cheap, and may assume the shared ones above hold.
    _validate_for_schedule(schedule, cfg)
    _validate_env(cfg.env)
    if cfg.blowup_factor is not None:
        _require(math.isfinite(cfg.blowup_factor) and cfg.blowup_factor > 1, "blowup_factor", cfg.blowup_factor,
                 "must be a finite number > 1 (null: no warning)")
        _require(math.isfinite(cfg.blowup_floor) and cfg.blowup_floor >= 0, "blowup_floor", cfg.blowup_floor,
                 "must be a finite number >= 0")
    for key in ("total_env_steps", "log_interval", "checkpoint_interval", "return_window", "torch_threads",
                "blowup_window"):
        _positive_int(key, cfg[key])
    _require(cfg.seed >= 0, "seed", cfg.seed, "must be >= 0")
    if cfg.cpu_budget is not None:
        _positive_int("cpu_budget", cfg.cpu_budget)
    _validate_device(cfg, schedule)
    _validate_eval(cfg)
    _require(len(cfg.model.hidden_sizes) >= 1 and all(h >= 1 for h in cfg.model.hidden_sizes),
             "model.hidden_sizes", list(cfg.model.hidden_sizes), "must be a non-empty list of positive sizes")
    _one_of("model.activation", cfg.model.activation, ACTIVATIONS)
    _validate_torso(cfg.model, cfg.env)
    _one_of("logger.wandb.mode", cfg.logger.wandb.mode, WANDB_MODES)
    _one_of("logger.wandb.fallback", cfg.logger.wandb.fallback, WANDB_FALLBACKS)


@contextmanager
def exit_on_config_error() -> Iterator[None]:
    """Print a ConfigError raised inside as one line naming key and value, and exit with status 2."""
    try:
        yield
    except ConfigError as error:
        where = f" (job {error.job})" if error.job else ""
        print(f"error: invalid config{where}: {error}", file=sys.stderr)
        sys.exit(2)


def exit_on_invalid(cfg: DictConfig) -> None:
    """Validate, and on failure print one line naming key and value and exit with status 2."""
    with exit_on_config_error():
        validate(cfg)


register_configs()
