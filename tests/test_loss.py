"""The per-agent loss against hand computations: its value, its gradient (EOS yes, padding no),
micro-batches that add up, the truncated importance weights of a sampling copy, every loss
type's normaliser, the clipped surrogate (both sides, both levels) and the k3 KL."""

from __future__ import annotations

import math

import pytest
import torch

from magrpo.logprobs import completion_mask
from magrpo.loss import (
    UpdateTally,
    clipped_surrogate,
    k3_kl,
    loss_normaliser,
    policy_gradient_loss_sum,
    sequence_scale,
    token_terms_loss_sum,
    truncated_importance_weights,
)

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


# ---------------------------------------------------------------------- loss types
LP = torch.tensor([[-1.0, -2.0, -0.5, -9.0], [-0.25, -9.0, -9.0, -9.0]], dtype=torch.float64)
MASK = torch.tensor([[True, True, True, False], [True, False, False, False]])
ADV = torch.tensor([2.0, -1.0], dtype=torch.float64)


@pytest.mark.parametrize(
    "loss_type, normaliser, value",
    [
        ("sequence", 2.0, 3.375),  # -(2 * -3.5 + -1 * -0.25) / 2
        ("token", 4.0, 1.6875),  # ... / 4 counted tokens
        ("grpo", 2.0, 1.0 + 1 / 24),  # -(2 * -3.5 / 3 + -1 * -0.25 / 1) / 2
        ("dr_grpo", 8.0, 0.84375),  # ... / (2 completions * max_new_tokens 4)
        ("dapo", 4.0, 1.6875),
        ("bnpo", 4.0, 1.6875),
    ],
)
def test_every_loss_type_against_a_hand_computation(loss_type, normaliser, value):
    lp = LP.clone().requires_grad_()
    n = loss_normaliser(MASK, loss_type, max_new_tokens=4)
    assert n == normaliser
    loss = policy_gradient_loss_sum(lp, MASK, ADV, scale=sequence_scale(MASK, loss_type)) / n
    assert loss.item() == pytest.approx(value, rel=1e-12)
    loss.backward()
    lengths = (
        torch.tensor([3.0, 1.0], dtype=torch.float64) if loss_type == "grpo" else torch.ones(2, dtype=torch.float64)
    )
    expected = -(ADV / lengths)[:, None] * MASK / normaliser  # each counted token: -c_s A_s / N
    assert torch.allclose(lp.grad, expected, rtol=0, atol=1e-15)


def test_dr_grpo_needs_max_new_tokens_and_unknown_types_are_named_by_the_config():
    from magrpo import MAGRPOConfig

    with pytest.raises(ValueError, match="max_new_tokens"):
        loss_normaliser(MASK, "dr_grpo")
    # names are checked once, where the run is configured: the loss takes them as given
    with pytest.raises(Exception, match="loss_type='mean' is not valid; choose one of 'sequence', 'token', 'grpo'"):
        MAGRPOConfig(loss_type="mean")


# ---------------------------------------------------------------------- the clipped surrogate
def test_token_level_clip_holds_each_side_only_where_it_stops_the_advantage():
    # ratios r = [1.5, 0.5, 1.1] for both rows; A = +1 for row 0, -1 for row 1; clip [0.8, 1.28]
    ratios = torch.tensor([[1.5, 0.5, 1.1], [1.5, 0.5, 1.1]], dtype=torch.float64)
    lp = ratios.log().requires_grad_()
    old = torch.zeros_like(lp)
    mask = torch.ones(2, 3, dtype=torch.bool)
    clip = clipped_surrogate(lp, old, mask, torch.tensor([1.0, -1.0], dtype=torch.float64), 0.2, 0.28)
    # A > 0: -min(r, clip(r)): 1.5 is held at 1.28, 0.5 is not raised to 0.8 (the min keeps 0.5)
    # A < 0: -min(-r, -clip(r)) = max(r, clip(r)): 1.5 stays (no upper hold), 0.5 is held at 0.8
    assert torch.allclose(clip.terms, torch.tensor([[-1.28, -0.5, -1.1], [1.5, 0.8, 1.1]], dtype=torch.float64))
    assert clip.clipped_high.tolist() == [[True, False, False], [False, False, False]]
    assert clip.clipped_low.tolist() == [[False, False, False], [False, True, False]]
    token_terms_loss_sum(clip.terms, mask).backward()
    # d(-r A)/d log pi = -r A where the ratio is free; 0 where the clip holds it
    assert torch.allclose(lp.grad, torch.tensor([[0.0, -0.5, -1.1], [1.5, 0.0, 1.1]], dtype=torch.float64))


