"""The objective each agent minimises, resolved once from the config (:class:`Objective`), and
its loss: a pure function of one micro-batch's tensors (:func:`policy_loss`), returning the loss
and its figures. The formulas, the loss types' normalisers and their surrogates are in
:mod:`magrpo.loss` (its table :data:`~magrpo.loss.LOSS_TYPE_TABLE`: a new loss type is a row
there, never a branch of the update)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from magrpo.loss import (
    LOSS_TYPE_TABLE,
    SurrogateSettings,
    UpdateTally,
    first_iteration_weights,
    importance_weights,
    k3_kl,
    log_importance_ratio,
    loss_normaliser,
    off_policy_sequence_mask,
    policy_gradient_loss_sum,
    sequence_scale,
    surrogate_terms,
    token_terms_loss_sum,
)

if TYPE_CHECKING:
    from magrpo.config import MAGRPOConfig


@dataclass(frozen=True)
class AdaptiveEntropy:
    """Skywork-OR1's control of the entropy coefficient (arXiv:2505.22312; TRL's
    ``use_adaptive_entropy``): after each optimiser step the coefficient moves by ``delta``, up
    where the step's mean token entropy is at most ``target``, else down, within [low, high]; it
    applies only while the last step's entropy is at most ``target``."""

    target: float
    delta: float
    low: float
    high: float


@dataclass
class EntropyControl:
    """One agent's entropy coefficient and the mean entropy of its last optimiser step."""

    coef: float
    last_entropy: float = math.inf

    def applied(self, adaptive: AdaptiveEntropy | None) -> float:
        """The coefficient the next optimiser step applies."""
        if adaptive is None or self.last_entropy <= adaptive.target:
            return self.coef
        return 0.0

    def update(self, adaptive: AdaptiveEntropy | None, entropy: float) -> None:
        """After an optimiser step whose mean token entropy was ``entropy``."""
        if adaptive is None:
            return
        if entropy <= adaptive.target:
            self.coef = min(self.coef + adaptive.delta, adaptive.high)
        else:
            self.coef = max(self.coef - adaptive.delta, adaptive.low)
        self.last_entropy = entropy

    def state_dict(self) -> dict[str, float]:
        return {"coef": self.coef, "last_entropy": self.last_entropy}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.coef, self.last_entropy = float(state["coef"]), float(state["last_entropy"])


