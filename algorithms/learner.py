"""The worker side of learning, which every schedule shares: build the model, its optimizer and a collector,
and turn a rollout into a clipped gradient.

``single``, ``a2c`` and ``a3c`` differ only in who collects, who computes the gradient and when it is
applied; the server side (applying a gradient to the global parameters) is ``algorithms.server``.
Written once, these parts make the schedules' comparison a controlled experiment: with one worker and
one seed they produce identical parameters.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch
from gymnasium.vector import VectorEnv

from algorithms.envs import ObservationNormalizer, RewardScaler, make_vector_env, worker_seed
from algorithms.losses import actor_critic_loss, gae_advantages, n_step_returns, vtrace
from algorithms.nets import ActorCritic
from algorithms.rollout import Collector, Episode, Rollout, Unrolls


def build_model(cfg: Any, envs: VectorEnv) -> ActorCritic:
    """The actor-critic for ``envs``; its initial parameters depend on ``cfg.seed`` alone."""
    torch.manual_seed(cfg.seed)
    return ActorCritic(
        envs.single_observation_space,
        envs.single_action_space,
        hidden_sizes=list(cfg.model.hidden_sizes),
        activation=cfg.model.activation,
        log_std_init=cfg.model.log_std_init,
        ortho_init=cfg.model.ortho_init,
        cnn=cfg.model.cnn,
        share_torso=cfg.model.share_torso,
    )


def learner_device(cfg: Any) -> torch.device:
    """Where a one-process learner's model lives: ``cfg.device``, ``auto`` being CUDA when there is one."""
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def build_spaces_model(cfg: Any) -> ActorCritic:
    """The model every worker builds, from a throwaway env that only gives the spaces."""
    envs = make_vector_env(cfg.env, 1)
    try:
        return build_model(cfg, envs)
    finally:
        envs.close()


class InPlaceZeroGrad:
    """``zero_grad`` that zeroes ``.grad`` in place. Our optimizers step one flat tensor whose ``.grad`` is the
    model's ``flat_grads``, which every layer's gradient views; torch's default (``.grad = None``) would cut
    that link, and later steps would silently skip the parameters."""

    param_groups: list[dict[str, Any]]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    param.grad.zero_()


class RMSprop(InPlaceZeroGrad, torch.optim.RMSprop):
    pass


class Adam(InPlaceZeroGrad, torch.optim.Adam):
    pass


class RMSpropTF(InPlaceZeroGrad, torch.optim.Optimizer):
    """RMSprop as TensorFlow computes it (Stable-Baselines3's ``RMSpropTFLike``, without momentum or centering):
    ``square_avg = alpha * square_avg + (1 - alpha) * grad**2``, then ``param -= lr * grad / sqrt(square_avg + eps)``.

    Unlike torch's RMSprop, ``eps`` is inside the square root and ``square_avg`` starts at ones (see
    :func:`make_optimizer`). From zeros, torch's first step is about ``lr / sqrt(1 - alpha)`` per parameter
    whatever the gradient's size (10 ``lr`` at ``alpha=0.99``); from ones it is about ``lr * grad``. Hyperparameters
    tuned with TensorFlow, such as rl-baselines3-zoo's A2C on Atari, assume the latter.
    """

    def __init__(self, params: list[torch.Tensor], lr: float, alpha: float, eps: float):
        super().__init__(params, {"lr": lr, "alpha": alpha, "eps": eps})

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        for group in self.param_groups:
            for param in group["params"]:
                state = self.state[param]
                grad, square_avg = param.grad, state["square_avg"]
                state["step"].add_(1)
                square_avg.mul_(group["alpha"]).addcmul_(grad, grad, value=1 - group["alpha"])
                param.addcdiv_(grad, square_avg.add(group["eps"]).sqrt_(), value=-group["lr"])


