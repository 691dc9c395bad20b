"""The per-agent loss: the paper's REINFORCE objective with group-relative advantages, the
loss types of TRL's ``GRPOTrainer`` (their normalisers, row scales and surrogates), the
importance weights of another sampler, and the k3 KL to a reference policy.

One update per rollout (``num_iterations=1``, the paper's setting) is on-policy: the ratio
pi / pi_old is exactly 1, so the loss is REINFORCE's, summed per completion and divided by a
normaliser N of the WHOLE step (so micro-batches add up exactly):

    L_i = -(1/N) * sum_s c_s * A_s * sum_t m_{s,t} g_{s,t} log pi_i(c_{s,t} | o_i, c_{s,<t})

with m the completion mask of :func:`magrpo.logprobs.completion_mask`, |o_s| = sum_t m_{s,t},
S the completions of the step, g the (constant) token weights of the loss type's surrogate at
r = 1 (1 by default: see :func:`first_iteration_weights`), and per loss type
(:data:`LOSS_TYPE_TABLE`, the names in :data:`magrpo.choices.LOSS_TYPES`):

    type       N                   c_s        surrogate  source
    sequence:  S                   1          clip       the MAGRPO paper: each completion's summed log-probs
    token:     sum_s |o_s|         1          clip       a mean over every counted token of the step
    grpo:      S                   1 / |o_s|  clip       DeepSeekMath (arXiv:2402.03300): per-completion means
    dr_grpo:   S * max_new_tokens  1          clip       Dr. GRPO (arXiv:2503.20783): a constant, no length bias
    dapo:      sum_s |o_s|         1          clip       DAPO (arXiv:2503.14476): the token mean of the batch
    bnpo:      sum_s |o_s|         1          clip       the token mean of the batch: magrpo's batch is the step
    cispo:     sum_s |o_s|         1          cispo      MiniMax-M1 (arXiv:2506.13585): a clipped, detached weight
    sapo:      S                   1 / |o_s|  sapo       SAPO (arXiv:2511.20347): a soft, temperature-set gate
    luspo:     S                   1          clip       LUSPO (arXiv:2602.05261): GSPO times each length
    vespo:     sum_s |o_s|         1          vespo      VESPO (arXiv:2602.10693): a Gamma weight of w_s

With ``num_iterations`` > 1 the log-prob term becomes the loss type's surrogate of the token's
(or the completion's, sequence level) ratio r = pi / pi_old (:func:`surrogate_terms`):

    clip:   -min(r A, clamp(r, 1 - eps_low, 1 + eps_high) A)    (r capped at ``delta`` first, if given)
    cispo:  -min(r, eps_high) A log pi                          (the weight a constant)
    sapo:   -sigmoid(tau (r - 1)) * 4 / tau * A                 (tau_pos where A > 0, else tau_neg)
    vespo:  -phi(w_s) A log pi,  phi(w) = exp(lam + k log w - lam w) of the completion's
            w_s = prod_t r_{s,t} (and its sampler weights), (k, lam) by the sign of A, a constant

and ``beta`` > 0 adds ``beta * k3`` per token (times r with ``use_bias_correction_kl``), both
aggregated the same way. At the first of several updates r = 1, and the gradient of the surrogate
is the one-update loss's: the token weights g above are that gradient's (tested exactly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch


@dataclass(frozen=True)
class LossType:
    """One row of the module docstring's table: how a loss type aggregates and what it optimises."""

    #: N: "completions" (S), "tokens" (sum_s |o_s|) or "completion_budget" (S * max_new_tokens)
    normaliser: str
    #: c_s: "one" or "inverse_length" (1 / |o_s|)
    row_scale: str
    #: the per-token policy term: "clip", "cispo", "sapo" or "vespo" (:func:`surrogate_terms`)
    surrogate: str
    #: where it comes from
    source: str


