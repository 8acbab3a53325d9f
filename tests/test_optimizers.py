"""``algo.optimizer=rmsprop_tf``: TensorFlow-style RMSprop over the flat parameters, checked against a step
worked by hand and against Stable-Baselines3's ``RMSpropTFLike``; its state is shareable and checkpointable."""

from __future__ import annotations

from types import SimpleNamespace

import gymnasium as gym
import pytest
import torch

from algorithms.core.nets import ActorCritic
from algorithms.core.optimizers import make_optimizer
from algorithms.infra.checkpoint import make_checkpoint, read_checkpoint, restore_model, write_checkpoint
from algorithms.infra.shared_memory import attach_optimizer_state, share_optimizer_state

ZOO_ATARI = SimpleNamespace(optimizer="rmsprop_tf", lr=7e-4, rmsprop_alpha=0.99, optimizer_eps=1e-5)


def cartpole_model() -> ActorCritic:
    env = gym.make("CartPole-v1")
    torch.manual_seed(0)
    return ActorCritic(env.observation_space, env.action_space, [64, 64])


def flat_params(values: list[float]) -> torch.Tensor:
    params = torch.tensor(values, requires_grad=True)
    params.grad = torch.zeros_like(params)
    return params


def step_with(optimizer: torch.optim.Optimizer, params: torch.Tensor, seed: int) -> None:
    """One step with a gradient drawn from ``seed``."""
    params.grad.copy_(torch.randn(params.shape, generator=torch.Generator().manual_seed(seed)))
    optimizer.step()


def test_one_step_worked_by_hand():
    algo = SimpleNamespace(optimizer="rmsprop_tf", lr=0.3, rmsprop_alpha=0.5, optimizer_eps=0.5)
    params = flat_params([1.0, 2.0, 3.0])
    optimizer = make_optimizer(params, algo)
    params.grad.copy_(torch.tensor([4.0, 0.0, -4.0]))
    optimizer.step()
    # square_avg = 0.5 * 1 + 0.5 * grad**2          = [8.5, 0.5, 8.5]   (from ones; from zeros: [8, 0, 8])
    # sqrt(square_avg + eps) = sqrt([9.0, 1.0, 9.0]) = [3.0, 1.0, 3.0]   (eps outside: 2.915 + 0.5 = 3.415)
    # params -= 0.3 * grad / [3, 1, 3]               = [1 - 0.4, 2 - 0, 3 + 0.4]
    state = optimizer.state[params]
    torch.testing.assert_close(state["square_avg"], torch.tensor([8.5, 0.5, 8.5]))
    torch.testing.assert_close(params.detach(), torch.tensor([0.6, 2.0, 3.4]))
    assert int(state["step"]) == 1


def test_steps_equal_stable_baselines3_rmsprop_tf_like():
    sb2_compat = pytest.importorskip("stable_baselines3.common.sb2_compat.rmsprop_tf_like")
    model, reference = cartpole_model(), cartpole_model()
    optimizer = make_optimizer(model, ZOO_ATARI)
    sb3_optimizer = sb2_compat.RMSpropTFLike(reference.parameters(), lr=7e-4, alpha=0.99, eps=1e-5)
    for seed in range(5):
        step_with(optimizer, model.flat_params, seed)
        for param, layer in zip(reference.parameters(), model.parameters(), strict=True):
            param.grad = layer.grad.clone()  # a view of the gradient this step used
        sb3_optimizer.step()
    for param, expected in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(param, expected)
    square_avgs = [sb3_optimizer.state[param]["square_avg"].flatten() for param in reference.parameters()]
    torch.testing.assert_close(optimizer.state[model.flat_params]["square_avg"], torch.cat(square_avgs))


def test_zero_grad_keeps_every_layer_s_gradient_in_the_flat_buffer():
    model = cartpole_model()
    optimizer = make_optimizer(model, ZOO_ATARI)
    model.flat_grads.fill_(1.0)
    optimizer.zero_grad()  # torch's default would set every .grad to None, detaching the layers from the buffer
    assert model.flat_params.grad is model.flat_grads and not model.flat_grads.any()
    assert all(param.grad is not None for param in model.parameters())


def test_state_exists_before_the_first_step_and_workers_share_it():
    params = flat_params([0.5, -1.0, 2.0, 0.0])
    owner = make_optimizer(params, ZOO_ATARI)
    shared = share_optimizer_state(owner)
    assert torch.equal(shared["square_avg"], torch.ones(4)) and int(shared["step"]) == 0
    assert all(tensor.is_shared() for tensor in shared.values())
    worker = make_optimizer(params, ZOO_ATARI)  # as a Hogwild worker builds it over the global parameters
    attach_optimizer_state(worker, shared)

    alone_params = params.detach().clone().requires_grad_()
    alone_params.grad = torch.zeros_like(alone_params)
    alone = make_optimizer(alone_params, ZOO_ATARI)
    for seed, optimizer in enumerate([owner, worker, owner]):
        step_with(optimizer, params, seed)
        step_with(alone, alone_params, seed)
    # Three steps by two optimizers over one set of statistics are three steps of one optimizer.
    assert worker.state[params]["square_avg"] is shared["square_avg"]
    assert int(shared["step"]) == 3
    torch.testing.assert_close(shared["square_avg"], alone.state[alone_params]["square_avg"], rtol=0, atol=0)
    torch.testing.assert_close(params, alone_params, rtol=0, atol=0)


def test_checkpoint_round_trip_continues_the_same_steps(tmp_path):
    model = cartpole_model()
    optimizer = make_optimizer(model, ZOO_ATARI)
    for seed in range(3):
        step_with(optimizer, model.flat_params, seed)
    write_checkpoint(tmp_path / "last.pt", make_checkpoint(model.state_dict(), optimizer.state_dict(), 15, 3))

    resumed = cartpole_model()
    resumed_optimizer = make_optimizer(resumed, ZOO_ATARI)
    restore_model(read_checkpoint(tmp_path / "last.pt"), resumed, resumed_optimizer)
    state, resumed_state = optimizer.state[model.flat_params], resumed_optimizer.state[resumed.flat_params]
    assert int(resumed_state["step"]) == 3
    torch.testing.assert_close(resumed_state["square_avg"], state["square_avg"], rtol=0, atol=0)
    step_with(optimizer, model.flat_params, 3)
    step_with(resumed_optimizer, resumed.flat_params, 3)
    torch.testing.assert_close(resumed.flat_params, model.flat_params, rtol=0, atol=0)
