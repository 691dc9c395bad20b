"""Which completion tokens count, and their log-probabilities: masks, batched and chunked scoring,
and the shared-prompt pass against the full one down to the gradients."""

from __future__ import annotations

import torch

from magrpo.logprobs import (
    completion_mask,
    completion_token_logprobs,
    selected_token_logprobs,
    shared_prompt_token_logprobs,
)
from magrpo.sampling import SamplingSettings
from magrpo.sampling.fast import sample_fast
from tests.conftest import PROMPTS, agent_for

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


def test_selected_logprobs_match_log_softmax_chunked_or_not():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11)
    tokens = torch.randint(0, 11, (3, 7))
    full = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(selected_token_logprobs(logits, tokens), full, atol=1e-6)
    assert torch.allclose(selected_token_logprobs(logits, tokens, chunk_size=2), full, atol=1e-6)


def test_batched_logprobs_with_left_padding_match_unpadded_single_forwards(tiny_agents):
    model = tiny_agents[0].model
    on = dict(device=model.device)  # the agents' device (TEST_DEVICE)
    prompts = [[5, 2, 3], [4]]  # the second is left-padded by two
    completions = [[2, 3, EOS], [4, EOS, EOS]]
    prompt_ids = torch.tensor([[5, 2, 3], [EOS, EOS, 4]], **on)
    prompt_mask = torch.tensor([[1, 1, 1], [0, 0, 1]], **on)
    completion_ids = torch.tensor(completions, **on)
    mask = completion_mask(completion_ids, [EOS])
    batched = completion_token_logprobs(model, prompt_ids, prompt_mask, completion_ids, mask, temperature=0.7)
    for row, (p, c) in enumerate(zip(prompts, completions)):
        n = int(mask[row].sum())
        seq = torch.tensor([p + c[:n]], **on)
        logits = model(input_ids=seq).logits[0, len(p) - 1 : len(p) - 1 + n] / 0.7
        expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c[:n], **on).unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(batched[row, :n], expected, atol=1e-5)