#: every loss type by its name (the same names as :data:`magrpo.choices.LOSS_TYPES`, in its order)
LOSS_TYPE_TABLE: dict[str, LossType] = {
    "sequence": LossType("completions", "one", "clip", "the MAGRPO paper: A times each completion's summed log-probs"),
    "token": LossType("tokens", "one", "clip", "a mean over every counted token of the step"),
    "grpo": LossType("completions", "inverse_length", "clip", "DeepSeekMath, arXiv:2402.03300"),
    "dr_grpo": LossType("completion_budget", "one", "clip", "Dr. GRPO, arXiv:2503.20783"),
    "dapo": LossType("tokens", "one", "clip", "DAPO, arXiv:2503.14476"),
    "bnpo": LossType("tokens", "one", "clip", "the token mean of the batch (magrpo's batch is the step)"),
    "cispo": LossType("tokens", "one", "cispo", "MiniMax-M1, arXiv:2506.13585"),
    "sapo": LossType("completions", "inverse_length", "sapo", "SAPO, arXiv:2511.20347"),
    "luspo": LossType("completions", "one", "clip", "LUSPO, arXiv:2602.05261"),
    "vespo": LossType("tokens", "one", "vespo", "VESPO, arXiv:2602.10693"),
}


def loss_normaliser(masks: torch.Tensor, loss_type: str, max_new_tokens: int | None = None) -> float:
    """The divisor N of the summed loss terms over a WHOLE batch (``masks``: its counted tokens),
    by loss type (module docstring; the config checks the name). ``dr_grpo`` needs ``max_new_tokens``."""
    kind = LOSS_TYPE_TABLE[loss_type].normaliser
    if kind == "completions":
        return float(masks.shape[0])
    if kind == "completion_budget":
        if max_new_tokens is None:
            raise ValueError(
                f"loss_type={loss_type!r} normalises by num_completions * max_new_tokens: give max_new_tokens"
            )
        return float(masks.shape[0] * max_new_tokens)
    return float(max(int(masks.sum().item()), 1))


def sequence_scale(mask: torch.Tensor, loss_type: str) -> torch.Tensor | None:
    """c_s of the module docstring per row of ``mask``: 1 / |o_s| where the loss type takes each
    completion's token mean (``grpo``, ``sapo``), else None (1)."""
    if LOSS_TYPE_TABLE[loss_type].row_scale != "inverse_length":
        return None
    return 1.0 / mask.sum(dim=-1).clamp(min=1).double()  # cast to the loss terms' dtype where it is used


@dataclass(frozen=True)
class SurrogateSettings:
    """The knobs of the surrogates (module docstring), as TRL's ``GRPOConfig`` names them."""

    #: r per token ("token") or one per completion ("sequence": exp of its mean log-ratio, GSPO)
    level: str = "token"
    epsilon_low: float = 0.2
    #: the clip's upper width; cispo's cap of its weight (ScaleRL recommends 5)
    epsilon_high: float = 0.2
    #: INTELLECT-2's cap of r in the clipped surrogate (None: none)
    delta: float | None = None
    sapo_temperature_pos: float = 1.0
    sapo_temperature_neg: float = 1.05
    vespo_k_pos: float = 2.0
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0
    vespo_lambda_neg: float = 2.0


def log_importance_ratio(
    token_logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor, level: str
) -> torch.Tensor:
    """log r: per token ``[B, L]``, or per completion ``[B, 1]`` (``level="sequence"``: the mean
    log-ratio over its counted tokens)."""
    log_ratio = token_logprobs - old_logprobs.to(token_logprobs.dtype)
    if level == "sequence":
        counted = mask.sum(dim=-1, keepdim=True).clamp(min=1)
        return torch.where(mask, log_ratio, torch.zeros_like(log_ratio)).sum(dim=-1, keepdim=True) / counted
    return log_ratio


@dataclass
class SurrogateTerms:
    """A surrogate's per-token loss terms and what the figures need of them."""

    terms: torch.Tensor  # [B, L] (or [B, 1], broadcast over the row's tokens)
    ratio: torch.Tensor  # r, detached: [B, L] or [B, 1]
    clipped_low: torch.Tensor | None = None  # bool where the clip holds r below (A < 0)
    clipped_high: torch.Tensor | None = None  # bool where the clip (cispo: the cap) holds r above (A > 0)
    vespo_weight: torch.Tensor | None = None  # [B, 1]: vespo's phi(w_s)


