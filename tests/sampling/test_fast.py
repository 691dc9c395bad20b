"""The fast sampler against the plain one it replaces, on tiny random models (a few seconds).

Tolerances: token ids exactly equal; log-probabilities within 1e-4 (float32 rounding of different
kernel shapes); sampling frequencies within 4.5 binomial standard deviations."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from magrpo.logprobs import cache_keyword, completion_token_logprobs
from magrpo.sampling import SamplingSettings
from magrpo.sampling.fast import draw, new_cache, sample_fast
from magrpo.sampling.plain import sample_plain
from magrpo.sampling.rollout import Rollout
from tests.conftest import PROMPTS, agent_for, assert_frequencies, first_token_probs, peaked_model, repeat_prompts


# ---------------------------------------------------------------------------- (a) greedy equality
def test_greedy_fast_sampler_equals_generate_token_for_token(tiny_tokenizer):
    lengths = set()
    for seed in range(6):
        agent = agent_for(tiny_tokenizer, seed)
        plain = sample_plain(agent, PROMPTS, SamplingSettings(num_generations=1, max_new_tokens=12, temperature=0.0))
        fast = sample_fast(agent, PROMPTS, SamplingSettings(num_generations=1, max_new_tokens=12, temperature=0.0))
        assert isinstance(fast, Rollout)
        assert torch.equal(fast.prompt_ids, plain.prompt_ids) and torch.equal(fast.prompt_mask, plain.prompt_mask)
        assert torch.equal(fast.completion_ids, plain.completion_ids), f"seed {seed}"
        assert torch.equal(fast.completion_mask, plain.completion_mask)
        assert fast.texts == plain.texts and fast.prompts == plain.prompts
        lengths.update(fast.completion_mask.sum(dim=1).tolist())
    # rows that stop at once, part-way and never: the row-dropping path ran
    assert 1 in lengths and 12 in lengths and len(lengths) >= 4


def test_greedy_with_several_generations_repeats_the_greedy_answer(tiny_tokenizer):
    # generate refuses greedy with num_return_sequences > 1; the fast sampler gives G equal rows
    agent = agent_for(tiny_tokenizer, seed=2)
    one = sample_plain(agent, PROMPTS, SamplingSettings(num_generations=1, max_new_tokens=10, temperature=0.0))
    three = sample_fast(agent, PROMPTS, SamplingSettings(num_generations=3, max_new_tokens=10, temperature=0.0))
    assert torch.equal(three.completion_ids, one.completion_ids.repeat_interleave(3, 0))


# ---------------------------------------------------------------------------- (b) sampling-time log-probs
@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (1.3, 0.8), (0.0, 1.0)])
def test_sampling_logprobs_match_a_full_forward(tiny_tokenizer, temperature, top_p):
    agent = agent_for(tiny_tokenizer, seed=4, scale=8.0)
    torch.manual_seed(0)
    G = 3
    rollout = sample_fast(
        agent, PROMPTS, SamplingSettings(num_generations=G, max_new_tokens=16, temperature=temperature, top_p=top_p)
    )
    prompt_ids, prompt_mask = repeat_prompts(rollout, G)
    with torch.no_grad():
        full = completion_token_logprobs(
            agent.model, prompt_ids, prompt_mask, rollout.completion_ids, rollout.completion_mask, temperature or 1.0
        )
    mask = rollout.completion_mask
    assert torch.allclose(rollout.token_logprobs[mask], full[mask], atol=1e-4)
    assert (rollout.token_logprobs[~mask] == 0).all()
    assert len(set(mask.sum(dim=1).tolist())) > 1  # completions of different lengths


def test_reserved_cache_matches_dynamic_cache_and_grows_past_its_room(tiny_tokenizer):
    model = peaked_model(tiny_tokenizer, seed=1, scale=8.0).eval()
    ids = torch.tensor([[2, 3, 4, 5, 2, 3]])
    with torch.no_grad():
        caches = [new_cache(model, capacity=4), DynamicCache(config=model.config)]  # 4 < 6 + 3: it must grow
        logits = []
        for cache in caches:
            out = [model(input_ids=ids, **{cache_keyword(model): cache}, use_cache=True).logits[:, -1]]
            for token in (4, 5, 2):
                out.append(
                    model(input_ids=torch.tensor([[token]]), **{cache_keyword(model): cache}, use_cache=True).logits[
                        :, -1
                    ]
                )
            logits.append(torch.cat(out))
    assert caches[0].get_seq_length() == 9
    assert torch.allclose(logits[0], logits[1], atol=1e-5)


# ---------------------------------------------------------------------------- (e) sampling distribution
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_first_tokens_follow_the_softmax(tiny_tokenizer, temperature):
    agent = agent_for(tiny_tokenizer, seed=4, scale=4.0)
    probs = first_token_probs(agent, PROMPTS[0], temperature)
    assert (probs > 0.05).sum() >= 3  # a distribution worth testing
    torch.manual_seed(1234)
    rollout = sample_fast(
        agent, PROMPTS[:1], SamplingSettings(num_generations=20_000, max_new_tokens=1, temperature=temperature)
    )
    assert_frequencies(rollout.completion_ids[:, 0], probs)


def test_top_p_keeps_the_nucleus_renormalised(tiny_tokenizer):
    agent = agent_for(tiny_tokenizer, seed=4, scale=4.0)
    probs = first_token_probs(agent, PROMPTS[0], 1.0)
    top_p = 0.75
    ordered, order = probs.sort(descending=True)
    kept = order[(ordered.cumsum(0) - ordered) < top_p]  # smallest set holding top_p of the mass
    nucleus = torch.zeros_like(probs)
    nucleus[kept] = probs[kept] / probs[kept].sum()
    assert 1 < len(kept) < len(probs)
    torch.manual_seed(99)
    rollout = sample_fast(
        agent, PROMPTS[:1], SamplingSettings(num_generations=20_000, max_new_tokens=1, temperature=1.0, top_p=top_p)
    )
    assert_frequencies(rollout.completion_ids[:, 0], nucleus)


def test_draw_inverts_the_cdf_and_never_picks_a_token_without_mass():
    probs = torch.tensor([[0.0, 0.2, 0.0, 0.5, 0.3, 0.0]]).repeat(50_000, 1) * 3.0  # unnormalised on purpose
    torch.manual_seed(7)
    samples = draw(probs)
    assert_frequencies(samples, probs[0].double() / 3.0)
    edge = torch.tensor([[0.0, 1.0, 0.0]])  # rows whose mass is all on one token
    assert draw(edge.repeat(1000, 1)).eq(1).all()


def test_same_seed_same_samples(tiny_tokenizer):
    agent = agent_for(tiny_tokenizer, seed=0, scale=4.0)
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        runs.append(
            sample_fast(
                agent, PROMPTS, SamplingSettings(num_generations=4, max_new_tokens=10, temperature=1.0)
            ).completion_ids
        )
    assert torch.equal(runs[0], runs[1])
