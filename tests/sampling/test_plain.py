"""The plain sampler (transformers' generate) samples the policy the loss scores."""

from __future__ import annotations

import torch

from magrpo.sampling import SamplingSettings


def test_plain_greedy_sampler_repeats_its_single_decode_for_every_generation(tiny_agents):
    from magrpo.sampling.plain import sample_plain

    rollout = sample_plain(
        tiny_agents[0], ["q a", "b"], SamplingSettings(num_generations=3, max_new_tokens=4, temperature=0.0)
    )
    assert rollout.completion_ids.shape[0] == 6
    for p in range(2):
        rows = rollout.completion_ids[p * 3 : (p + 1) * 3]
        assert torch.equal(rows[0], rows[1]) and torch.equal(rows[0], rows[2])


def test_plain_sampler_follows_the_softmax_whatever_the_models_generation_defaults(tiny_tokenizer):
    """Traps: the model's own generation config asks for top-k 2, a repetition penalty and another
    temperature; none of them may reach the sampled policy."""
    from magrpo.sampling.plain import sample_plain
    from tests.conftest import PROMPTS, agent_for, assert_frequencies, first_token_probs

    agent = agent_for(tiny_tokenizer, seed=4, scale=4.0)
    agent.model.generation_config.update(top_k=2, repetition_penalty=5.0, temperature=0.3, do_sample=True)
    probs = first_token_probs(agent, PROMPTS[0], 1.0)
    assert (probs > 0.05).sum() >= 3  # top-k 2 would show
    torch.manual_seed(4321)
    rollout = sample_plain(
        agent, PROMPTS[:1], SamplingSettings(num_generations=20_000, max_new_tokens=1, temperature=1.0)
    )
    assert_frequencies(rollout.completion_ids[:, 0], probs)
