"""The per-agent loss: the paper's REINFORCE objective with group-relative advantages, the
normalisers of TRL's loss types, the PPO-clipped surrogate of several updates per rollout, and
the k3 KL to a reference policy.

One update per rollout (``num_iterations=1``, the paper's setting) is on-policy: the ratio
pi / pi_old is exactly 1, so the loss is REINFORCE's, summed per completion and divided by a
normaliser N of the WHOLE step (so micro-batches add up exactly):

    L_i = -(1/N) * sum_s c_s * A_s * sum_t m_{s,t} log pi_i(c_{s,t} | o_i, c_{s,<t})

with m the completion mask of :func:`magrpo.logprobs.completion_mask`, |o_s| = sum_t m_{s,t},
S the completions of the step, and per loss type (:data:`magrpo.choices.LOSS_TYPES`):

    sequence:  N = S,                     c_s = 1          (the paper's: sum of each completion's log-probs)
    token:     N = sum_s |o_s|,           c_s = 1          (a mean over every counted token of the step)
    grpo:      N = S,                     c_s = 1 / |o_s|  (DeepSeekMath: a mean per completion, then over them)
    dr_grpo:   N = S * max_new_tokens,    c_s = 1          (Dr. GRPO: a constant, no length bias)
    dapo:      N = sum_s |o_s|,           c_s = 1          (DAPO: the token mean of the whole batch)
    bnpo:      N = sum_s |o_s|,           c_s = 1          (the token mean of the batch: magrpo's batch is the step)

With ``num_iterations`` > 1 the log-prob term becomes the clipped surrogate of the token's (or
the completion's, sequence level) ratio r = pi / pi_old, ``-min(r A, clip(r, 1 - eps_low,
1 + eps_high) A)``, and ``beta`` > 0 adds ``beta * k3`` per token, both aggregated the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def loss_normaliser(masks: torch.Tensor, loss_type: str, max_new_tokens: int | None = None) -> float:
    """The divisor N of the summed loss terms over a WHOLE batch (``masks``: its counted tokens),
    by loss type (module docstring; the config checks the name). ``dr_grpo`` needs ``max_new_tokens``."""
    if loss_type in ("sequence", "grpo"):
        return float(masks.shape[0])
    if loss_type == "dr_grpo":
        if max_new_tokens is None:
            raise ValueError("loss_type='dr_grpo' normalises by num_completions * max_new_tokens: give max_new_tokens")
        return float(masks.shape[0] * max_new_tokens)
    return float(max(int(masks.sum().item()), 1))


def sequence_scale(mask: torch.Tensor, loss_type: str) -> torch.Tensor | None:
    """c_s of the module docstring per row of ``mask``: 1 / |o_s| for ``grpo``, else None (1)."""
    if loss_type != "grpo":
        return None
    return 1.0 / mask.sum(dim=-1).clamp(min=1).double()  # cast to the loss terms' dtype where it is used


def truncated_importance_weights(
    token_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, cap: float
) -> torch.Tensor:
    """min(pi(t) / pi_sampler(t), cap) per token, as a constant (no gradient flows through it).

    When the completions were sampled by a reduced-precision copy of the policy (or an engine),
    this is the truncated importance-sampling correction: the expected gradient is the policy's
    own, up to the (rare, bounded) truncation. With several updates per rollout ``token_logprobs``
    is pi_old (the training weights when they sampled), so the clip acts on pi / pi_old and this
    weight on pi_old / pi_sampler, as in TRL.
    """
    return torch.exp(token_logprobs.detach() - sampler_logprobs.to(token_logprobs.dtype)).clamp(max=cap)


def _masked_row_sums(terms: torch.Tensor, mask: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    sums = torch.where(mask, terms, torch.zeros_like(terms)).sum(dim=-1)
    return sums if scale is None else sums * scale.to(sums.dtype)


def policy_gradient_loss_sum(
    token_logprobs: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    weights: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """-sum_s c_s A_s * sum_t m_{s,t} w_{s,t} log p_{s,t}: the un-normalised REINFORCE loss of a batch.

    Divided by :func:`loss_normaliser` it is the paper's per-agent objective: on-policy, with one
    update per rollout the importance ratio is exactly 1, so no clipping term is needed and the
    token weights w are 1 (``weights=None``). They differ from 1 only when another policy sampled
    (see :func:`truncated_importance_weights`). ``scale`` is c_s (:func:`sequence_scale`).
    """
    terms = token_logprobs if weights is None else token_logprobs * weights
    return -(advantages.to(terms.dtype) * _masked_row_sums(terms, mask, scale)).sum()


@dataclass
class ClippedTerms:
    """The clipped surrogate's per-token loss terms and what the figures need of them."""

    terms: torch.Tensor  # [B, L]: -min(r A, clip(r) A)
    ratio: torch.Tensor  # [B, L] (sequence level: each row's one ratio, broadcast)
    clipped_low: torch.Tensor  # [B, L] bool: r < 1 - eps_low where A < 0 (the clip holds the ratio)
    clipped_high: torch.Tensor  # [B, L] bool: r > 1 + eps_high where A > 0