@dataclass(frozen=True)
class Objective:
    """What the update optimises and how its log-probabilities are computed."""

    #: the loss type: its normaliser, row scale and surrogate (magrpo.loss.LOSS_TYPE_TABLE)
    loss_type: str
    #: dr_grpo's constant: the step's completions times this
    max_new_tokens: int
    #: optimiser steps per rollout: 1 is the paper's REINFORCE update, more the surrogate of r = pi / pi_old
    num_iterations: int
    #: the surrogates' knobs: the ratio's level, the clip, delta, SAPO's temperatures, VESPO's (k, lambda)
    surrogate: SurrogateSettings
    #: weight of the k3 KL to the reference policy (0: none)
    beta: float
    #: the KL term times r = pi / pi_old (DeepSeek-V3.2's unbiased reverse-KL gradient)
    use_bias_correction_kl: bool
    #: how the sampler correction pi_old / pi_sampler is taken: token_/sequence_ x truncate/mask
    importance_sampling_mode: str
    #: the sampler correction's bounds [rollout_is_floor, rollout_is_cap] (None: no lower bound)
    rollout_is_floor: float | None
    rollout_is_cap: float
    #: drop completions with A < 0 whose mean log(pi_sampler / pi) exceeds this (None: keep all)
    off_policy_mask_threshold: float | None
    #: the share of counted tokens, the highest-entropy ones under pi_old, that carry the policy term (1: all)
    top_entropy_quantile: float
    #: the entropy bonus' initial coefficient, and its adaptive control (None: constant)
    entropy_coef: float
    adaptive_entropy: AdaptiveEntropy | None
    #: completions cut at max_new_tokens without an end-of-sequence token leave the loss
    mask_truncated_completions: bool
    #: the sampling temperature: the policy scored is softmax(logits / temperature)
    temperature: float
    #: completion positions whose float32 log-softmax is alive at once (None: all)
    logprob_chunk_size: int | None
    #: run each distinct prompt through the model once per micro-batch (same values and gradients)
    share_prompt: bool
    #: weight the policy term by pi_old / pi_sampler where another policy sampled; MADPO's weights
    #: are DPO's gradient whoever sampled the pair (DPO's loss is off-policy), so it takes none
    corrects_sampler: bool = True

    @classmethod
    def from_config(cls, args: MAGRPOConfig, *, sharded: bool = False, agent: int = 0) -> "Objective":
        """The config's objective for agent ``agent`` (its own temperature and budget where given
        per agent); ``sharded`` ranks score one pass per micro-batch (every rank's micro-batch must
        make the same collectives), so their prompts are not shared."""
        low, high = args.epsilon_bounds()
        adaptive = (
            AdaptiveEntropy(args.entropy_target, args.entropy_coef_delta, args.entropy_coef_min, args.entropy_coef_max)
            if args.use_adaptive_entropy
            else None
        )
        return cls(
            loss_type=args.loss_type,
            max_new_tokens=args.per_agent("max_new_tokens")[agent],
            num_iterations=args.num_iterations,
            surrogate=SurrogateSettings(
                level=args.importance_sampling_level,
                epsilon_low=low,
                epsilon_high=high,
                delta=args.delta,
                sapo_temperature_pos=args.sapo_temperature_pos,
                sapo_temperature_neg=args.sapo_temperature_neg,
                vespo_k_pos=args.vespo_k_pos,
                vespo_lambda_pos=args.vespo_lambda_pos,
                vespo_k_neg=args.vespo_k_neg,
                vespo_lambda_neg=args.vespo_lambda_neg,
            ),
            beta=args.beta,
            use_bias_correction_kl=args.use_bias_correction_kl,
            importance_sampling_mode=args.vllm_importance_sampling_mode,
            rollout_is_floor=args.vllm_importance_sampling_clip_min,
            rollout_is_cap=args.rollout_is_cap,
            off_policy_mask_threshold=args.off_policy_mask_threshold,
            top_entropy_quantile=args.top_entropy_quantile,
            entropy_coef=args.entropy_coef,
            adaptive_entropy=adaptive,
            mask_truncated_completions=args.mask_truncated_completions,
            temperature=float(args.per_agent("temperature")[agent]),
            logprob_chunk_size=args.logprob_chunk_size,
            share_prompt=args.share_prompt_in_update and not args.gradient_checkpointing and not sharded,
            corrects_sampler=args.algorithm != "madpo",
        )

    @property
    def surrogate_kind(self) -> str:
        return LOSS_TYPE_TABLE[self.loss_type].surrogate

    @property
    def needs_old_logprobs(self) -> bool:
        """Several updates per rollout take r against pi_old, the weights that sampled."""
        return self.num_iterations > 1

    @property
    def needs_reference(self) -> bool:
        return self.beta > 0

    @property
    def needs_entropy_mask(self) -> bool:
        """Only the highest-entropy tokens carry the policy term: pi_old's entropies pick them."""
        return self.top_entropy_quantile < 1.0

    @property
    def has_entropy_bonus(self) -> bool:
        """The loss carries -coef * the mean token entropy (its gradient needs the entropies)."""
        return self.entropy_coef != 0.0 or self.adaptive_entropy is not None

    def entropy_control(self) -> EntropyControl:
        """A fresh control of an agent's entropy coefficient."""
        return EntropyControl(self.entropy_coef)

    def normaliser(self, masks: torch.Tensor) -> float:
        """N of the whole batch whose counted tokens are ``masks`` (magrpo.loss)."""
        return loss_normaliser(masks, self.loss_type, self.max_new_tokens)


@dataclass
class EntropyBonus:
    """The entropy term of one optimiser step: -coef * sum of the tokens' entropies / ``tokens``
    (the counted tokens the policy term acts on, over the whole step)."""

    coef: float = 0.0
    tokens: float = 1.0
    #: [B, L] the full-distribution entropy of each position, with gradient
    entropies: torch.Tensor | None = field(default=None, repr=False)