def make_optimizer(model: ActorCritic | torch.Tensor, algo: Any) -> torch.optim.Optimizer:
    """RMSprop (the A3C paper's choice), TensorFlow-style RMSprop or Adam over the model's flat parameters,
    state created now.

    Creating the state up front rather than lazily lets an asynchronous schedule place it in shared
    memory before any worker starts, so all workers update one set of statistics (and one step count).
    ``model`` may also be a flat parameter tensor itself: a handle on global parameters.
    """
    params = [model if isinstance(model, torch.Tensor) else model.flat_params]
    if algo.optimizer == "rmsprop":
        optimizer = RMSprop(params, lr=algo.lr, alpha=algo.rmsprop_alpha, eps=algo.optimizer_eps, foreach=True)
        initial_buffers = {"square_avg": 0.0}
    elif algo.optimizer == "rmsprop_tf":
        optimizer = RMSpropTF(params, lr=algo.lr, alpha=algo.rmsprop_alpha, eps=algo.optimizer_eps)
        initial_buffers = {"square_avg": 1.0}
    else:
        optimizer = Adam(params, lr=algo.lr, eps=algo.optimizer_eps, foreach=True)
        initial_buffers = {"exp_avg": 0.0, "exp_avg_sq": 0.0}
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state[param]
            state["step"] = torch.zeros(())
            for name, value in initial_buffers.items():
                state[name] = torch.full_like(param, value)
    return optimizer


def learning_rate(algo: Any, env_steps: int, total_env_steps: int) -> float:
    """``algo.lr``, constant or decayed linearly to 0 over the step budget (as the zoo's ``lin_``)."""
    if algo.lr_schedule == "linear":
        return algo.lr * max(0.0, 1.0 - env_steps / total_env_steps)
    return algo.lr


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def reset_seed(cfg: Any, worker: int, num_envs: int, env_steps: int) -> int:
    """Seed for a worker's envs and sampling when (re)starting at ``env_steps``: fresh runs use the worker seed."""
    return worker_seed(cfg.seed, worker, num_envs) + env_steps


def build_collector(cfg: Any, envs: VectorEnv, worker: int, env_steps: int = 0) -> Collector:
    """A collector over ``envs`` with the normalizers the env config asks for, sampling with the seed of a
    worker (re)starting at ``env_steps`` (a resumed one then loads its saved generator). Atari's episodes are
    the games its envs' ``RecordEpisodeStatistics`` reports, not the lives its training episodes end at."""
    env_cfg, num_envs = cfg.env, envs.num_envs
    obs_normalizer = (ObservationNormalizer(envs.single_observation_space.shape, env_cfg.clip_obs)
                      if env_cfg.normalize_obs else None)
    reward_scaler = (RewardScaler(num_envs, cfg.algo.gamma, env_cfg.clip_reward)
                     if env_cfg.normalize_reward else None)
    return Collector(envs, cfg.algo.n_steps, reset_seed(cfg, worker, num_envs, env_steps),
                     obs_normalizer, reward_scaler, episodes_from_info=env_cfg.preprocessing == "atari")


def start_collector(cfg: Any, envs: VectorEnv, worker: int, env_steps: int = 0,
                    state: dict[str, Any] | None = None) -> Collector:
    """A collector ready to collect: continuing a checkpoint's ``state`` when given (its episodes in progress
    too when the state saved the envs), else in fresh episodes seeded for ``env_steps``."""
    collector = build_collector(cfg, envs, worker, env_steps)
    if state is not None:
        collector.load_state_dict(state)
    if not collector.started:
        collector.reset(reset_seed(cfg, worker, envs.num_envs, env_steps))
    return collector