def clipped_surrogate(
    token_logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float,
    level: str = "token",
) -> ClippedTerms:
    """PPO's clipped surrogate per token, -min(r A, clamp(r, 1 - eps_low, 1 + eps_high) A), with
    r = pi / pi_old per token (``level="token"``) or per completion (``"sequence"``, GSPO: r =
    exp(mean_t log(pi / pi_old)) over its counted tokens, one ratio for all its tokens)."""
    log_ratio = token_logprobs - old_logprobs.to(token_logprobs.dtype)
    if level == "sequence":
        counted = mask.sum(dim=-1, keepdim=True).clamp(min=1)
        log_ratio = torch.where(mask, log_ratio, torch.zeros_like(log_ratio)).sum(dim=-1, keepdim=True) / counted
    ratio = torch.exp(log_ratio).expand_as(token_logprobs)
    adv = advantages.to(token_logprobs.dtype)[:, None]
    clipped = ratio.clamp(1 - epsilon_low, 1 + epsilon_high)
    terms = -torch.minimum(ratio * adv, clipped * adv)
    r = ratio.detach()
    return ClippedTerms(terms, r, (r < 1 - epsilon_low) & (adv < 0), (r > 1 + epsilon_high) & (adv > 0))


def k3_kl(token_logprobs: torch.Tensor, reference_logprobs: torch.Tensor) -> torch.Tensor:
    """The k3 estimator of KL(pi || pi_ref) per token: exp(d) - d - 1 with d = log pi_ref - log pi
    (non-negative, unbiased for the KL under samples of pi, zero where the two agree)."""
    d = reference_logprobs.to(token_logprobs.dtype) - token_logprobs
    return torch.exp(d) - d - 1


def token_terms_loss_sum(terms: torch.Tensor, mask: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """sum_s c_s * sum_t m_{s,t} terms_{s,t}: per-token loss terms aggregated like the REINFORCE loss."""
    return _masked_row_sums(terms, mask, scale).sum()


@dataclass
class UpdateTally:
    """The figures of an update, summed over its micro-batches and optimiser steps: the mean
    importance weight and its truncated share, the clip fractions and mean ratio (several updates
    per rollout), the mean k3 KL to the reference and the mean token entropy (an estimate: the mean
    -log pi of the sampled tokens), each over the counted tokens it was taken on."""

    sums: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, values: torch.Tensor, mask: torch.Tensor) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(values.detach()[mask].double().sum())
        self.tokens[name] = self.tokens.get(name, 0.0) + float(mask.sum())

    def add_importance_weights(self, weights: torch.Tensor, mask: torch.Tensor, cap: float) -> None:
        self.add("is_weight_mean", weights, mask)
        self.add("is_capped_fraction", (weights >= cap).double(), mask)

    def add_clip(self, clip: ClippedTerms, mask: torch.Tensor) -> None:
        low, high = clip.clipped_low.double(), clip.clipped_high.double()
        self.add("clip_low_fraction", low, mask)
        self.add("clip_high_fraction", high, mask)
        self.add("clip_fraction", low + high, mask)
        self.add("ratio_mean", clip.ratio, mask)

    def include(self, other: "UpdateTally") -> None:
        """Add ``other``'s sums and token counts to this tally's (a micro-batch's to its update's)."""
        for name, value in other.sums.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
            self.tokens[name] = self.tokens.get(name, 0.0) + other.tokens[name]

    def merged(self, others: "list[UpdateTally]") -> "UpdateTally":
        """The tally of ``others`` together (every rank's share of an update)."""
        out = UpdateTally()
        for other in others:
            out.include(other)
        return out

    def figures(self) -> dict[str, float]:
        return {name: self.sums[name] / self.tokens[name] for name in self.sums if self.tokens[name]}


__all__ = [
    "ClippedTerms",
    "UpdateTally",
    "clipped_surrogate",
    "k3_kl",
    "loss_normaliser",
    "policy_gradient_loss_sum",
    "sequence_scale",
    "token_terms_loss_sum",
    "truncated_importance_weights",
]