def policy_loss(
    objective: Objective,
    logprobs: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    *,
    normaliser: float = 1.0,
    old_logprobs: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    sampler_logprobs: torch.Tensor | None = None,
    entropy_mask: torch.Tensor | None = None,
    entropy_bonus: EntropyBonus | None = None,
) -> tuple[torch.Tensor, UpdateTally]:
    """One micro-batch's loss, divided by the step's ``normaliser`` N, and its figures.

    ``logprobs`` [B, L]: log pi of the sampled tokens under the weights being trained, ``mask``
    their counted tokens, ``advantages`` [B] float32. ``old_logprobs``: pi_old (None: on-policy,
    the scored weights themselves); ``ref_logprobs``: the reference's (the KL term, beta > 0);
    ``sampler_logprobs``: those of the policy that sampled where another one did (a
    reduced-precision copy, an engine): each token's policy term is then weighted by
    pi_old / pi_sampler as ``importance_sampling_mode`` takes it. ``entropy_mask``: the tokens
    that carry the policy term (top_entropy_quantile); ``entropy_bonus``: the entropy term.

    With one update per rollout the policy term is REINFORCE's, -sum c A sum_t g log pi, whose
    constant token weights g give it the gradient of the surrogate at r = 1: one update is the
    first of several, whatever the loss type, level, sampler correction and masks.
    """
    figures = UpdateTally()
    settings = objective.surrogate
    old = logprobs.detach() if old_logprobs is None else old_logprobs
    weights = None
    if sampler_logprobs is not None:
        weights, outside = importance_weights(
            old,
            sampler_logprobs,
            mask,
            objective.importance_sampling_mode,
            objective.rollout_is_floor,
            objective.rollout_is_cap,
        )
        figures.add_importance_weights(weights, outside, mask)
    token_factor = entropy_mask.to(logprobs.dtype) if entropy_mask is not None else None
    if objective.off_policy_mask_threshold is not None:
        keep = off_policy_sequence_mask(
            advantages, logprobs, old if sampler_logprobs is None else sampler_logprobs, mask,
            objective.off_policy_mask_threshold,
        )  # fmt: skip
        figures.add("off_policy_masked_fraction", (1 - keep).expand(mask.shape), mask)
        token_factor = keep if token_factor is None else token_factor * keep
    figures.add("entropy", -logprobs, mask)  # the mean -log pi of sampled tokens estimates the entropy
    scale = sequence_scale(mask, objective.loss_type)
    kind = objective.surrogate_kind
    if objective.num_iterations == 1:  # on-policy: r = 1 exactly, the paper's REINFORCE loss
        g = first_iteration_weights(kind, settings, mask, advantages, weights, token_factor, logprobs.dtype)
        loss = policy_gradient_loss_sum(logprobs, mask, advantages, g, scale)
    else:
        out = surrogate_terms(kind, settings, logprobs, old, mask, advantages, weights)
        figures.add_surrogate(out, mask)
        terms = out.terms
        for factor in (token_factor, None if kind == "vespo" else weights):  # vespo's phi holds the weights
            if factor is not None:
                terms = terms * factor
        loss = token_terms_loss_sum(terms, mask, scale)
    if ref_logprobs is not None:
        kl = k3_kl(logprobs, ref_logprobs)
        figures.add("kl", kl, mask)
        if objective.use_bias_correction_kl:  # times r: its value at r = 1 unchanged, its gradient not
            kl = kl * torch.exp(log_importance_ratio(logprobs, old, mask, settings.level))
        loss = loss + objective.beta * token_terms_loss_sum(kl, mask, scale)
    loss = loss / normaliser
    if entropy_bonus is not None and entropy_bonus.entropies is not None:
        acting = mask if entropy_mask is None else mask & entropy_mask
        entropies = entropy_bonus.entropies
        figures.add("entropy_exact", entropies, acting)
        if entropy_bonus.coef != 0.0:
            total = torch.where(acting, entropies, torch.zeros_like(entropies)).sum()
            loss = loss - entropy_bonus.coef * total / entropy_bonus.tokens
    return loss, figures


__all__ = ["AdaptiveEntropy", "EntropyBonus", "EntropyControl", "Objective", "policy_loss"]
