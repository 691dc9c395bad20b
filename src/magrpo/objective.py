"""The objective each agent minimises, resolved once from the config (:class:`Objective`), and
its loss: a pure function of one micro-batch's tensors (:func:`policy_loss`), returning the loss
and its figures. The formulas and the normalisers of the loss types are in :mod:`magrpo.loss`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from magrpo.loss import (
    UpdateTally,
    clipped_surrogate,
    k3_kl,
    loss_normaliser,
    policy_gradient_loss_sum,
    sequence_scale,
    token_terms_loss_sum,
    truncated_importance_weights,
)

if TYPE_CHECKING:
    from magrpo.config import MAGRPOConfig


@dataclass(frozen=True)
class Objective:
    """What the update optimises and how its log-probabilities are computed."""

    #: the normaliser of the summed loss terms (magrpo.loss: sequence, token, grpo, dr_grpo, dapo, bnpo)
    loss_type: str
    #: dr_grpo's constant: the step's completions times this
    max_new_tokens: int
    #: optimiser steps per rollout: 1 is the paper's REINFORCE update, more the PPO-clipped surrogate
    num_iterations: int
    #: the clip of r = pi / pi_old: [1 - epsilon_low, 1 + epsilon_high], per token or per sequence
    epsilon_low: float
    epsilon_high: float
    importance_sampling_level: str
    #: weight of the k3 KL to the reference policy (0: none)
    beta: float
    #: the cap of the truncated importance weight pi_old / pi_sampler (a sampling copy or an engine sampled)
    rollout_is_cap: float
    #: completions cut at max_new_tokens without an end-of-sequence token leave the loss
    mask_truncated_completions: bool
    #: the sampling temperature: the policy scored is softmax(logits / temperature)
    temperature: float
    #: completion positions whose float32 log-softmax is alive at once (None: all)
    logprob_chunk_size: int | None
    #: run each distinct prompt through the model once per micro-batch (same values and gradients)
    share_prompt: bool

    @classmethod
    def from_config(cls, args: MAGRPOConfig, *, sharded: bool = False) -> "Objective":
        """The config's objective; ``sharded`` ranks score one pass per micro-batch (every rank's
        micro-batch must make the same collectives), so their prompts are not shared."""
        low, high = args.epsilon_bounds()
        return cls(
            loss_type=args.loss_type,
            max_new_tokens=args.max_new_tokens,
            num_iterations=args.num_iterations,
            epsilon_low=low,
            epsilon_high=high,
            importance_sampling_level=args.importance_sampling_level,
            beta=args.beta,
            rollout_is_cap=args.rollout_is_cap,
            mask_truncated_completions=args.mask_truncated_completions,
            temperature=args.temperature,
            logprob_chunk_size=args.logprob_chunk_size,
            share_prompt=args.share_prompt_in_update and not args.gradient_checkpointing and not sharded,
        )

    @property
    def needs_old_logprobs(self) -> bool:
        """Several updates per rollout clip against pi_old, the weights that sampled."""
        return self.num_iterations > 1

    @property
    def needs_reference(self) -> bool:
        return self.beta > 0

    def normaliser(self, masks: torch.Tensor) -> float:
        """N of the whole batch whose counted tokens are ``masks`` (magrpo.loss)."""
        return loss_normaliser(masks, self.loss_type, self.max_new_tokens)


def policy_loss(
    objective: Objective,
    logprobs: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    *,
    old_logprobs: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    sampler_logprobs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, UpdateTally]:
    """The un-normalised loss of one micro-batch and its figures.

    ``logprobs`` [B, L]: log pi of the sampled tokens under the weights being trained, ``mask``
    their counted tokens, ``advantages`` [B] float32. ``old_logprobs``: pi_old (None: on-policy,
    the scored weights themselves); ``ref_logprobs``: the reference's (the KL term, beta > 0);
    ``sampler_logprobs``: those of the policy that sampled where another one did (a
    reduced-precision copy, an engine): each token is then weighted by min(pi_old / pi_sampler,
    cap).
    """
    figures = UpdateTally()
    old = logprobs if old_logprobs is None else old_logprobs
    weights = None
    if sampler_logprobs is not None:
        weights = truncated_importance_weights(old, sampler_logprobs, objective.rollout_is_cap)
        figures.add_importance_weights(weights, mask, objective.rollout_is_cap)
    figures.add("entropy", -logprobs, mask)  # the mean -log pi of sampled tokens estimates the entropy
    scale = sequence_scale(mask, objective.loss_type)
    if objective.num_iterations == 1:  # on-policy: r = 1 exactly, the paper's REINFORCE loss
        loss = policy_gradient_loss_sum(logprobs, mask, advantages, weights, scale)
    else:
        clip = clipped_surrogate(
            logprobs,
            old,
            mask,
            advantages,
            objective.epsilon_low,
            objective.epsilon_high,
            objective.importance_sampling_level,
        )
        figures.add_clip(clip, mask)
        loss = token_terms_loss_sum(clip.terms if weights is None else clip.terms * weights, mask, scale)
    if ref_logprobs is not None:
        kl = k3_kl(logprobs, ref_logprobs)
        figures.add("kl", kl, mask)
        loss = loss + objective.beta * token_terms_loss_sum(kl, mask, scale)
    return loss, figures


__all__ = ["Objective", "policy_loss"]
