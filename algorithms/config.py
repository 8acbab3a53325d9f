"""The typed config an algorithm receives: :class:`RunConfig` and the groups it holds.

``experiments.config`` builds its Hydra schema from these dataclasses (adding what only the harness
reads: logging, resuming, the CPU budget) and validates them; ``experiments.train`` hands an algorithm a
plain :class:`RunConfig`, so the config pickled into worker processes and Ray actors needs this package
only. The module imports nothing, so that it stays cheap wherever a config is unpickled.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

# omegaconf.MISSING: a value the YAML config groups must set (spelt out so that this module imports nothing).
MISSING: Any = "???"


@dataclass
class StalenessConfig:
    """Controlled staleness for asynchronous schedules (a3c; impala takes ``delay`` only)."""

    delay: int = 0  # act with parameters this many versions old (a3c: gradients; impala: unrolls)
    max: int | None = None  # drop gradients staler than this (null: never drop)
    lr_scaling: str = "none"  # none | inverse: step size divided by max(1, staleness)


@dataclass
class AlgoConfig:
    name: str = MISSING
    mode: str = MISSING
    num_workers: int = 1
    num_envs: int = 1  # envs stepped in lockstep by each worker (or by the learner in vector mode)
    vector_backend: str = "sync"  # sync: envs in-process; async: one subprocess per env
    n_steps: int = 5
    gamma: float = 0.99
    gae_lambda: float = 1.0  # 1.0 gives plain n-step returns, as in the A3C paper
    lr: float = 7e-4
    lr_schedule: str = "constant"
    optimizer: str = "rmsprop"
    rmsprop_alpha: float = 0.99
    optimizer_eps: float = 1e-5
    value_coef: float = 0.5
    entropy_coef: float = 0.0
    max_grad_norm: float | None = 0.5  # null disables clipping
    normalize_advantage: bool = False
    lock: bool = False
    max_restarts: int = 3
    # A worker process (Hogwild, parameter-server or a2c worker, impala/appo actor; local or Ray) that reports no
    # progress for this many seconds while the others go on, wait for it, or the run waits for it to finish is
    # named in a worker_stalled event and killed: restarted where the schedule restarts workers (max_restarts),
    # else the run fails naming it. Long enough for the slowest legitimate rollout, update or start-up.
    worker_stall_s: float = 60.0
    start_method: str = "forkserver"
    on_nonfinite: str = "fail"  # a NaN or infinite loss or gradient: fail the run, or skip_update (drop it)
    max_nonfinite_skips: int = 10  # with skip_update: fail after this many non-finite updates of a worker in a row
    staleness: StalenessConfig = field(default_factory=StalenessConfig)
    # impala and appo only (algorithms/schedules/actor_learner.py): the learner's batch, the actors' queue, the
    # off-policy correction (algorithms/core/losses.py: CORRECTIONS) and the bound on the data's lag.
    batch_size: int = 1  # unrolls per learner update
    queue_depth: int = 2  # unroll slots per actor: how many of its unrolls may wait for the learner
    wait_for_update: bool = False  # an actor acts again only once its last unroll's update is published
    correction: str = "vtrace"  # vtrace | none | truncated_is | ppo_clip (ratio against mu) | decoupled (AReaL)
    rho_bar: float = 1.0  # V-trace's truncation of the importance weights in the targets and policy gradient
    c_bar: float = 1.0  # V-trace's truncation of the trace coefficients (gae_lambda is its lambda)
    max_policy_lag: int | None = None  # leave out samples acted more than this many versions ago (null: keep all)
    in_flight_updates: bool = False  # actors load each newly published version between two steps of an unroll
    # ppo and appo only (algorithms/updates/ppo.py, off_policy.py): the passes over each batch and the clipping.
    epochs: int = 1  # passes over each batch
    minibatches: int = 1  # optimizer steps per pass, each on an equal share of the batch (must divide it)
    clip_range: float = 0.2  # the surrogate's ratio is clipped to [1 - clip_range, 1 + clip_range]
    clip_value: bool = False  # clip the value update to clip_range around the value the batch was collected with
    target_kl: float | None = None  # stop a batch's passes once a pass ends above this approximate KL (null: never)


@dataclass
class ModelConfig:
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])  # the MLP torso (flat observations)
    activation: str = "tanh"  # the MLP torso's
    log_std_init: float = 0.0  # diagonal Gaussian heads only
    ortho_init: bool = True
    cnn: str = "auto"  # image observations: auto (by frame size) | nature (84x84 frame stacks) | minatar (10x10xC)
    share_torso: bool | None = None  # actor and critic share one torso; null: shared for CNNs, separate for MLPs


@dataclass
class AtariConfig:
    """The standard Atari training stack (Mnih et al. 2015; Machado et al. 2018 for the evaluation notes)."""

    noop_max: int = 30  # up to this many no-op actions at reset
    frame_skip: int = 4  # each action repeated this many frames, the last two max-pooled
    screen_size: int = 84  # grayscale frames resized to screen_size x screen_size
    frame_stack: int = 4  # observations are the last frame_stack frames, channels first
    episodic_life: bool = True  # training episodes end at a life loss (the recorded episode is the full game)
    fire_reset: bool = True  # press FIRE after reset in games that need it to start
    clip_rewards: bool = True  # train on the sign of the reward (the recorded return is the game score)


@dataclass
class EnvConfig:
    name: str = MISSING  # short name used in run directory names
    id: str = MISSING  # gymnasium id
    kwargs: dict[str, Any] = field(default_factory=dict)
    max_episode_steps: int | None = None  # null keeps the registered limit
    preprocessing: str = "none"  # none | minatar (channels-first uint8 grids) | atari (the stack in atari)
    atari: AtariConfig = field(default_factory=AtariConfig)
    normalize_obs: bool = False
    normalize_reward: bool = False
    clip_obs: float = 10.0
    clip_reward: float = 10.0
    solved_return: float | None = None  # threshold for time-to-threshold in analysis


@dataclass
class EvalConfig:
    """Evaluation episodes, played apart from training (``algorithms.core.evaluation``) into ``evals.csv``."""

    interval: int | None = None  # env steps between evaluations; null: only the final one, at the end of the run
    episodes: int = 10  # per evaluation; 0 turns evaluation off, the final one too
    deterministic: bool = True  # the most probable action (discrete) or the mean (continuous); false: sampled
    num_envs: int = 1  # envs played in lockstep, each playing an equal share of the episodes


@dataclass
class SimConfig:
    """The cost model of ``backend=simulated``: how long each action of a virtual worker takes, in virtual seconds.

    Only time is modelled; every rollout, gradient and update is computed for real. A worker's task (collect one
    rollout and compute its gradient) costs ``n_steps * num_envs * env_step_s + n_steps * forward_s + backward_s``,
    times its speed factor, a log-normal jitter and, with probability ``straggler_fraction``, ``straggler_slowdown``.
    A message costs ``message_s + bytes * byte_s + latency_s``; the server applies one gradient at a time
    (``apply_s`` each: pushes queue). Every update also costs ``update_s``, the bookkeeping of the real update
    path around those operations: syncing the local model, the learning-rate schedule and the non-finite guards,
    copying the gradient into the optimizer, and recording the update's and episodes' rows. Whoever runs the
    update pays it: a Hogwild worker before its apply, the parameter server after each push's apply (it queues
    pushes like ``apply_s``), an a2c round once after its apply. impala's actors and learner have costs of their
    own: an unroll costs ``n_steps * num_envs * env_step_s + n_steps * forward_s + unroll_s`` (``unroll_s``: the
    behaviour log-probabilities' batched pass, reading the parameters, writing the unroll and announcing it), and
    a learner update of ``batch_size`` unrolls ``learn_s + batch_size * learn_unroll_s`` (one batched pass of the
    corrected loss over them all, the step, publishing the parameters and recording the rows; appo's ``epochs``
    passes of ``minibatches`` steps each, ``epochs * (minibatches * learn_s + batch_size * learn_unroll_s)``). With
    ``algo.in_flight_updates`` each step of an unroll is an event of its own, costing
    ``num_envs * env_step_s + forward_s``. The defaults are
    rough figures for CartPole's MLP on a 2 GHz core; ``experiments.tools.calibrate`` measures this machine's."""

    env_step_s: float = 1.0e-5  # one env step of one env
    forward_s: float = 5.0e-5  # one acting forward pass over a worker's envs
    backward_s: float = 5.0e-4  # the loss, its gradient and the clipping, for one rollout
    message_s: float = 1.0e-4  # fixed cost of sending one message (parameters or a gradient)
    byte_s: float = 1.0e-9  # per byte of a message (1 GB/s)
    latency_s: float = 0.0  # fixed one-way network latency of a message
    apply_s: float = 2.0e-4  # the server's optimizer step with one gradient (or the mean of a round)
    update_s: float = 2.0e-4  # the rest of one update: sync, lr, guards, gradient copy, recording its rows
    unroll_s: float = 2.0e-4  # an impala actor's unroll beyond its steps and acting passes
    learn_s: float = 1.0e-3  # an impala learner update's fixed part (one batched pass, step, publish, rows)
    learn_unroll_s: float = 1.0e-4  # an impala learner update's part per unroll in its batch
    worker_speeds: list[float] | None = None  # per-worker slowness factors (1: nominal), cycled; null: all 1
    jitter_sigma: float = 0.0  # sigma of the log-normal factor drawn for every task (0: none)
    straggler_fraction: float = 0.0  # probability that a task is a straggler's
    straggler_slowdown: float = 1.0  # how many times longer a straggler's task takes


@dataclass
class RayConfig:
    """Where and how ``backend=ray`` runs its actors (see docs/ray.md)."""

    address: str | None = None  # null: start a local cluster for this run; auto, HOST:PORT or ray://HOST:PORT
    # (Ray Client, for a driver outside the cluster): connect to a running one
    num_cpus: int | None = None  # CPUs of the local cluster (null: this machine's, at least what the run asks)
    cpus_per_worker: float = 1.0  # CPUs Ray reserves for each worker actor (fractions allowed)
    server_cpus: float = 0.0  # CPUs reserved for the parameter-server actor (it mostly waits on workers)
    ship_code: bool = True  # connecting to a cluster: upload this checkout's code (the algorithms package)
    start_timeout_s: float = 300.0  # fail if the actors are not all placed and started within this


@dataclass
class RunConfig:
    """Everything an algorithm reads of a run's config."""

    algo: AlgoConfig = field(default_factory=AlgoConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    seed: int = 0
    total_env_steps: int = 100_000
    checkpoint_interval: int = 50_000  # env steps between checkpoints
    # local: processes on this machine; ray: Ray actors (a2c workers, a3c parameter_server); simulated: virtual
    # workers in one process on a virtual clock (sim.*)
    backend: str = "local"
    ray: RayConfig = field(default_factory=RayConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    torch_threads: int = 1  # per process; more only fights the other workers for cores
    # Where the learner's model lives: cpu | cuda | cuda:N | auto (cuda when available). Only schedules whose
    # learner is one process (single, a2c vector, the local a3c parameter server) use it; workers stay on CPU.
    device: str = "cpu"

    @classmethod
    def from_config(cls, config: Any) -> RunConfig:
        """The algorithm's part of a fuller config object (such as ``experiments.config.Config``)."""
        return cls(**{spec.name: getattr(config, spec.name) for spec in fields(cls)})
