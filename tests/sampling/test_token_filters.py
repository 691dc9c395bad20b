"""Each agent's own top_k, min_p and repetition_penalty (TRL's sampling options), honoured by the
three samplers: the fast sampler's draws keep only what the filters keep, its greedy answers
with a repetition penalty are transformers' token for token, and the plain and vLLM samplers
hand the same values to ``generate`` and to vLLM's SamplingParams."""

from __future__ import annotations

import torch

from magrpo import MAGRPOConfig
from magrpo.sampling import AgentSampling, SamplingSettings, TokenFilter, agent_sampling, sampler_for
from magrpo.sampling.fast import sample_fast, sample_next_tokens
from magrpo.sampling.plain import generation_config, sample_plain
from magrpo.sampling.vllm_sampler import sampling_requests
from tests.conftest import PROMPTS, agent_for

LOGITS = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.07, 0.03]]))


def draws(token_filter: TokenFilter, n: int = 4000, seen=None, temperature: float = 1.0) -> torch.Tensor:
    logits = LOGITS.expand(n, -1)
    generator = torch.Generator().manual_seed(0)
    return sample_next_tokens(logits, temperature, 1.0, generator, None, token_filter, seen)


def test_top_k_draws_only_the_k_likeliest_tokens_in_their_proportions():
    tokens = draws(TokenFilter(top_k=2))
    assert set(tokens.tolist()) == {0, 1}
    share = (tokens == 0).double().mean().item()
    assert abs(share - 2 / 3) < 4.5 * (2 / 9 / 4000) ** 0.5  # 0.5 / (0.5 + 0.25), within 4.5 sd


def test_min_p_drops_the_tokens_below_its_share_of_the_likeliest():
    # 0.2 * 0.5 = 0.1: tokens 3 (0.07) and 4 (0.03) go
    assert set(draws(TokenFilter(min_p=0.2)).tolist()) == {0, 1, 2}


def test_the_repetition_penalty_divides_a_seen_tokens_positive_logit_and_multiplies_a_negative_one():
    logits = torch.tensor([[2.0, 1.5, -1.0, -1.2]])
    seen = torch.tensor([[True, False, True, False]])
    # greedy: 2 / 2 = 1 < 1.5, so token 1; the seen negative logit -1 becomes -2 (< -1.2)
    assert sample_next_tokens(logits, 0.0, 1.0, token_filter=TokenFilter(repetition_penalty=2.0), seen=seen).item() == 1
    penalised = torch.tensor([[1.0, 1.5, -2.0, -1.2]])
    generator = torch.Generator().manual_seed(3)
    got = sample_next_tokens(logits.expand(4000, -1), 1.0, 1.0, generator, None, TokenFilter(repetition_penalty=2.0),
                             seen.expand(4000, -1))  # fmt: skip
    share = torch.bincount(got, minlength=4).double() / 4000
    assert torch.allclose(share, torch.softmax(penalised, -1)[0].double(), atol=0.03)


def test_greedy_with_a_repetition_penalty_is_generates_answer_token_for_token(tiny_tokenizer):
    changed = 0
    for seed in range(4):
        agent = agent_for(tiny_tokenizer, seed, scale=3.0)
        settings = SamplingSettings(
            num_generations=1,
            max_new_tokens=12,
            temperature=0.0,
            agents=((agent.name, AgentSampling(token_filter=TokenFilter(repetition_penalty=1.8))),),
        )
        plain_prompts = [p for p in PROMPTS if len(p) == len(PROMPTS[2])]  # one prompt: no padding (below)
        plain = sample_plain(agent, plain_prompts, settings)
        fast = sample_fast(agent, plain_prompts, settings)
        assert torch.equal(fast.completion_ids, plain.completion_ids), seed
        unpenalised = sample_fast(agent, plain_prompts, SamplingSettings(1, 12, 0.0))
        changed += not torch.equal(unpenalised.completion_ids, fast.completion_ids)
    assert changed  # the penalty changed some answer


def test_the_config_gives_each_agent_its_own_filters_and_every_sampler_takes_them():
    args = MAGRPOConfig(top_k=[0, 20], min_p=[None, 0.05], repetition_penalty=1.1)
    own = agent_sampling(args, ["agent_0", "agent_1"], training=True)
    assert {name: s.token_filter for name, s in own.items()} == {
        "agent_0": TokenFilter(0, None, 1.1),
        "agent_1": TokenFilter(20, 0.05, 1.1),
    }
    assert sampler_for(args, training=True, agent_names=["agent_0", "agent_1"]).settings.agents == tuple(own.items())


def test_the_plain_and_vllm_samplers_pass_the_filters_on(tiny_tokenizer):
    agent = agent_for(tiny_tokenizer, seed=0)
    token_filter = TokenFilter(top_k=20, min_p=0.05, repetition_penalty=1.1)
    config = generation_config(
        agent, max_new_tokens=4, temperature=0.8, top_p=0.9, num_return_sequences=2, token_filter=token_filter
    )
    assert (config.top_k, config.min_p, config.repetition_penalty) == (20, 0.05, 1.1)
    bare = generation_config(agent, max_new_tokens=4, temperature=0.8, top_p=0.9, num_return_sequences=2)
    assert (bare.top_k, bare.min_p, bare.repetition_penalty) in ((0, None, None), (0, None, 1.0))
    settings = SamplingSettings(2, 4, 0.8, agents=((agent.name, AgentSampling(token_filter=token_filter)),))
    (request,) = sampling_requests(agent, torch.Generator().manual_seed(0), 1, settings)
    params = request.to_vllm()
    assert (params.top_k, params.min_p, params.repetition_penalty) == (20, 0.05, 1.1)
    assert request.to_dict()["top_k"] == 20  # what a rollout server receives


def test_the_filtered_distribution_is_transformers_logits_processors():
    """The fast sampler's distribution against transformers' own processors, in generate's order:
    the repetition penalty, the temperature, top-k, top-p, min-p."""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    from magrpo.sampling.fast import sampling_probs

    g = torch.Generator().manual_seed(11)
    logits = torch.randn(6, 40, generator=g) * 3
    history = torch.randint(0, 40, (6, 9), generator=g)  # the prompt and the tokens sampled so far
    seen = torch.zeros(6, 40, dtype=torch.bool).scatter_(1, history, True)
    token_filter = TokenFilter(top_k=12, min_p=0.05, repetition_penalty=1.3)
    processors = LogitsProcessorList(
        [
            RepetitionPenaltyLogitsProcessor(1.3),
            TemperatureLogitsWarper(0.8),
            TopKLogitsWarper(12),
            TopPLogitsWarper(0.9),
            MinPLogitsWarper(0.05),
        ]
    )
    theirs = torch.softmax(processors(history, logits.clone()), dim=-1)
    ours = sampling_probs(logits, 0.8, 0.9, token_filter, seen)
    ours = ours / ours.sum(dim=-1, keepdim=True)
    assert torch.equal(ours > 0, theirs > 0)  # the same tokens kept
    assert torch.allclose(ours, theirs, atol=1e-6)
