"""The parts of learning that every schedule shares.

``single``, ``a2c`` and ``a3c`` differ only in who collects, who computes the gradient and when it is
applied. Building the model and optimizer, turning a rollout into gradients, the learning-rate
schedule and the checkpointed state are written here once, which is what makes their comparison a
controlled experiment: with one worker and one seed they produce identical parameters.
"""

from __future__ import annotations

import random
from typing import Any, Protocol

import numpy as np
import torch
from gymnasium.vector import VectorEnv

from algorithms.envs import ObservationNormalizer, RewardScaler, make_vector_env, worker_seed
from algorithms.losses import actor_critic_loss, gae_advantages, n_step_returns
from algorithms.nets import ActorCritic
from algorithms.rollout import Collector, Episode, Rollout


class Record(Protocol):
    """What an algorithm may call on the run record (implemented by ``experiments.record``)."""

    stop_requested: bool  # set by SIGINT/SIGTERM: finish the current update, checkpoint, return
    resume_state: dict[str, Any] | None  # the checkpoint to continue from, when resuming

    def episode(self, worker: int, env_steps: int, ret: float, length: int) -> None: ...

    def update(self, worker: int, env_steps: int, version_at_sync: int, version_at_apply: int,
               applied: bool, lr: float, wait_time: float = 0.0, **stats: float) -> None: ...

    def event(self, kind: str, **fields: Any) -> None: ...

    def checkpoint_due(self, env_steps: int) -> bool: ...

    def save_checkpoint(self, state: dict[str, Any]) -> None: ...


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
    )


def make_optimizer(model: ActorCritic | torch.Tensor, algo: Any) -> torch.optim.Optimizer:
    """RMSprop (the A3C paper's choice) or Adam over the model's flat parameters, state created now.

    Creating the state up front rather than lazily lets an asynchronous schedule place it in shared
    memory before any worker starts, so all workers update one set of statistics (and, for Adam, one
    step count). ``model`` may also be a flat parameter tensor itself: an A3C worker's handle on the
    shared global parameters.
    """
    params = [model if isinstance(model, torch.Tensor) else model.flat_params]
    if algo.optimizer == "rmsprop":
        optimizer = torch.optim.RMSprop(params, lr=algo.lr, alpha=algo.rmsprop_alpha, eps=algo.optimizer_eps,
                                        foreach=True)
        buffers = ("square_avg",)
    else:
        optimizer = torch.optim.Adam(params, lr=algo.lr, eps=algo.optimizer_eps, foreach=True)
        buffers = ("exp_avg", "exp_avg_sq")
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state[param]
            state["step"] = torch.zeros(())
            for name in buffers:
                state[name] = torch.zeros_like(param, memory_format=torch.preserve_format)
    return optimizer


def learning_rate(algo: Any, env_steps: int, total_env_steps: int) -> float:
    """``algo.lr``, constant or decayed linearly to 0 over the step budget (as the zoo's ``lin_``)."""
    if algo.lr_schedule == "linear":
        return algo.lr * max(0.0, 1.0 - env_steps / total_env_steps)
    return algo.lr


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def build_collector(cfg: Any, envs: VectorEnv, worker: int) -> Collector:
    """A collector over ``envs`` with the normalizers the env config asks for."""
    env_cfg, num_envs = cfg.env, envs.num_envs
    obs_normalizer = (ObservationNormalizer(envs.single_observation_space.shape, env_cfg.clip_obs)
                      if env_cfg.normalize_obs else None)
    reward_scaler = (RewardScaler(num_envs, cfg.algo.gamma, env_cfg.clip_reward)
                     if env_cfg.normalize_reward else None)
    return Collector(envs, cfg.algo.n_steps, worker_seed(cfg.seed, worker, num_envs),
                     obs_normalizer, reward_scaler)


def reset_seed(cfg: Any, worker: int, num_envs: int, env_steps: int) -> int:
    """Seed for a worker's envs when (re)starting at ``env_steps``: fresh runs use the worker seed."""
    return worker_seed(cfg.seed, worker, num_envs) + env_steps


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
    returns, advantages = torch.from_numpy(returns_np), torch.from_numpy(advantages_np).flatten()
    if algo.normalize_advantage:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    log_probs, entropy, values = model.evaluate(rollout.obs.flatten(0, 1), rollout.actions.flatten(0, 1))
    loss, parts = actor_critic_loss(log_probs, entropy, values, returns.flatten(), advantages,
                                    algo.value_coef, algo.entropy_coef)
    model.flat_grads.zero_()
    loss.backward()
    grad_norm = float(model.flat_grads.norm())
    if algo.max_grad_norm is not None and grad_norm > algo.max_grad_norm:
        # The same scaling as torch.nn.utils.clip_grad_norm_, on the one flat gradient.
        model.flat_grads.mul_(algo.max_grad_norm / (grad_norm + 1e-6))
    stats = {name: float(value.detach()) for name, value in parts.items()}
    stats["grad_norm"] = grad_norm
    return stats


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def record_episodes(record: Record, worker: int, env_steps_before: int, episodes: list[Episode]) -> None:
    for episode in episodes:
        record.episode(worker, env_steps_before + episode.steps_into_rollout, episode.ret, episode.length)


def train_in_process(cfg: Any, record: Record, num_envs: int) -> None:
    """One process, ``num_envs`` envs in lockstep, one update per ``num_envs * n_steps`` transitions.

    This is the single-worker baseline (``num_envs=1``) and A2C's vector mode. The loop reads
    top to bottom: collect -> returns and loss -> step -> record.
    """
    torch.set_num_threads(cfg.torch_threads)
    algo = cfg.algo
    envs = make_vector_env(cfg.env, num_envs, algo.vector_backend)
    try:
        model = build_model(cfg, envs)
        optimizer = make_optimizer(model, algo)
        collector = build_collector(cfg, envs, worker=0)
        env_steps, version = 0, 0
        if record.resume_state is not None:
            state = record.resume_state
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            collector.load_state_dict(state["collectors"][0])
            restore_rng_state(state["rng"])
            env_steps, version = state["env_steps"], state["policy_version"]
        collector.reset(reset_seed(cfg, 0, num_envs, env_steps))

        def checkpoint_state() -> dict[str, Any]:
            return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "collectors": [collector.state_dict()], "rng": rng_state(),
                    "env_steps": env_steps, "policy_version": version}

        while env_steps < cfg.total_env_steps and not record.stop_requested:
            episodes = collector.collect(model)
            record_episodes(record, 0, env_steps, episodes)
            lr = learning_rate(algo, env_steps, cfg.total_env_steps)
            set_learning_rate(optimizer, lr)
            stats = compute_gradients(model, collector.rollout, algo)
            optimizer.step()
            env_steps += collector.steps_per_collect
            record.update(0, env_steps, version_at_sync=version, version_at_apply=version, applied=True,
                          lr=lr, **stats)
            version += 1
            if record.checkpoint_due(env_steps):
                record.save_checkpoint(checkpoint_state())
        record.save_checkpoint(checkpoint_state())
    finally:
        envs.close()
