"""Which completion tokens count, and their log-probabilities under an agent's policy.

A completion's tokens count up to and including its first end-of-sequence token: the EOS is the
action that ends the answer and carries gradient like any other token; whatever generation put
after it (padding, which is often the EOS id itself) never does, and neither does the prompt.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Iterable, Iterator

import torch
import torch.utils.checkpoint
from transformers import DynamicCache


@functools.lru_cache(maxsize=None)
def _cache_keyword_of(model_class: type) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def cache_keyword(model: torch.nn.Module) -> str:
    """The name a model's forward takes its KV cache by: ``cache`` in newer transformers, where
    ``past_key_values`` is deprecated, ``past_key_values`` before (peft wrappers: their base's)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _cache_keyword_of(type(base))


def eos_tensor(eos_token_ids: Iterable[int], like: torch.Tensor) -> torch.Tensor:
    """The end-of-sequence ids as a tensor on ``like``'s device and dtype, for ``torch.isin``."""
    return torch.tensor(sorted(set(eos_token_ids)), device=like.device, dtype=like.dtype)


def completion_mask(completion_ids: torch.Tensor, eos_token_ids: Iterable[int]) -> torch.Tensor:
    """Bool mask [B, L]: True for every token up to and including the first EOS of each row.

    A row without an EOS (cut at max_new_tokens) counts in full.
    """
    eos = torch.isin(completion_ids, eos_tensor(eos_token_ids, completion_ids)).to(torch.int32)
    eos_strictly_before = eos.cumsum(dim=-1) - eos
    return eos_strictly_before == 0


@contextlib.contextmanager
def scoring_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The model as the update scores it: the policy that sampled, so dropout off (eval mode),
    except that layers doing gradient checkpointing keep their training flag (transformers
    checkpoints only in training mode; the flag changes nothing else of theirs). Modes restored after."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False):
            module.training = True  # this module only: its children (dropouts) stay in eval mode
    try:
        yield model
    finally:
        for module, mode in modes.items():
            module.training = mode


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, so a left-padded prompt is scored as it was sampled."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def selected_token_logprobs(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    chunk_size: int | None = None,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log softmax(logits)[token] for each position, in float32, without keeping a
    full-vocabulary log-softmax of every position: ``logit[token] - logsumexp(logits)``.

    ``chunk_size`` bounds how many positions are converted to float32 at once; under autograd each
    chunk is recomputed in the backward pass (activation checkpointing), so the float32 copy of
    the whole vocabulary is never kept for more than one chunk: same values and gradients, memory
    bounded by the chunk. The division by the temperature happens in float32, so bf16 logits are
    rounded once, not twice.

    ``with_entropy``: also the entropy of each position's whole (tempered) distribution, [B, L]
    with its gradient, returned second (the entropy bonus and mask of TRL's options).
    """
    batch, length, _ = logits.shape
    score = _token_logprobs_and_entropies if with_entropy else _token_logprobs
    if chunk_size is None or chunk_size >= length:
        return score(logits, tokens, temperature)
    recompute = torch.is_grad_enabled() and logits.requires_grad
    parts = []
    for start in range(0, length, chunk_size):
        part, tok = logits[:, start : start + chunk_size], tokens[:, start : start + chunk_size]
        if recompute:
            parts.append(torch.utils.checkpoint.checkpoint(score, part, tok, temperature, use_reentrant=False))
        else:
            parts.append(score(part, tok, temperature))
    if with_entropy:
        return torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts], dim=1)
    return torch.cat(parts, dim=1)


def _tempered(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    logits32 = logits.float()
    return logits32 / temperature if temperature != 1.0 else logits32


def _token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    logits32 = _tempered(logits, temperature)
    return logits32.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits32, dim=-1)


def _token_logprobs_and_entropies(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p[token] and H = logsumexp - sum_v p_v * logit_v per position, from one float32 copy."""
    logits32 = _tempered(logits, temperature)
    lse = torch.logsumexp(logits32, dim=-1)
    probs = torch.exp(logits32 - lse.unsqueeze(-1))
    entropies = lse - (probs * logits32).sum(dim=-1)
    return logits32.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - lse, entropies


def completion_token_logprobs(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_token_mask: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    with_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log pi(c_t | prompt, c_<t) for every completion token, [B, Lc], in ONE forward pass over
    the batch. Logits are divided by the sampling temperature (the policy that was sampled).
    ``with_entropy``: and each position's entropy (:func:`selected_token_logprobs`).

    Prompts are left-padded ([B, Lp] with ``prompt_mask``), completions right-padded. Only the
    Lc positions that predict completion tokens are projected to the vocabulary.
    """
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask.long(), completion_token_mask.long()], dim=1)
    length = completion_ids.shape[1]
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
        logits_to_keep=length + 1,
    )
    logits = out.logits[:, :-1]  # the logit at position t predicts token t + 1
    return selected_token_logprobs(logits, completion_ids, chunk_size, temperature, with_entropy)


def prefill_prompts(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, cache) -> torch.Tensor:
    """Run left-padded prompts [U, Lp] through the model into ``cache``; return the logits of
    their last position [U, V] (the distribution of the first completion token)."""
    out = model(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        position_ids=position_ids_from_mask(prompt_mask),
        **{cache_keyword(model): cache},
        use_cache=True,
        logits_to_keep=1,
    )
    return out.logits[:, -1]


def shared_prompt_token_logprobs(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    prompt_index: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_token_mask: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    with_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The same [B, Lc] log-probabilities as :func:`completion_token_logprobs`, with each distinct
    prompt run through the model ONCE, however many of the B completions continue it.

    ``prompt_ids`` [U, Lp] holds the distinct (left-padded) prompts and ``prompt_index`` [B] says
    which one row b continues. The prompts' keys and values are computed once, with gradient, and
    gathered per row, so backward adds every row's gradient into its prompt's single pass: the
    value and the gradient are those of the full pass (up to float rounding) at a fraction of the
    prompt compute and activation memory when G completions share a prompt.

    Needs a model whose layers return their cache while training (not with gradient checkpointing).
    """
    prompt_mask = prompt_mask.long()
    cache = DynamicCache(config=model.config.get_text_config(decoder=True))
    first = prefill_prompts(model, prompt_ids, prompt_mask, cache).unsqueeze(1).index_select(0, prompt_index)
    length = completion_ids.shape[1]
    if length == 1:
        return selected_token_logprobs(first, completion_ids, chunk_size, temperature, with_entropy)
    cache.batch_select_indices(prompt_index)  # differentiable gather: one prompt, many rows
    row_prompt_mask = prompt_mask.index_select(0, prompt_index)
    attention_mask = torch.cat([row_prompt_mask, completion_token_mask.long()], dim=1)
    positions = position_ids_from_mask(attention_mask)[:, prompt_ids.shape[1] :]
    rest = model(
        input_ids=completion_ids[:, :-1],  # the last token predicts nothing we score
        attention_mask=attention_mask[:, :-1],
        position_ids=positions[:, :-1],
        **{cache_keyword(model): cache},
        use_cache=True,
    ).logits
    logits = torch.cat([first, rest], dim=1)
    return selected_token_logprobs(logits, completion_ids, chunk_size, temperature, with_entropy)


def pad_right(mask: torch.Tensor, length: int) -> torch.Tensor:
    """A [B, L] completion mask padded with False columns to ``length``."""
    if mask.shape[1] == length:
        return mask
    return torch.nn.functional.pad(mask, (0, length - mask.shape[1]), value=False)


def trim_right(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop completion columns that no row of the batch uses."""
    used = int(mask.any(dim=0).nonzero().max()) + 1 if mask.any() else 1
    return ids[:, :used], mask[:, :used]


def trim_left(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop left-padding columns that every row of the batch has."""
    first = int(mask.any(dim=0).nonzero().min()) if mask.any() else 0
    return ids[:, first:], mask[:, first:]


__all__ = [
    "cache_keyword",
    "completion_mask",
    "completion_token_logprobs",
    "eos_tensor",
    "position_ids_from_mask",
    "pad_right",
    "prefill_prompts",
    "scoring_mode",
    "selected_token_logprobs",
    "shared_prompt_token_logprobs",
    "trim_left",
    "trim_right",
]
