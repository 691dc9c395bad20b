"""What sampling gives back: :class:`Rollout`, one agent's G completions per observation, with
the exact token ids that were sampled (the update scores those ids, never a re-tokenisation of
the decoded text); and the text <-> ids steps every sampler shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from magrpo.logprobs import completion_mask
from magrpo.models.agent import AgentPolicy
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
    #: ``log softmax(logits / T)[completion_ids[r, t]]`` under the weights that sampled (T = 1 when
    #: greedy), float32, 0.0 where ``completion_mask`` is False; the fast sampler records it for
    #: free, the plain one cannot (None). It is what :func:`magrpo.logprobs.completion_token_logprobs`
    #: computes in a full forward pass with the same weights, up to float rounding.
    token_logprobs: torch.Tensor | None = None  # [P * G, Lc]

    @property
    def num_prompts(self) -> int:
        return self.prompt_ids.shape[0]

    @property
    def num_completion_tokens(self) -> int:
        return int(self.completion_mask.sum().item())

    def completion(self, prompt: int, generation: int) -> str:
        return self.texts[prompt * self.num_generations + generation]


def tokenize_prompts(
    agent: AgentPolicy, observations: Sequence[Observation]
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Rendered prompts, left-padded ids and mask. The padding side is an argument of the call,
    never set on the tokenizer, which agents sampling in threads may share."""
    rendered = [agent.render(o) for o in observations]
    texts = [text for text, _ in rendered]
    has_special_tokens = rendered[0][1]
    batch = agent.tokenizer(
        texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=not has_special_tokens
    )
    return texts, batch["input_ids"].to(agent.device), batch["attention_mask"].to(agent.device)


def decode_completions(agent: AgentPolicy, completion_ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """The text of each completion: its counted tokens only (nothing after the first EOS)."""
    kept = torch.where(mask, completion_ids, torch.full_like(completion_ids, agent.pad_token_id))
    return agent.tokenizer.batch_decode(kept, skip_special_tokens=True)


def rollout_of(
    agent: AgentPolicy,
    prompts: list[str],
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    num_generations: int,
    token_logprobs: torch.Tensor | None = None,
) -> Rollout:
    """The rollout of sampled ``completion_ids``: their mask (up to each row's first EOS) and texts."""
    mask = completion_mask(completion_ids, agent.eos_token_ids)
    texts = decode_completions(agent, completion_ids, mask)
    return Rollout(prompt_ids, prompt_mask, completion_ids, mask, texts, prompts, num_generations, token_logprobs)


__all__ = ["Rollout", "decode_completions", "rollout_of", "tokenize_prompts"]