# ---------------------------------------------------------------------------- (c) chunked log-softmax
def test_chunked_selected_logprobs_match_full_log_softmax_on_a_large_vocabulary():
    torch.manual_seed(0)
    logits = torch.randn(3, 37, 5000) * 4
    tokens = torch.randint(0, 5000, (3, 37))
    reference = torch.log_softmax(logits.double(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    for chunk in (None, 1, 5, 16, 37, 100):
        got = selected_token_logprobs(logits, tokens, chunk_size=chunk)
        assert got.dtype == torch.float32
        assert torch.allclose(got.double(), reference, atol=1e-5), chunk


def test_bfloat16_logits_are_scored_in_float32():
    torch.manual_seed(1)
    logits = (torch.randn(2, 9, 3000) * 4).bfloat16()
    tokens = torch.randint(0, 3000, (2, 9))
    reference = torch.log_softmax(logits.double(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(selected_token_logprobs(logits, tokens, chunk_size=4).double(), reference, atol=1e-5)


# ---------------------------------------------------------------------------- (f) one prompt pass per prompt
def test_shared_prompt_scoring_matches_the_full_pass_in_value_and_gradient(tiny_tokenizer):
    """Each distinct prompt run once (its keys/values gathered per row) against every row run in
    full: log-probs within 1e-5, every parameter gradient within 1e-5 of its largest entry."""
    agent = agent_for(tiny_tokenizer, seed=4, scale=8.0)
    torch.manual_seed(0)
    G = 3
    rollout = sample_fast(agent, PROMPTS, SamplingSettings(num_generations=G, max_new_tokens=10, temperature=1.0))
    mask = rollout.completion_mask
    assert len(set(mask.sum(dim=1).tolist())) > 1
    # rows of a micro-batch need not cover whole groups: drop a few and shuffle the rest
    rows = torch.tensor([11, 0, 4, 5, 2, 9, 3, 7])
    prompts, index = torch.unique(rows // G, return_inverse=True)
    model = agent.model.train()
    params = [p for p in model.parameters()]
    args = (rollout.completion_ids[rows], mask[rows])
    full = completion_token_logprobs(model, rollout.prompt_ids[rows // G], rollout.prompt_mask[rows // G], *args)
    shared = shared_prompt_token_logprobs(
        model, rollout.prompt_ids[prompts], rollout.prompt_mask[prompts], index, *args
    )
    m = mask[rows]
    assert torch.allclose(shared[m], full[m], atol=1e-5)
    weights = torch.randn(m.shape)  # any linear loss, e.g. advantage-weighted
    for got, ref in zip(
        torch.autograd.grad((shared * weights * m).sum(), params),
        torch.autograd.grad((full * weights * m).sum(), params),
    ):
        assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_scoring_mode_turns_dropout_off_keeps_checkpointing_and_restores_modes(tiny_tokenizer):
    from magrpo.logprobs import scoring_mode
    from magrpo.models import build_agents
    from tests.conftest import make_tiny_model

    agent = build_agents(
        [(make_tiny_model(len(tiny_tokenizer), seed=1), tiny_tokenizer)],
        device="cpu",
        use_lora=True,
        lora_r=4,
        lora_dropout=0.9,
        gradient_checkpointing=True,
    )[0]
    model = agent.model
    model.train()
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    checkpointed = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False)]
    assert dropouts and checkpointed
    ids = torch.tensor([[2, 3, 4]])
    mask = torch.ones(1, 3, dtype=torch.long)
    completion = torch.tensor([[5, 2, 0]])
    cmask = torch.ones(1, 3, dtype=torch.bool)
    with scoring_mode(model):
        assert not any(m.training for m in dropouts) and all(m.training for m in checkpointed)
        first = completion_token_logprobs(model, ids, mask, completion, cmask)
        second = completion_token_logprobs(model, ids, mask, completion, cmask)
        assert first.requires_grad and torch.equal(first, second)  # no dropout noise
    assert all(m.training for m in model.modules())  # restored
    model.eval()
    with torch.no_grad():
        assert torch.allclose(completion_token_logprobs(model, ids, mask, completion, cmask), first.detach(), atol=1e-6)


def test_chunked_logprobs_under_autograd_give_the_same_values_and_gradients_bitwise():
    torch.manual_seed(0)
    tokens = torch.randint(0, 300, (3, 11))
    for dtype, temperature in ((torch.float32, 0.7), (torch.bfloat16, 1.0)):
        base = torch.randn(3, 11, 300).to(dtype)
        grads, values = [], []
        for chunk in (None, 4):
            logits = base.clone().requires_grad_(True)
            out = selected_token_logprobs(logits, tokens, chunk_size=chunk, temperature=temperature)
            (out * torch.linspace(-1, 1, 11)).sum().backward()
            values.append(out.detach())
            grads.append(logits.grad)
        assert torch.equal(values[0], values[1]) and torch.equal(grads[0], grads[1]), dtype


def test_chunks_are_recomputed_in_the_backward_pass_not_kept():
    """What autograd keeps for the backward pass: the float32 log-softmax input of one chunk at a
    time (recomputed) instead of the whole [B, L, V] float32 copy."""
    logits = torch.randn(2, 64, 1000, dtype=torch.bfloat16, requires_grad=True)
    tokens = torch.randint(0, 1000, (2, 64))
    kept = []

    def pack(tensor):
        kept.append(tensor.numel() * tensor.element_size())
        return tensor

    for chunk in (None, 8):
        kept.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            selected_token_logprobs(logits, tokens, chunk_size=chunk)
        if chunk is None:
            full = max(kept)
        else:
            chunked = max(kept)
    assert full >= 2 * 64 * 1000 * 4  # the whole float32 copy
    assert chunked <= 2 * 64 * 1000 * 2  # never more than the bf16 logits themselves


def test_the_entropies_are_the_tempered_distributions_with_their_gradient_chunked_or_not():
    torch.manual_seed(2)
    logits = (torch.randn(2, 6, 50) * 3).double()
    tokens = torch.randint(0, 50, (2, 6))
    log_probs = torch.log_softmax(logits.double() / 0.7, dim=-1)
    reference = -(log_probs.exp() * log_probs).sum(-1)
    grads = []
    for chunk in (None, 4):
        leaf = logits.float().requires_grad_()
        lp, entropies = selected_token_logprobs(leaf, tokens, chunk, temperature=0.7, with_entropy=True)
        assert torch.allclose(entropies.double(), reference, atol=1e-5)
        assert torch.allclose(lp.double(), log_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), atol=1e-5)
        (entropies.sum() + lp.sum()).backward()
        grads.append(leaf.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)  # recomputed chunks: the same gradient
