"""The per-agent loss against hand computations: its value, its gradient (EOS yes, padding no),
micro-batches that add up, and the truncated importance weights of a sampling copy."""

from __future__ import annotations

import pytest
import torch

from magrpo.logprobs import completion_mask
from magrpo.loss import loss_normaliser, policy_gradient_loss_sum, truncated_importance_weights

EOS = 0


def policy_gradient_loss(lp, mask, adv, aggregation):
    """The normalised loss of one whole batch, as the step computes it with a single micro-batch."""
    return policy_gradient_loss_sum(lp, mask, adv) / loss_normaliser(mask, aggregation)


def test_loss_against_a_hand_computation():
    lp = torch.tensor([[-1.0, -2.0, -0.5, -9.0], [-0.25, -9.0, -9.0, -9.0]])
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    adv = torch.tensor([2.0, -1.0])
    # sequence: -(2 * (-3.5) + (-1) * (-0.25)) / 2 = -(-7 + 0.25) / 2 = 3.375
    assert policy_gradient_loss(lp, mask, adv, "sequence").item() == pytest.approx(3.375)
    # token: -(2 * (-3.5) + (-1) * (-0.25)) / 4 counted tokens = 1.6875
    assert policy_gradient_loss(lp, mask, adv, "token").item() == pytest.approx(1.6875)
    assert loss_normaliser(mask, "sequence") == 2.0 and loss_normaliser(mask, "token") == 4.0


def test_gradient_reaches_eos_but_not_padding():
    ids = torch.tensor([[5, 6, EOS, EOS]])
    mask = completion_mask(ids, [EOS])
    lp = torch.full((1, 4), -1.0, requires_grad=True)
    policy_gradient_loss(lp, mask, torch.tensor([3.0]), "sequence").backward()
    assert lp.grad.tolist() == [[-3.0, -3.0, -3.0, 0.0]]  # the EOS (index 2) carries gradient


def test_loss_sum_is_additive_over_micro_batches():
    torch.manual_seed(1)
    lp = torch.randn(6, 5)
    mask = torch.rand(6, 5) > 0.3
    adv = torch.randn(6)
    whole = policy_gradient_loss(lp, mask, adv, "token")
    parts = sum(policy_gradient_loss_sum(lp[i : i + 2], mask[i : i + 2], adv[i : i + 2]) for i in range(0, 6, 2))
    assert (parts / loss_normaliser(mask, "token")).item() == pytest.approx(whole.item(), abs=1e-6)


def test_truncated_importance_weights_are_the_capped_ratio_and_carry_no_gradient():
    logprobs = torch.log(torch.tensor([[0.5, 0.2, 0.9]])).requires_grad_()
    sampler = torch.log(torch.tensor([[0.25, 0.4, 0.1]]))
    weights = truncated_importance_weights(logprobs, sampler, cap=3.0)
    assert torch.allclose(weights, torch.tensor([[2.0, 0.5, 3.0]]), rtol=1e-6)  # 2, 1/2, 9 capped at 3
    assert not weights.requires_grad


def test_weighted_loss_gradient_is_each_token_weight_times_its_advantage():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -4.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    advantages = torch.tensor([1.5, -2.0])
    weights = torch.tensor([[2.0, 0.5, 3.0], [1.0, 0.25, 0.75]])
    loss = policy_gradient_loss_sum(logprobs, mask, advantages, weights)
    loss.backward()
    expected_grad = -(advantages[:, None] * weights * mask)
    assert torch.equal(logprobs.grad, expected_grad)
    assert loss.item() == pytest.approx(-(1.5 * (2.0 * -1.0 + 0.5 * -2.0) - 2.0 * (-0.3 + 0.25 * -0.7 + 0.75 * -4.0)))
    # weights of 1 give back the plain on-policy loss, bit for bit
    assert torch.equal(
        policy_gradient_loss_sum(logprobs, mask, advantages, torch.ones_like(weights)),
        policy_gradient_loss_sum(logprobs, mask, advantages),
    )
