import pytest
import torch

from magrpo.policy import (
    completion_mask,
    completion_token_logprobs,
    loss_normaliser,
    policy_gradient_loss,
    policy_gradient_loss_sum,
    selected_token_logprobs,
)

EOS = 0


def test_mask_counts_tokens_up_to_and_including_the_first_eos():
    ids = torch.tensor([[5, 6, EOS, EOS, EOS], [EOS, 7, 8, 9, 9], [5, 6, 7, 8, 9]])
    assert completion_mask(ids, [EOS]).tolist() == [
        [True, True, True, False, False],
        [True, False, False, False, False],
        [True, True, True, True, True],  # cut at max_new_tokens: every token counts
    ]


def test_mask_accepts_several_eos_ids():
    ids = torch.tensor([[5, 3, 6, 0]])
    assert completion_mask(ids, [0, 3]).tolist() == [[True, True, False, False]]


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


def test_selected_logprobs_match_log_softmax_chunked_or_not():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11)
    tokens = torch.randint(0, 11, (3, 7))
    full = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(selected_token_logprobs(logits, tokens), full, atol=1e-6)
    assert torch.allclose(selected_token_logprobs(logits, tokens, chunk_size=2), full, atol=1e-6)


def test_batched_logprobs_with_left_padding_match_unpadded_single_forwards(tiny_agents):
    model = tiny_agents[0].model
    prompts = [[5, 2, 3], [4]]  # the second is left-padded by two
    completions = [[2, 3, EOS], [4, EOS, EOS]]
    prompt_ids = torch.tensor([[5, 2, 3], [EOS, EOS, 4]])
    prompt_mask = torch.tensor([[1, 1, 1], [0, 0, 1]])
    completion_ids = torch.tensor(completions)
    mask = completion_mask(completion_ids, [EOS])
    batched = completion_token_logprobs(model, prompt_ids, prompt_mask, completion_ids, mask, temperature=0.7)
    for row, (p, c) in enumerate(zip(prompts, completions)):
        n = int(mask[row].sum())
        seq = torch.tensor([p + c[:n]])
        logits = model(input_ids=seq).logits[0, len(p) - 1 : len(p) - 1 + n] / 0.7
        expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c[:n]).unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(batched[row, :n], expected, atol=1e-5)


def test_loss_sum_is_additive_over_micro_batches():
    torch.manual_seed(1)
    lp = torch.randn(6, 5)
    mask = torch.rand(6, 5) > 0.3
    adv = torch.randn(6)
    whole = policy_gradient_loss(lp, mask, adv, "token")
    parts = sum(policy_gradient_loss_sum(lp[i : i + 2], mask[i : i + 2], adv[i : i + 2]) for i in range(0, 6, 2))
    assert (parts / loss_normaliser(mask, "token")).item() == pytest.approx(whole.item(), abs=1e-6)
