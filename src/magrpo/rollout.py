"""Rollout: each agent samples G completions for each of its observations.

The result keeps the exact token ids that were sampled; the update scores those ids, never a
re-tokenisation of the decoded text.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import GenerationConfig

from magrpo.models import AgentPolicy
from magrpo.policy import completion_mask
from magrpo.types import Observation


@dataclass
class Rollout:
    """G completions for each of P prompts of one agent; row ``p * G + g`` is completion g of prompt p."""

    prompt_ids: torch.Tensor  # [P, Lp], left-padded
    prompt_mask: torch.Tensor  # [P, Lp]
    completion_ids: torch.Tensor  # [P * G, Lc], right-padded
    completion_mask: torch.Tensor  # [P * G, Lc], bool: tokens up to and including the first EOS
    texts: list[str]  # P * G decoded completions (special tokens removed)
    prompts: list[str]  # P rendered prompts
    num_generations: int

    @property
    def num_prompts(self) -> int:
        return self.prompt_ids.shape[0]

    @property
    def num_completion_tokens(self) -> int:
        return int(self.completion_mask.sum().item())

    def completion(self, prompt: int, generation: int) -> str:
        return self.texts[prompt * self.num_generations + generation]


def tokenize_prompts(agent: AgentPolicy, observations: Sequence[Observation]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    rendered = [agent.render(o) for o in observations]
    texts = [text for text, _ in rendered]
    has_special_tokens = rendered[0][1]
    tokenizer = agent.tokenizer
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not has_special_tokens)
    finally:
        tokenizer.padding_side = side
    return texts, batch["input_ids"].to(agent.device), batch["attention_mask"].to(agent.device)


def decode_completions(agent: AgentPolicy, completion_ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """The text of each completion: its counted tokens only (nothing after the first EOS)."""
    kept = torch.where(mask, completion_ids, torch.full_like(completion_ids, agent.pad_token_id))
    return agent.tokenizer.batch_decode(kept, skip_special_tokens=True)


def generation_config(
    agent: AgentPolicy, *, max_new_tokens: int, temperature: float, top_p: float, num_return_sequences: int
) -> GenerationConfig:
    """Exactly the sampling policy the loss scores: no top-k, no repetition penalty, nothing
    inherited from the model's own generation defaults. temperature 0 means greedy."""
    greedy = temperature == 0.0
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=not greedy,
        temperature=None if greedy else temperature,
        top_p=None if greedy else top_p,
        top_k=None if greedy else 0,
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
def _seeded_from(generator: torch.Generator | None, model):
    if generator is None:
        yield
        return
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        yield


@torch.no_grad()
def sample_completions(
    agent: AgentPolicy,
    observations: Sequence[Observation],
    *,
    num_generations: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    use_rollout_copy: bool = True,
    generator: torch.Generator | None = None,
) -> Rollout:
    """All P prompts of one agent in one batched generate call, G samples each.

    ``generate`` draws from torch's global RNG; given a ``generator``, the global RNG is seeded
    from it for the call and restored after (so never call this from several threads at once)."""
    prompts, prompt_ids, prompt_mask = tokenize_prompts(agent, observations)
    greedy = temperature == 0.0
    config = generation_config(
        agent,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        # greedy decoding gives G identical rows: decode once, repeat below
        num_return_sequences=1 if greedy else num_generations,
    )
    with agent.generating(use_rollout_copy) as model, _bare_generation_defaults(model), _seeded_from(generator, model):
        sequences = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config)
    completion_ids = sequences[:, prompt_ids.shape[1] :]
    if greedy:
        completion_ids = completion_ids.repeat_interleave(num_generations, dim=0)
    mask = completion_mask(completion_ids, agent.eos_token_ids)
    texts = decode_completions(agent, completion_ids, mask)
    return Rollout(prompt_ids, prompt_mask, completion_ids, mask, texts, prompts, num_generations)
