"""The per-agent loss: the paper's REINFORCE objective with group-relative advantages.

    sequence:  L_i = -(1/S) * sum_s A_s * sum_t m_{s,t} log pi_i(c_{s,t} | o_i, c_{s,<t})
    token:     L_i = -(sum_s A_s * sum_t m_{s,t} log pi_i(...)) / sum_s sum_t m_{s,t}

with m the completion mask of :func:`magrpo.logprobs.completion_mask`. The sums are taken per
micro-batch and divided by a normaliser of the WHOLE step, so micro-batches add up exactly.
"""

from __future__ import annotations

import torch

from magrpo.choices import LOSS_AGGREGATIONS, check_choice


def loss_normaliser(masks: torch.Tensor, aggregation: str) -> float:
    """The divisor of the summed loss terms over a WHOLE batch (so micro-batches add up exactly):
    the number of completions ("sequence") or of counted completion tokens ("token")."""
    check_choice("loss_aggregation", aggregation, LOSS_AGGREGATIONS)
    if aggregation == "sequence":
        return float(masks.shape[0])
    return float(max(int(masks.sum().item()), 1))


def truncated_importance_weights(
    token_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, cap: float
) -> torch.Tensor:
    """min(pi(t) / pi_sampler(t), cap) per token, as a constant (no gradient flows through it).

    When the completions were sampled by a reduced-precision copy of the policy, this is the
    truncated importance-sampling correction: the expected gradient is the policy's own, up to
    the (rare, bounded) truncation.
    """
    return torch.exp(token_logprobs.detach() - sampler_logprobs.to(token_logprobs.dtype)).clamp(max=cap)


def policy_gradient_loss_sum(
    token_logprobs: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """-sum_s A_s * sum_t m_{s,t} w_{s,t} log p_{s,t}: the un-normalised REINFORCE loss of a batch.

    Divided by :func:`loss_normaliser` it is the paper's per-agent objective: on-policy, with one
    update per rollout the importance ratio is exactly 1, so no clipping term is needed and the
    token weights w are 1 (``weights=None``). They differ from 1 only when another policy sampled
    (see :func:`truncated_importance_weights`).
    """
    terms = token_logprobs if weights is None else token_logprobs * weights
    masked = torch.where(mask, terms, torch.zeros_like(terms))
    return -(advantages.to(masked.dtype) * masked.sum(dim=-1)).sum()


class ImportanceWeightTally:
    """Mean importance weight over the counted tokens of an update, and the share truncated."""

    def __init__(self) -> None:
        self.total = self.capped = self.tokens = 0.0

    def add(self, weights: torch.Tensor, mask: torch.Tensor, cap: float) -> None:
        self.total += float(weights[mask].sum())
        self.capped += float((weights[mask] >= cap).sum())
        self.tokens += float(mask.sum())

    def figures(self) -> dict[str, float]:
        if not self.tokens:
            return {}
        return {"is_weight_mean": self.total / self.tokens, "is_capped_fraction": self.capped / self.tokens}


__all__ = [
    "ImportanceWeightTally",
    "loss_normaliser",
    "policy_gradient_loss_sum",
    "truncated_importance_weights",
]
