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
    # ratios [1, 3, 9] truncated at 3: the 9 fell outside the bounds (it is not counted)
    tally.add_importance_weights(torch.tensor([[1.0, 3.0, 3.0]]), torch.tensor([[False, True, True]]), mask)
    assert tally.figures() == {"kl": 3.0, "is_weight_mean": 2.0, "is_capped_fraction": 0.5}


# ---------------------------------------------------------------------- TRL's other loss types
def objective_of(**config):
    from magrpo import MAGRPOConfig
    from magrpo.objective import Objective

    return Objective.from_config(MAGRPOConfig(max_new_tokens=4, **config))


@pytest.mark.parametrize(
    "loss_type, normaliser, lengths, g, value",
    [
        # cispo: its weight min(r, epsilon_high) = 0.2 at r = 1 (TRL's epsilon_high defaults to epsilon)
        ("cispo", 4.0, (1.0, 1.0), 0.2, 0.2 * 6.75 / 4),
        ("sapo", 2.0, (3.0, 1.0), 1.0, 1.0 + 1 / 24),  # the gate's slope at r = 1 is 1; grpo's aggregation
        ("luspo", 2.0, (1.0, 1.0), 1.0, 3.375),  # the paper's "sequence" aggregation
        ("vespo", 4.0, (1.0, 1.0), 1.0, 1.6875),  # phi(1) = exp(lambda - lambda) = 1
    ],
)
def test_trls_other_loss_types_against_a_hand_computation(loss_type, normaliser, lengths, g, value):
    """One update: -(1/N) sum_s c_s A_s g sum_t log p, its gradient -c_s A_s g / N per counted token."""
    from magrpo.objective import policy_loss

    lp = LP.clone().requires_grad_()
    objective = objective_of(loss_type=loss_type)
    assert objective.normaliser(MASK) == normaliser
    loss, _ = policy_loss(objective, lp, MASK, ADV, normaliser=normaliser)
    assert loss.item() == pytest.approx(value, rel=1e-12)
    loss.backward()
    expected = -(ADV * g / torch.tensor(lengths, dtype=torch.float64))[:, None] * MASK / normaliser
    assert torch.allclose(lp.grad, expected, rtol=1e-12, atol=0)


def test_cispo_weights_each_token_by_its_capped_ratio_as_a_constant():
    from magrpo.loss import SurrogateSettings, surrogate_terms

    # r = [0.5, 2, 6] with epsilon_high = 5: weights [0.5, 2, 5], A = 1
    lp = torch.tensor([[0.5, 2.0, 6.0]], dtype=torch.float64).log().requires_grad_()
    out = surrogate_terms("cispo", SurrogateSettings(epsilon_high=5.0), lp, torch.zeros_like(lp),
                          torch.ones(1, 3, dtype=torch.bool), torch.tensor([1.0], dtype=torch.float64))  # fmt: skip
    out.terms.sum().backward()
    assert torch.allclose(lp.grad, torch.tensor([[-0.5, -2.0, -5.0]], dtype=torch.float64))
    assert out.clipped_high.tolist() == [[False, False, True]]


def test_sapos_gate_against_a_hand_computation():
    from magrpo.loss import SurrogateSettings, surrogate_terms

    # r = 1.5, A = +1 (tau_pos = 2) and A = -1 (tau_neg = 0.5): -sigmoid(tau (r - 1)) 4 / tau A
    lp = torch.full((2, 1), math.log(1.5), dtype=torch.float64).requires_grad_()
    settings = SurrogateSettings(sapo_temperature_pos=2.0, sapo_temperature_neg=0.5)
    out = surrogate_terms("sapo", settings, lp, torch.zeros_like(lp), torch.ones(2, 1, dtype=torch.bool),
                          torch.tensor([1.0, -1.0], dtype=torch.float64))  # fmt: skip

    def sigmoid(z):
        return 1 / (1 + math.exp(-z))

    assert out.terms[:, 0].tolist() == pytest.approx([-sigmoid(1.0) * 2, sigmoid(0.25) * 8], rel=1e-12)
    out.terms.sum().backward()
    # d/d log pi = r * d/dr: -A r * 4 sigmoid' (tau (r - 1))
    slopes = [4 * sigmoid(1.0) * (1 - sigmoid(1.0)), 4 * sigmoid(0.25) * (1 - sigmoid(0.25))]
    assert lp.grad[:, 0].tolist() == pytest.approx([-1.5 * slopes[0], 1.5 * slopes[1]], rel=1e-12)


