"""The off-policy corrections (algorithms.core.losses.CORRECTIONS): each against a hand-computed case, and each in
its on-policy form (behaviour = proximal policy) against PPO's clipped surrogate."""

from __future__ import annotations

import math

import pytest
import torch

from algorithms.core.losses import CORRECTIONS, clipped_surrogate
from algorithms.schedule_checks import CORRECTIONS as CORRECTION_NAMES

# Two samples: pi is the learner's policy now, pi_prox its policy when it took the batch, mu the behaviour policy.
PI, PROXIMAL, BEHAVIOUR = (0.5, 0.2), (0.4, 0.2 / 0.9), (0.5, 0.1)
ADVANTAGES = torch.tensor([1.0, -2.0])
CLIP, RHO_BAR = 0.2, 1.0


def loss_and_gradient(correction: str) -> tuple[float, list[float]]:
    log_probs = torch.log(torch.tensor(PI)).requires_grad_()
    loss, _ = CORRECTIONS[correction].policy_loss(log_probs, torch.log(torch.tensor(PROXIMAL)),
                                                  torch.log(torch.tensor(BEHAVIOUR)), ADVANTAGES, CLIP, RHO_BAR)
    loss.backward()
    assert log_probs.grad is not None
    return loss.item(), log_probs.grad.tolist()


# pi/pi_prox = (1.25, 0.9): the first is clipped to 1.2 (A > 0), the second is inside the range.
# pi/mu = (1.0, 2.0); min(rho_bar, pi_prox/mu) = (0.8, 1.0).
HAND_COMPUTED = {
    # -mean(min(r A, clip(r) A)) with r = pi/pi_prox: -(1.2 - 1.8) / 2; only the unclipped second term has a gradient,
    # -(r A) / 2 = 0.9 with respect to log pi.
    "none": (0.3, [0.0, 0.9]),
    "vtrace": (0.3, [0.0, 0.9]),  # V-trace's correction is in its advantages; the policy loss is the same
    # -mean(min(rho_bar, pi/mu) * A * log pi) = -(1 * 1 * log 0.5 + 1 * -2 * log 0.2) / 2, gradient -(w A) / 2.
    "truncated_is": (-(math.log(0.5) - 2 * math.log(0.2)) / 2, [-0.5, 1.0]),
    # r = pi/mu = (1.0, 2.0): terms min(1, 1) = 1 and min(-4, -2.4) = -4 (the pessimistic, unclipped one).
    "ppo_clip": (1.5, [-0.5, 2.0]),
    # (0.8, 1.0) x none's terms (1.2, -1.8), the first clipped.
    "decoupled": (-(0.8 * 1.2 - 1.8) / 2, [0.0, 0.9]),
}


def test_the_config_offers_exactly_the_corrections_the_losses_define():
    assert set(CORRECTION_NAMES) == set(CORRECTIONS) == set(HAND_COMPUTED)


@pytest.mark.parametrize("correction", sorted(HAND_COMPUTED))
def test_each_correction_against_a_hand_computed_case(correction):
    loss, gradient = loss_and_gradient(correction)
    expected_loss, expected_gradient = HAND_COMPUTED[correction]
    assert loss == pytest.approx(expected_loss, rel=1e-6)
    assert gradient == pytest.approx(expected_gradient, rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("correction", sorted(HAND_COMPUTED))
def test_on_policy_each_correction_is_ppo(correction):
    """With mu = pi_prox, every correction's loss is PPO's clipped surrogate against pi_prox, at pi_prox and after the
    policy moved; truncated_is, unclipped, only at pi = pi_prox, where both are the policy gradient."""
    generator = torch.Generator().manual_seed(0)
    proximal = torch.rand(64, generator=generator).log()
    advantages = torch.randn(64, generator=generator)
    moves = (0.0,) if correction == "truncated_is" else (0.0, 0.3)  # up to 30% in log-probability
    for moved in moves:
        log_probs = proximal + moved * (2 * torch.rand(64, generator=generator) - 1)
        results = []
        for loss_of in (CORRECTIONS[correction].policy_loss, ppo_surrogate):
            taken = log_probs.clone().requires_grad_()
            loss, _ = loss_of(taken, proximal, proximal, advantages, CLIP, RHO_BAR)
            loss.backward()
            results.append((loss.item(), taken.grad))
        (loss, gradient), (ppo, ppo_gradient) = results
        if correction != "truncated_is":  # its loss is -mean(A log pi), not a ratio's
            assert loss == pytest.approx(ppo, rel=1e-6)
        torch.testing.assert_close(gradient, ppo_gradient)


def ppo_surrogate(log_probs: torch.Tensor, proximal: torch.Tensor, behaviour: torch.Tensor, advantages: torch.Tensor,
                  clip_range: float, rho_bar: float) -> tuple[torch.Tensor, torch.Tensor]:
    return clipped_surrogate(log_probs, proximal, advantages, clip_range)
