"""The plain sampler (``rollout_backend="plain"``): transformers' ``generate``, configured to
sample exactly the policy the loss scores. The reference the fast sampler is tested against."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Sequence

import torch
from transformers import GenerationConfig

from magrpo.models.agent import AgentPolicy
from magrpo.sampling.rollout import Rollout, rollout_of, tokenize_prompts
from magrpo.sampling.sampler import Generators, Sampler, SamplingSettings, TokenFilter
from magrpo.types import Observation


def generation_config(
    agent: AgentPolicy,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    num_return_sequences: int,
    token_filter: TokenFilter | None = None,
) -> GenerationConfig:
    """Exactly the sampling policy asked for: the tempered softmax with top-p and the agent's own
    filters (top-k, min-p, a repetition penalty; none by default), nothing inherited from the
    model's own generation defaults. temperature 0 means greedy (the repetition penalty still acts)."""
    greedy = temperature == 0.0
    token_filter = token_filter or TokenFilter()
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=not greedy,
        temperature=None if greedy else temperature,
        top_p=None if greedy else top_p,
        top_k=None if greedy else token_filter.top_k,
        min_p=None if greedy else token_filter.min_p,
        repetition_penalty=None if token_filter.repetition_penalty == 1.0 else token_filter.repetition_penalty,
        num_return_sequences=num_return_sequences,
        eos_token_id=agent.eos_token_ids,
        pad_token_id=agent.pad_token_id,
        bos_token_id=agent.tokenizer.bos_token_id,
    )


@contextlib.contextmanager
def _bare_generation_defaults(model):
    """generate() fills every field our config leaves unset from the model's own generation
    config (a repetition penalty, min_p, ...); hide it so nothing changes the sampled policy."""
    saved = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = saved


@contextlib.contextmanager
def _seeded_from(generator, model):
    """generate() draws from torch's global RNG: seed it from ``generator`` (one generator, or one
    per prompt: then from the first, so the plain sampler's draws depend on the whole batch)."""
    if generator is None:
        yield
        return
    if not isinstance(generator, torch.Generator):
        generator = generator[0]
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        # drawn on the generator's own device (a CUDA agent's generator lives on CUDA)
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)))
        yield


@torch.no_grad()
def sample_plain(
    agent: AgentPolicy, observations: Sequence[Observation], settings: SamplingSettings, generator: Generators = None
) -> Rollout:
    """All P prompts of one agent in one batched generate call, G samples each.

    ``generate`` draws from torch's global RNG; given a ``generator``, the global RNG is seeded
    from it for the call and restored after (so never call this from several threads at once)."""
    settings = settings.for_agent(agent)
    prompts, prompt_ids, prompt_mask = tokenize_prompts(agent, observations)
    greedy = settings.temperature == 0.0
    config = generation_config(
        agent,
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        # greedy decoding gives G identical rows: decode once, repeat below
        num_return_sequences=1 if greedy else settings.num_generations,
        token_filter=settings.token_filter,
    )
    with (
        agent.generating(settings.use_sampling_copy) as model,
        _bare_generation_defaults(model),
        _seeded_from(generator, model),
    ):
        sequences = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config)
    completion_ids = sequences[:, prompt_ids.shape[1] :]
    if greedy:
        completion_ids = completion_ids.repeat_interleave(settings.num_generations, dim=0)
    return rollout_of(
        agent, prompts, prompt_ids, prompt_mask, completion_ids, settings.num_generations, stop=settings.stop
    )


class PlainSampler(Sampler):
    """``rollout_backend="plain"``: :func:`sample_plain`. ``generate`` draws from the one global
    RNG, so its agents never sample at once."""

    def __init__(self, settings: SamplingSettings) -> None:
        super().__init__(dataclasses.replace(settings, concurrent_agents=False))

    def sample(self, agent: AgentPolicy, observations: Sequence[Observation], generator: Generators = None) -> Rollout:
        return sample_plain(agent, observations, self.settings, generator)


__all__ = ["PlainSampler", "generation_config", "sample_plain"]