def surrogate_terms(
    surrogate: str,
    settings: SurrogateSettings,
    token_logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    sampler_weights: torch.Tensor | None = None,
) -> SurrogateTerms:
    """The per-token policy terms of ``surrogate`` (module docstring, :data:`SURROGATES`) with
    r = pi / pi_old at ``settings.level``, every tensor ``[B, L]`` (a completion's one ratio
    repeated over its tokens). ``sampler_weights`` enter only vespo's sequence weight (the others
    are multiplied by them afterwards, as TRL does)."""
    terms = SURROGATES[surrogate]
    inputs = SurrogateInputs(
        settings,
        token_logprobs,
        old_logprobs.to(token_logprobs.dtype),
        torch.exp(log_importance_ratio(token_logprobs, old_logprobs, mask, settings.level)),
        mask,
        advantages.to(token_logprobs.dtype)[:, None],
        sampler_weights,
    )
    out = terms(inputs)
    shape = token_logprobs.shape
    out.terms, out.ratio = out.terms.expand(shape), out.ratio.expand(shape)
    out.clipped_low = None if out.clipped_low is None else out.clipped_low.expand(shape)
    out.clipped_high = None if out.clipped_high is None else out.clipped_high.expand(shape)
    return out


@dataclass
class SurrogateInputs:
    settings: SurrogateSettings
    logprobs: torch.Tensor  # [B, L] log pi, with gradient
    old: torch.Tensor  # [B, L] log pi_old
    ratio: torch.Tensor  # r: [B, L] or [B, 1], with gradient
    mask: torch.Tensor
    adv: torch.Tensor  # [B, 1]
    sampler_weights: torch.Tensor | None


def _clip(x: SurrogateInputs) -> SurrogateTerms:
    """PPO's: -min(r A, clamp(r, 1 - eps_low, 1 + eps_high) A), r capped at delta first (INTELLECT-2)."""
    low, high = x.settings.epsilon_low, x.settings.epsilon_high
    clipped = x.ratio.clamp(1 - low, 1 + high)
    ratio = x.ratio if x.settings.delta is None else x.ratio.clamp(max=x.settings.delta)
    r = ratio.detach()
    terms = -torch.minimum(ratio * x.adv, clipped * x.adv)
    return SurrogateTerms(terms, r, (r < 1 - low) & (x.adv < 0), (r > 1 + high) & (x.adv > 0))


def _cispo(x: SurrogateInputs) -> SurrogateTerms:
    """CISPO's: -min(r, eps_high) A log pi, the weight a constant."""
    r, cap = x.ratio.detach(), x.settings.epsilon_high
    return SurrogateTerms(-r.clamp(max=cap) * x.adv * x.logprobs, r, None, (r > cap) & (x.adv > 0))


def _sapo(x: SurrogateInputs) -> SurrogateTerms:
    """SAPO's soft gate: -sigmoid(tau (r - 1)) * 4 / tau * A, tau by the sign of A."""
    tau = torch.where(x.adv > 0, x.settings.sapo_temperature_pos, x.settings.sapo_temperature_neg)
    return SurrogateTerms(-torch.sigmoid(tau * (x.ratio - 1)) * 4 / tau * x.adv, x.ratio.detach())


def _vespo(x: SurrogateInputs) -> SurrogateTerms:
    """VESPO's: -phi(w_s) A log pi with the completion's Gamma weight phi, a constant."""
    phi = vespo_weights(x.settings, x.adv, (x.logprobs - x.old).detach(), x.mask, x.sampler_weights)
    return SurrogateTerms(-phi * x.adv * x.logprobs, x.ratio.detach(), vespo_weight=phi)


#: the surrogates by name (:attr:`LossType.surrogate`)
SURROGATES: dict[str, Callable[[SurrogateInputs], SurrogateTerms]] = {
    "clip": _clip,
    "cispo": _cispo,
    "sapo": _sapo,
    "vespo": _vespo,
}