def test_sequence_level_clip_takes_one_ratio_per_completion_over_its_counted_tokens():
    # row 0: log-ratios [log 1.5, log 1.5] -> r = 1.5 > 1.28 with A > 0: held, no gradient
    # row 1: log-ratios [log 2, log 0.5, (not counted) log 100] -> r = exp(0) = 1, A < 0: free
    log_ratios = torch.tensor([[1.5, 1.5, 1.0], [2.0, 0.5, 100.0]], dtype=torch.float64).log()
    mask = torch.tensor([[True, True, False], [True, True, False]])
    lp = log_ratios.clone().requires_grad_()
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    clip = clipped_surrogate(lp, torch.zeros_like(lp), mask, adv, 0.2, 0.28, level="sequence")
    assert torch.allclose(clip.ratio[:, 0], torch.tensor([1.5, 1.0], dtype=torch.float64))
    assert torch.allclose(clip.terms[mask], torch.tensor([-1.28, -1.28, 1.0, 1.0], dtype=torch.float64))
    assert clip.clipped_high[0].all() and not clip.clipped_high[1].any() and not clip.clipped_low.any()
    token_terms_loss_sum(clip.terms, mask).backward()
    # row 1: d/d lp_t of sum_t r over 2 tokens, r = exp(mean of 2): 2 * r / 2 = 1 per counted token
    assert torch.allclose(lp.grad, torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 0.0]], dtype=torch.float64))


def test_at_the_first_iteration_the_clipped_surrogate_has_the_reinforce_gradient():
    torch.manual_seed(0)
    lp = torch.randn(3, 5, dtype=torch.float64).requires_grad_()
    mask = torch.rand(3, 5) > 0.3
    adv = torch.randn(3, dtype=torch.float64)
    clip = clipped_surrogate(lp, lp.detach(), mask, adv, 0.2, 0.2)
    assert torch.all(clip.ratio == 1.0) and not clip.clipped_low.any() and not clip.clipped_high.any()
    (grad,) = torch.autograd.grad(token_terms_loss_sum(clip.terms, mask), lp)
    (reinforce,) = torch.autograd.grad(policy_gradient_loss_sum(lp, mask, adv), lp)
    assert torch.equal(grad, reinforce)


# ---------------------------------------------------------------------- the KL to the reference
def test_k3_against_a_hand_computation():
    lp = torch.tensor([[0.5, 0.25]], dtype=torch.float64).log().requires_grad_()
    ref = torch.tensor([[0.25, 0.25]], dtype=torch.float64).log()
    kl = k3_kl(lp, ref)
    # d = log(0.25 / 0.5): exp(d) - d - 1 = 0.5 + log 2 - 1; equal policies: exactly 0
    assert kl[0, 0].item() == pytest.approx(math.log(2) - 0.5, rel=1e-12)
    assert kl[0, 1].item() == 0.0
    kl.sum().backward()
    # d k3 / d log pi = 1 - pi_ref / pi
    assert torch.allclose(lp.grad, torch.tensor([[0.5, 0.0]], dtype=torch.float64))


def test_the_tally_averages_each_figure_over_the_counted_tokens_it_saw():
    tally = UpdateTally()
    mask = torch.tensor([[True, True, False]])
    tally.add("kl", torch.tensor([[1.0, 3.0, 100.0]]), mask)
    tally.add("kl", torch.tensor([[5.0, 0.0, 0.0]]), torch.tensor([[True, False, False]]))
    tally.add_importance_weights(torch.tensor([[1.0, 3.0, 9.0]]), mask, cap=3.0)
    assert tally.figures() == {"kl": 3.0, "is_weight_mean": 2.0, "is_capped_fraction": 0.5}
