"""Agents sampling one after the other or at the same time give the same tokens."""

from __future__ import annotations

import pytest
import torch

from magrpo.models import build_agents
from magrpo.sampling import make_sampler
from magrpo.sampling.sampler import _groups_by_generating_model
from tests.conftest import make_tiny_model, peaked_model, scripted_sampler_of

PROMPTS = ["a b c", "q", "a a b b c c q q a"]


def _peaked_agents(tokenizer, seeds, **build):
    return build_agents([(peaked_model(tokenizer, seed, 6.0), tokenizer) for seed in seeds], device="cpu", **build)


def _run(agents, concurrent: bool, seed: int = 0):
    sampler = make_sampler(
        num_generations=3, max_new_tokens=8, temperature=1.0, top_p=1.0, concurrent_agents=concurrent
    )
    torch.manual_seed(seed)
    return sampler.sample_team(agents, [PROMPTS] * len(agents))


def test_concurrent_sampling_gives_the_sequential_tokens_and_restores_the_thread_count(tiny_tokenizer):
    agents = _peaked_agents(tiny_tokenizer, (1, 2, 3))
    threads = torch.get_num_threads()
    sequential = _run(agents, concurrent=False)
    concurrent = _run(agents, concurrent=True)
    assert torch.get_num_threads() == threads
    # concurrent agents run with fewer intra-op threads each, which may round a float32 sum's last
    # bit differently: the draws are the same, the log-probabilities equal to float32 rounding ...
    for s, c in zip(sequential, concurrent):
        assert torch.equal(s.completion_ids, c.completion_ids)
        torch.testing.assert_close(s.token_logprobs, c.token_logprobs, rtol=0, atol=1e-6)
    # ... and bit for bit equal to a sequential run with the same threads per agent
    torch.set_num_threads(max(1, threads // len(agents)))
    try:
        same_threads = _run(agents, concurrent=False)
    finally:
        torch.set_num_threads(threads)
    for s, c in zip(same_threads, concurrent):
        assert torch.equal(s.completion_ids, c.completion_ids)
        assert torch.equal(s.token_logprobs, c.token_logprobs)
    # different agents draw different random streams, and another seed changes the draws
    assert not torch.equal(sequential[0].completion_ids, sequential[1].completion_ids)
    assert not torch.equal(_run(agents, concurrent=True, seed=1)[0].completion_ids, concurrent[0].completion_ids)


def test_agents_on_one_shared_base_take_turns(tiny_tokenizer):
    base = make_tiny_model(len(tiny_tokenizer), seed=4)
    shared = build_agents([(base, tiny_tokenizer)] * 2, device="cpu", use_lora=True, lora_r=4)
    own = _peaked_agents(tiny_tokenizer, (5, 6))
    assert _groups_by_generating_model(shared) == [[0, 1]]
    assert _groups_by_generating_model([own[0], shared[0], own[1], shared[1]]) == [[0], [1, 3], [2]]
    with torch.no_grad():  # make the two adapters differ, so a race on set_adapter would show
        for p in shared[0].trainable_parameters():
            p.add_(0.3)
    mixed = [own[0], shared[0], own[1], shared[1]]
    for s, c in zip(_run(mixed, concurrent=False), _run(mixed, concurrent=True)):
        assert torch.equal(s.completion_ids, c.completion_ids)


def test_an_error_in_one_agent_reaches_the_caller(tiny_tokenizer):
    agents = _peaked_agents(tiny_tokenizer, (1, 2))

    def sample(agent, observations, generator=None):
        if agent is agents[1]:
            raise RuntimeError(f"{agent.name} failed")
        return make_sampler(num_generations=2, max_new_tokens=2, temperature=1.0, top_p=1.0).sample(
            agent, observations, generator
        )

    with pytest.raises(RuntimeError, match="agent_1 failed"):
        scripted_sampler_of(sample, 2, concurrent_agents=True).sample_team(agents, [PROMPTS] * 2)