@torch.no_grad()
def vespo_weights(
    settings: SurrogateSettings,
    advantages: torch.Tensor,
    token_log_ratio: torch.Tensor,
    mask: torch.Tensor,
    sampler_weights: torch.Tensor | None,
) -> torch.Tensor:
    """VESPO's phi(w) = exp(lam + k log w - lam w) per completion ``[B, 1]`` (phi(1) = 1), of its
    sequence ratio w = prod_t r_t times its sampler weights, log w clamped to [log 1e-8, 20];
    (k, lam) = (k_pos, lam_pos) where A >= 0, else the negative pair. ``advantages`` ``[B, 1]``."""
    floor = math.log(1e-8)
    log_w = torch.where(mask, token_log_ratio.clamp(-20.0, 20.0), torch.zeros_like(token_log_ratio))
    log_w = log_w.sum(dim=-1, keepdim=True)
    if sampler_weights is not None:
        log_is = torch.log(sampler_weights.to(log_w.dtype)).clamp(floor, 20.0).expand_as(token_log_ratio)
        log_w = log_w + torch.where(mask, log_is, torch.zeros_like(log_is)).sum(dim=-1, keepdim=True)
    log_w = log_w.clamp(floor, 20.0)
    non_negative = advantages >= 0
    k = torch.where(non_negative, settings.vespo_k_pos, settings.vespo_k_neg).to(log_w.dtype)
    lam = torch.where(non_negative, settings.vespo_lambda_pos, settings.vespo_lambda_neg).to(log_w.dtype)
    lam = lam.clamp(min=1e-4)
    phi = torch.exp(lam + k * log_w - lam * torch.exp(log_w))
    return phi.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def first_iteration_weights(
    surrogate: str,
    settings: SurrogateSettings,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    sampler_weights: torch.Tensor | None = None,
    token_factor: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor | None:
    """The constant token weights g ``[B, L]`` with which the one-update loss
    -sum_s c_s A_s sum_t m g log pi has the gradient of the surrogate at r = 1 (its first of
    several updates) in ``dtype``, each token's term multiplied by ``sampler_weights`` (``[B, L]`` or ``[B, 1]``)
    and ``token_factor`` (the off-policy and entropy masks). None: every g is 1.

    clip and sapo: the factors themselves per token; at the sequence level r is the row's mean
    log-ratio, so a row's factors are spread evenly over its counted tokens (their masked mean).
    cispo: min(1, epsilon_high) times the factors (its weight is a constant, never spread).
    vespo: phi(w_s) at r = 1 (its sampler weights inside phi) times ``token_factor``."""
    if surrogate == "vespo":
        adv = advantages.to(dtype)[:, None]
        zero = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        phi = vespo_weights(settings, adv, zero, mask, sampler_weights)
        return phi.expand(mask.shape) if token_factor is None else phi * token_factor
    factors = [f for f in (sampler_weights, token_factor) if f is not None]
    weights = None
    for f in factors:
        weights = f if weights is None else weights * f
    if surrogate == "cispo" and settings.epsilon_high < 1:
        weights = settings.epsilon_high * (
            torch.ones(mask.shape, dtype=dtype, device=mask.device) if weights is None else weights
        )
    if weights is None:
        return None
    weights = weights.to(dtype).expand(mask.shape)
    if settings.level == "sequence" and surrogate in ("clip", "sapo"):
        counted = mask.sum(dim=-1, keepdim=True).clamp(min=1)
        mean = torch.where(mask, weights, torch.zeros_like(weights)).sum(dim=-1, keepdim=True) / counted
        return mean.expand(mask.shape)
    return weights


def importance_weights(
    old_logprobs: torch.Tensor,
    sampler_logprobs: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token_truncate",
    clip_min: float | None = None,
    clip_max: float | None = 3.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampler correction pi_old / pi_sampler, a constant, by TRL's
    ``vllm_importance_sampling_mode``: per token (``token_*``, ``[B, L]``) or one per completion,
    the product of its tokens' (``sequence_*``, ``[B, 1]``); outside [clip_min, clip_max]
    truncated to the bound (``*_truncate``) or set to 0 (``*_mask``). Returns the weights and
    where the ratio fell outside (the same shape). Tokens the sampler could not score (NaN)
    count as agreeing (ratio 1)."""
    diff = torch.nan_to_num(old_logprobs.detach() - sampler_logprobs.to(old_logprobs.dtype), nan=0.0)
    diff = torch.where(mask, diff, torch.zeros_like(diff))
    if mode.startswith("sequence"):
        diff = diff.sum(dim=-1, keepdim=True)
    ratio = torch.exp(diff)
    low = -math.inf if clip_min is None else clip_min
    high = math.inf if clip_max is None else clip_max
    outside = (ratio < low) | (ratio > high)
    if mode.endswith("truncate"):
        return ratio.clamp(min=clip_min, max=clip_max), outside
    return ratio.masked_fill(outside, 0.0), outside


def off_policy_sequence_mask(
    advantages: torch.Tensor,
    token_logprobs: torch.Tensor,
    sampling_logprobs: torch.Tensor,
    mask: torch.Tensor,
    threshold: float,
) -> torch.Tensor:
    """DeepSeek-V3.2's off-policy sequence mask (arXiv:2512.02556), ``[B, 1]`` of 0 and 1: a
    completion with A < 0 whose mean log(pi_sampler / pi) over its counted tokens exceeds
    ``threshold`` is dropped (0), every other kept (1)."""
    kl = torch.nan_to_num(sampling_logprobs.to(token_logprobs.dtype) - token_logprobs.detach(), nan=0.0)
    kl = torch.where(mask, kl, torch.zeros_like(kl)).sum(dim=-1, keepdim=True)
    mean = kl / mask.sum(dim=-1, keepdim=True).clamp(min=1)
    keep = (advantages[:, None] >= 0) | (mean <= threshold)
    return keep.to(token_logprobs.dtype)


def entropy_threshold(counted: Sequence[torch.Tensor], quantile: float) -> float | None:
    """The ``1 - quantile`` quantile of the entropies ``counted`` (flat tensors, together), taken
    in float32 as TRL takes it; None where there are none."""
    every = torch.cat([c.detach().flatten().float().cpu() for c in counted]) if counted else torch.zeros(0)
    return torch.quantile(every, 1 - quantile).item() if every.numel() else None


def high_entropy_masks(
    entropies: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], quantile: float
) -> list[torch.Tensor]:
    """Per batch of ``entropies`` ``[B, L]``: its counted tokens (``masks``) whose entropy is at
    least the ``1 - quantile`` quantile of every batch's counted tokens together (TRL's
    ``top_entropy_quantile``, "Beyond the 80/20 rule", arXiv:2506.01939): ``quantile=0.2`` keeps
    the top 20 %."""
    threshold = entropy_threshold([e.detach()[m] for e, m in zip(entropies, masks)], quantile)
    if threshold is None:
        return [torch.zeros_like(m) for m in masks]
    return [(e.detach() >= threshold) & m for e, m in zip(entropies, masks)]


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


def clipped_surrogate(
    token_logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float,
    level: str = "token",
) -> SurrogateTerms:
    """PPO's clipped surrogate per token, -min(r A, clamp(r, 1 - eps_low, 1 + eps_high) A), with
    r = pi / pi_old per token (``level="token"``) or per completion (``"sequence"``, GSPO: r =
    exp(mean_t log(pi / pi_old)) over its counted tokens, one ratio for all its tokens)."""
    settings = SurrogateSettings(level=level, epsilon_low=epsilon_low, epsilon_high=epsilon_high)
    return surrogate_terms("clip", settings, token_logprobs, old_logprobs, mask, advantages)


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

    def add_importance_weights(self, weights: torch.Tensor, outside: torch.Tensor, mask: torch.Tensor) -> None:
        """The sampler weights' mean and the share of tokens whose ratio was truncated or masked."""
        self.add("is_weight_mean", weights.expand(mask.shape), mask)
        self.add("is_capped_fraction", outside.expand(mask.shape).double(), mask)

    def add_surrogate(self, out: SurrogateTerms, mask: torch.Tensor) -> None:
        """The ratio's mean and the clip's shares (those the surrogate has)."""
        low = None if out.clipped_low is None else out.clipped_low.double()
        high = None if out.clipped_high is None else out.clipped_high.double()
        if low is not None:
            self.add("clip_low_fraction", low, mask)
        if high is not None:
            self.add("clip_high_fraction", high, mask)
            self.add("clip_fraction", high if low is None else low + high, mask)
        if out.vespo_weight is not None:
            self.add("vespo_weight_mean", out.vespo_weight.expand(mask.shape), mask)
        self.add("ratio_mean", out.ratio, mask)

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
    "LOSS_TYPE_TABLE",
    "LossType",
    "SURROGATES",
    "SurrogateInputs",
    "SurrogateSettings",
    "SurrogateTerms",
    "UpdateTally",
    "clipped_surrogate",
    "first_iteration_weights",
    "entropy_threshold",
    "high_entropy_masks",
    "importance_weights",
    "k3_kl",
    "log_importance_ratio",
    "loss_normaliser",
    "off_policy_sequence_mask",
    "policy_gradient_loss_sum",
    "sequence_scale",
    "surrogate_terms",
    "token_terms_loss_sum",
    "truncated_importance_weights",
    "vespo_weights",
]