def compute_gradients(model: ActorCritic, rollout: Rollout, algo: Any) -> dict[str, float]:
    """Fill ``model``'s ``.grad`` with the gradient of the actor-critic loss on ``rollout``.

    Returns the loss parts and the pre-clipping gradient norm. Gradients are clipped to
    ``algo.max_grad_norm`` in place; ``.grad`` is overwritten, never accumulated.
    """
    rewards, values = rollout.rewards.numpy(), rollout.values.numpy()
    bootstrap = dict(terminated=rollout.terminated.numpy(), truncated=rollout.truncated.numpy(),
                     truncation_values=rollout.truncation_values.numpy(), next_value=rollout.next_value.numpy())
    if algo.gae_lambda == 1.0:
        returns_np = n_step_returns(rewards, gamma=algo.gamma, **bootstrap)
        advantages_np = returns_np - values
    else:
        advantages_np = gae_advantages(rewards, values, gamma=algo.gamma, gae_lambda=algo.gae_lambda,
                                       **bootstrap)
        returns_np = advantages_np + values
    device = model.device
    returns = torch.from_numpy(returns_np).to(device)
    advantages = torch.from_numpy(advantages_np).flatten().to(device)
    if algo.normalize_advantage:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    # Observations cross to an accelerator as they are stored: uint8 frames a quarter of their float size.
    log_probs, entropy, values = model.evaluate(rollout.obs.flatten(0, 1).to(device),
                                                rollout.actions.flatten(0, 1).to(device))
    loss, parts = actor_critic_loss(log_probs, entropy, values, returns.flatten(), advantages,
                                    algo.value_coef, algo.entropy_coef)
    return backpropagate(model, loss, parts, algo)


def backpropagate(model: ActorCritic, loss: torch.Tensor, parts: dict[str, torch.Tensor],
                  algo: Any) -> dict[str, float]:
    """Overwrite ``model``'s ``.grad`` with the gradient of ``loss``, clipped to ``algo.max_grad_norm`` in place;
    return the loss parts and the pre-clipping gradient norm."""
    model.flat_grads.zero_()
    loss.backward()
    grad_norm = float(model.flat_grads.norm())
    if algo.max_grad_norm is not None and grad_norm > algo.max_grad_norm:
        # The same scaling as torch.nn.utils.clip_grad_norm_, on the one flat gradient.
        model.flat_grads.mul_(algo.max_grad_norm / (grad_norm + 1e-6))
    stats = {name: float(value.detach()) for name, value in parts.items()}
    stats["grad_norm"] = grad_norm
    return stats


def off_policy_gradients(model: ActorCritic, unrolls: Unrolls, algo: Any) -> tuple[dict[str, float], float]:
    """Fill ``model``'s ``.grad`` with the actor-critic loss on ``unrolls`` acted by older policies, corrected as
    ``algo.correction`` says (IMPALA's learner; Espeholt et al. 2018):

    - ``vtrace``: V-trace targets and advantages (:func:`~algorithms.losses.vtrace`, ``rho_bar``, ``c_bar`` and
      ``gae_lambda`` as its lambda);
    - ``none``: the same targets with every importance ratio taken as 1 (the paper's "no correction");
    - ``truncated_is``: those uncorrected targets, each advantage weighted by its truncated importance ratio
      ``min(rho_bar, pi/mu)`` (the paper's "1-step importance sampling").

    Values are the learner's own, with its current parameters (the bootstrap too); only a truncation's
    ``V(s_final)`` is the actor's. Returns the loss statistics and the mean truncated importance ratio.
    """
    device, rewards = model.device, unrolls.rewards.numpy()
    log_probs, entropy, values = model.evaluate(unrolls.obs.flatten(0, 1).to(device),
                                                unrolls.actions.flatten(0, 1).to(device))
    with torch.no_grad():
        bootstrap_values = model(unrolls.bootstrap_obs.to(device))[1].cpu().numpy()
    log_rhos = log_probs.detach().view(rewards.shape).cpu().numpy() - unrolls.behaviour_log_probs.numpy()
    truncated_ratios = np.minimum(algo.rho_bar, np.exp(log_rhos))
    targets, advantages = vtrace(
        rewards, values.detach().view(rewards.shape).cpu().numpy(),
        log_rhos if algo.correction == "vtrace" else np.zeros_like(log_rhos),
        unrolls.terminated.numpy(), unrolls.truncated.numpy(), unrolls.truncation_values.numpy(), bootstrap_values,
        gamma=algo.gamma, rho_bar=algo.rho_bar, c_bar=algo.c_bar, trace_lambda=algo.gae_lambda)
    if algo.correction == "truncated_is":
        advantages = advantages * truncated_ratios
    advantages_t = torch.from_numpy(advantages).flatten().to(device)
    if algo.normalize_advantage:
        advantages_t = (advantages_t - advantages_t.mean()) / (advantages_t.std() + 1e-8)
    loss, parts = actor_critic_loss(log_probs, entropy, values, torch.from_numpy(targets).flatten().to(device),
                                    advantages_t, algo.value_coef, algo.entropy_coef)
    return backpropagate(model, loss, parts, algo), float(truncated_ratios.mean())


