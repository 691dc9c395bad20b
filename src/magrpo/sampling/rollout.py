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
    completion_mask: torch.Tensor  # [P * G, Lc], bool: tokens up to and including the first EOS (or stop string)
    texts: list[str]  # P * G decoded completions (special tokens removed, cut before a stop string)
    prompts: list[str]  # P rendered prompts
    num_generations: int
    #: ``log softmax(logits / T)[completion_ids[r, t]]`` under the weights that sampled (T = 1 when
    #: greedy), float32, 0.0 where ``completion_mask`` is False; the fast sampler records it for
    #: free, the plain one cannot (None). It is what :func:`magrpo.logprobs.completion_token_logprobs`
    #: computes in a full forward pass with the same weights, up to float rounding.
    token_logprobs: torch.Tensor | None = None  # [P * G, Lc]
    #: [P * G] bool: the completions a stop string ended (ended, not cut at max_new_tokens; None: none)
    stopped: torch.Tensor | None = None

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
    stop: Sequence[str] = (),
) -> Rollout:
    """The rollout of sampled ``completion_ids``: their mask (up to each row's first EOS, or the
    token that completed one of the ``stop`` strings) and texts (cut before the stop string)."""
    mask = completion_mask(completion_ids, agent.eos_token_ids)
    texts = decode_completions(agent, completion_ids, mask)
    stopped = None
    if stop:
        stopped = torch.zeros(len(texts), dtype=torch.bool)
        for row, text in enumerate(texts):
            if any(s in text for s in stop):
                length, texts[row] = stop_point(agent, completion_ids[row][mask[row]], stop)
                mask[row, length:] = False
                stopped[row] = True
        if token_logprobs is not None:  # nothing past a completion's end
            token_logprobs = torch.where(mask, token_logprobs, torch.zeros_like(token_logprobs))
    rollout = Rollout(prompt_ids, prompt_mask, completion_ids, mask, texts, prompts, num_generations, token_logprobs)
    rollout.stopped = stopped
    return rollout


def stop_point(agent: AgentPolicy, ids: torch.Tensor, stop: Sequence[str]) -> tuple[int, str]:
    """Where a stop string ends a completion whose text holds one: the fewest tokens whose text
    holds one (a longer prefix's text holds it too, so a bisection finds them), and that text up to
    the earliest stop string."""

    def text(n: int) -> str:
        return agent.tokenizer.decode(ids[:n], skip_special_tokens=True)

    low, high = 1, len(ids)  # text(high) holds a stop string
    while low < high:
        middle = (low + high) // 2
        if any(s in text(middle) for s in stop):
            high = middle
        else:
            low = middle + 1
    kept = text(high)
    return high, kept[: min(kept.index(s) for s in stop if s in kept)]


__all__ = ["Rollout", "decode_completions", "rollout_of", "stop_point", "tokenize_prompts"]