def test_vespos_gamma_weight_against_a_hand_computation():
    from magrpo.loss import SurrogateSettings, vespo_weights

    settings = SurrogateSettings()  # (k, lambda) = (2, 3) where A >= 0, (3, 2) where A < 0
    # w = prod r = 0.5 * 1 (the padding's log-ratio 5 is not counted), times the sampler weights 2 * 1
    log_ratio = torch.tensor([[math.log(0.5), 0.0, 5.0]] * 2, dtype=torch.float64)
    mask = torch.tensor([[True, True, False]] * 2)
    sampler = torch.tensor([[2.0, 1.0, 1.0]] * 2, dtype=torch.float64)
    adv = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    phi = vespo_weights(settings, adv, log_ratio, mask, sampler)
    assert phi[:, 0].tolist() == pytest.approx([1.0, 1.0], rel=1e-12)  # w = 1: phi(1) = 1
    phi = vespo_weights(settings, adv, log_ratio, mask, None)  # w = 0.5
    expected = [math.exp(3 + 2 * math.log(0.5) - 3 * 0.5), math.exp(2 + 3 * math.log(0.5) - 2 * 0.5)]
    assert phi[:, 0].tolist() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "mode, weights, outside",
    [
        # token ratios [4, 0.5 | 1] (the padding's ratio is 1), bounds [0.6, 3]
        ("token_truncate", [[3.0, 0.6, 1.0]], [[True, True, False]]),
        ("token_mask", [[0.0, 0.0, 1.0]], [[True, True, False]]),
        # the completion's ratio: 4 * 0.5 = 2, inside
        ("sequence_truncate", [[2.0]], [[False]]),
        ("sequence_mask", [[2.0]], [[False]]),
    ],
)
def test_every_importance_sampling_mode_against_a_hand_computation(mode, weights, outside):
    from magrpo.loss import importance_weights

    old = torch.tensor([[math.log(0.4), math.log(0.1), 0.0]], dtype=torch.float64)
    sampler = torch.tensor([[math.log(0.1), math.log(0.2), -7.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False]])
    got, out = importance_weights(old, sampler, mask, mode, clip_min=0.6, clip_max=3.0)
    assert torch.allclose(got, torch.tensor(weights, dtype=torch.float64), rtol=1e-12)
    assert out.tolist() == outside


def test_the_off_policy_mask_drops_only_far_completions_with_negative_advantage():
    from magrpo.loss import off_policy_sequence_mask

    lp = torch.zeros(3, 2, dtype=torch.float64)
    # mean log(pi_sampler / pi): 0.5, 0.5, 0.1
    sampling = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.1, 0.1]], dtype=torch.float64)
    mask = torch.ones(3, 2, dtype=torch.bool)
    keep = off_policy_sequence_mask(torch.tensor([1.0, -1.0, -1.0]), lp, sampling, mask, threshold=0.2)
    assert keep[:, 0].tolist() == [1.0, 0.0, 1.0]  # far with A > 0 kept; far with A < 0 dropped; near kept


def test_the_entropy_masks_keep_the_top_share_of_every_batchs_counted_tokens_together():
    from magrpo.loss import high_entropy_masks

    # counted entropies 1..6 over two batches; the 0.5 quantile (linear) is 3.5: keep 4, 5, 6
    first = torch.tensor([[1.0, 5.0, 99.0]])
    second = torch.tensor([[6.0, 2.0], [3.0, 4.0]])
    masks = high_entropy_masks(
        [first, second], [torch.tensor([[True, True, False]]), torch.ones(2, 2, dtype=torch.bool)], 0.5
    )
    assert masks[0].tolist() == [[False, True, False]]  # the padding's 99 neither counts nor is kept
    assert masks[1].tolist() == [[True, False], [False, True]]


def test_the_bias_corrected_kl_adds_k3_times_the_score_at_the_first_update():
    from magrpo.objective import policy_loss

    lp = torch.tensor([[math.log(0.5), math.log(0.25)]], dtype=torch.float64).requires_grad_()
    ref = torch.tensor([[math.log(0.25), math.log(0.25)]], dtype=torch.float64)
    mask = torch.ones(1, 2, dtype=torch.bool)
    grads = {}
    for on in (False, True):
        lp.grad = None
        objective = objective_of(beta=1.0, use_bias_correction_kl=on)
        loss, _ = policy_loss(objective, lp, mask, torch.zeros(1, dtype=torch.float64), ref_logprobs=ref)
        assert loss.item() == pytest.approx(math.log(2) - 0.5, rel=1e-12)  # the value: k3 alone
        loss.backward()
        grads[on] = lp.grad.clone()
    # d k3 / d log pi = 1 - pi_ref / pi = [0.5, 0]; corrected: + k3 = [log 2 - 0.5, 0]
    assert grads[False].tolist()[0] == pytest.approx([0.5, 0.0], abs=1e-15)
    assert grads[True].tolist()[0] == pytest.approx([0.5 + math.log(2) - 0.5, 0.0], abs=1e-15)


def test_the_loss_type_table_names_the_configs_choices_and_the_clipped_ones():
    from magrpo.choices import CLIPPED_LOSS_TYPES, LOSS_TYPES
    from magrpo.loss import LOSS_TYPE_TABLE

    assert tuple(LOSS_TYPE_TABLE) == LOSS_TYPES
    assert tuple(n for n, row in LOSS_TYPE_TABLE.items() if row.surrogate == "clip") == CLIPPED_LOSS_TYPES