class NonFiniteUpdate(RuntimeError):
    """A NaN or infinite loss, gradient or parameter: the run has diverged and must not be recorded as a success."""


class NonFiniteGuard:
    """``algo.on_nonfinite`` for one worker's updates: ``fail`` raises :class:`NonFiniteUpdate` at the first
    non-finite loss or gradient; ``skip_update`` drops such an update (the caller records it as not applied)
    and raises after ``algo.max_nonfinite_skips`` in a row. Parameters that are not finite after a step
    always raise: an applied step cannot be dropped. A schedule that cannot skip (a synchronous round) passes
    ``can_skip=False``."""

    def __init__(self, algo: Any, worker: int, can_skip: bool = True):
        self.skip = can_skip and algo.on_nonfinite == "skip_update"
        self.limit, self.worker = algo.max_nonfinite_skips, worker
        self.in_a_row = 0

    def admits(self, stats: dict[str, float], version: int, env_steps: int) -> bool:
        """Whether to apply the update whose loss statistics are ``stats`` (its gradient norm among them)."""
        quantity = next((name for name, value in stats.items() if not math.isfinite(value)), None)
        if quantity is None:
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        where = (f"non-finite {quantity} in worker {self.worker}'s update at policy version {version}, "
                 f"env step {env_steps}")
        if not self.skip:
            raise NonFiniteUpdate(f"{where} (algo.on_nonfinite=fail)")
        if self.in_a_row > self.limit:
            raise NonFiniteUpdate(f"{where}: {self.in_a_row} non-finite updates in a row "
                                  f"(algo.max_nonfinite_skips={self.limit})")
        return False

    def check_parameters(self, params: torch.Tensor, version: int, env_steps: int) -> None:
        if not bool(torch.isfinite(params).all()):
            raise NonFiniteUpdate(f"non-finite parameters after worker {self.worker}'s update at policy version "
                                  f"{version}, env step {env_steps}")


def average_gradients(gradients: torch.Tensor, out: torch.Tensor) -> None:
    """``out = gradients.sum(0) / len(gradients)`` for ``[num_workers, num_params]`` gradients, summed in worker
    order: the same bits wherever it is computed (every local replica, or the Ray backend's server)."""
    torch.sum(gradients, dim=0, out=out)
    out.div_(len(gradients))


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


class LocalLearner:
    """A worker's own envs, collector and model copy: it computes gradients and never applies them.

    It starts at ``env_steps`` (0, or where a restarted or resumed worker joins the run), continuing the
    collector's saved state when given one.
    """

    def __init__(self, cfg: Any, worker: int, env_steps: int, collector_state: dict[str, Any] | None = None):
        self.algo, self.worker = cfg.algo, worker
        self.envs = make_vector_env(cfg.env, self.algo.num_envs, self.algo.vector_backend)
        try:
            self.model = build_model(cfg, self.envs)
            self.collector = start_collector(cfg, self.envs, worker, env_steps, collector_state)
        except BaseException:
            self.envs.close()
            raise

    @property
    def steps(self) -> int:
        """Env steps of one rollout."""
        return self.collector.steps_per_collect

    def learn(self) -> tuple[list[Episode], dict[str, float]]:
        """Collect one rollout with the local model and leave its gradient in ``model.flat_grads``."""
        episodes = self.collector.collect(self.model)
        return episodes, compute_gradients(self.model, self.collector.rollout, self.algo)

    def close(self) -> None:
        self.envs.close()
