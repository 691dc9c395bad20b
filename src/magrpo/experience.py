"""The hand-off from rollout to update: one agent's :class:`Experience`, built before its first
optimiser step. Its completions that carry a learning signal, cut into micro-batches, each with
everything the loss needs besides the weights being trained: the advantages, pi_old (several
updates per rollout), the reference's log-probs (the KL term) and the sampler's (a
reduced-precision copy or an engine sampled), the tokens that carry the policy term where only
the highest-entropy ones do, and the step's loss normaliser."""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

import torch

from magrpo.errors import ConfigError
from magrpo.logprobs import (
    completion_token_logprobs,
    eos_tensor,
    pad_right,
    scoring_mode,
    shared_prompt_token_logprobs,
    trim_left,
    trim_right,
)
from magrpo.loss import entropy_threshold
from magrpo.models import AgentPolicy
from magrpo.sampling import Rollout

if TYPE_CHECKING:
    from magrpo.objective import Objective
    from magrpo.team import Precision, Team


@dataclass
class MicroBatch:
    """B completions of one turn's rollout that one forward/backward pass scores."""

    prompt_ids: torch.Tensor  # [U, Lp] the distinct prompts they continue, left-padded
    prompt_mask: torch.Tensor  # [U, Lp]
    prompt_index: torch.Tensor  # [B] which of the U prompts each completion continues
    completion_ids: torch.Tensor  # [B, L] right-padded, trimmed to the longest
    completion_mask: torch.Tensor  # [B, L] bool: the counted tokens
    advantages: torch.Tensor  # [B] float32
    old_logprobs: torch.Tensor | None = None  # [B, L] pi_old, the weights that sampled (num_iterations > 1)
    ref_logprobs: torch.Tensor | None = None  # [B, L] the reference policy's (beta > 0)
    sampler_logprobs: torch.Tensor | None = None  # [B, L] the sampling copy's or engine's, where one sampled
    entropy_mask: torch.Tensor | None = (
        None  # [B, L] bool: the tokens that carry the policy term (top_entropy_quantile)
    )

    def loss_inputs(self) -> dict[str, torch.Tensor | None]:
        """What :func:`magrpo.objective.policy_loss` takes of the micro-batch besides the log-probs."""
        return {
            "old_logprobs": self.old_logprobs,
            "ref_logprobs": self.ref_logprobs,
            "sampler_logprobs": self.sampler_logprobs,
            "entropy_mask": self.entropy_mask,
        }


@dataclass
class Experience:
    """What one agent's update runs on: its micro-batches and the step's loss normaliser N (over
    every turn, micro-batch and rank, so splitting the batch changes nothing but memory)."""

    micro_batches: list[MicroBatch]
    normaliser: float
    #: whether any rank has a completion with a learning signal (else no pass and no optimiser step)
    has_signal: bool
    #: sharded ranks: the passes this rank runs without data, so every rank makes the same collectives
    idle_passes: int
    #: the counted tokens the policy term acts on over the step (every rank): the entropy bonus' divisor
    entropy_tokens: float = 1.0


def build_experience(
    team: Team, index: int, rollouts: Sequence[Rollout], advantages: Sequence[torch.Tensor]
) -> Experience:
    """Agent ``index``'s experience of the step: ``rollouts[t]`` and ``advantages[t]`` (``[P_t * C]``,
    row p * C + c; C = G, or more for a later agent of a sequential tree) are its samples and their
    advantages at turn t.

    Completions with advantage exactly 0 add exactly 0 policy gradient and are left out (unless
    another term has a gradient for them or counts them: the KL term, ``beta`` > 0; the entropy
    bonus; the entropy quantile); with ``mask_truncated_completions`` so are those cut at
    max_new_tokens, from the normaliser too. pi_old, pi_ref and pi_old's entropies (the quantile
    of ``top_entropy_quantile``, taken over the whole step) are scored here, without gradient,
    before any optimiser step."""
    objective, ranks = team.objectives[index], team.ranks
    agent = team.agents[index]
    counted = [counted_rows(agent, rollout, objective.mask_truncated_completions) for rollout in rollouts]
    if objective.mask_truncated_completions and not any(rows.any() for rows in counted):
        warnings.warn(
            f"every completion of {agent.name} reached max_new_tokens={objective.max_new_tokens} without an "
            "end-of-sequence token: mask_truncated_completions leaves it nothing to learn from; raise max_new_tokens",
            stacklevel=2,
        )
    width = max(rollout.completion_mask.shape[1] for rollout in rollouts)
    masks = torch.cat([pad_right(r.completion_mask[rows], width) for r, rows in zip(rollouts, counted)])
    normaliser = ranks.sum(objective.normaliser(masks), agent.device)
    correct_sampler = objective.corrects_sampler and samples_elsewhere(
        agent, team.args.vllm_importance_sampling_correction
    )
    if correct_sampler and any(r.token_logprobs is None for r in rollouts):
        raise ConfigError(
            f"agent {agent.name!r} samples with a {team.precision.rollout_dtype} copy, but its rollout carries no "
            "sampling-time log-probabilities; use rollout_backend='fast' or rollout_dtype='same'"
        )
    keep_zero = objective.needs_reference or objective.has_entropy_bonus or objective.needs_entropy_mask
    micro_batches = [
        micro_batch(rollout, adv, chunk, agent.device, correct_sampler)
        for rollout, adv, rows in zip(rollouts, advantages, counted)
        for chunk in torch.nonzero(rows.to(adv.device) & ((adv != 0) | keep_zero))
        .flatten()
        .split(team.args.update_micro_batch_size)
        if len(chunk)
    ]
    experience = Experience(
        micro_batches,
        normaliser,
        has_signal=bool(ranks.sum(len(micro_batches), agent.device)),
        idle_passes=ranks.idle_passes(len(micro_batches), agent.device),
    )
    if objective.needs_old_logprobs or objective.needs_entropy_mask:  # the weights that sampled, before any step
        with scoring(agent, team.precision) as model:
            entropies = score_all(
                team, objective, model, experience, "old_logprobs", with_entropy=objective.needs_entropy_mask
            )
        if not objective.needs_old_logprobs:  # scored for the entropies only: one update is on-policy
            for mb in micro_batches:
                mb.old_logprobs = None
        if objective.needs_entropy_mask:
            set_entropy_masks(team, objective, experience, entropies)
    experience.entropy_tokens = (
        ranks.sum(
            sum(
                float(mb.completion_mask.sum() if mb.entropy_mask is None else mb.entropy_mask.sum())
                for mb in micro_batches
            ),
            agent.device,
        )
        if objective.has_entropy_bonus
        else 1.0
    )
    if objective.needs_reference:
        with scoring(agent, team.precision), agent.as_reference() as reference, scoring_mode(reference) as model:
            score_all(team, objective, model, experience, "ref_logprobs")
    return experience


def micro_batch(
    rollout: Rollout, advantages: torch.Tensor, rows: torch.Tensor, device: torch.device, correct_sampler: bool
) -> MicroBatch:
    """The completions ``rows`` of ``rollout``, with their prompts (each distinct one once) and
    their advantages as float32 on ``device``."""
    on_rollout = rows.to(rollout.completion_ids.device)
    prompts, prompt_index = torch.unique(on_rollout // rollout.num_generations, return_inverse=True)
    prompt_ids, prompt_mask = trim_left(rollout.prompt_ids[prompts], rollout.prompt_mask[prompts])
    completion_ids, mask = trim_right(rollout.completion_ids[on_rollout], rollout.completion_mask[on_rollout])
    sampler = rollout.token_logprobs[on_rollout][:, : mask.shape[1]] if correct_sampler else None
    return MicroBatch(
        prompt_ids,
        prompt_mask,
        prompt_index,
        completion_ids,
        mask,
        advantages[rows].to(device=device, dtype=torch.float32),
        sampler_logprobs=sampler,
    )


def samples_elsewhere(agent: AgentPolicy, engine_correction: bool) -> bool:
    """Whether another policy than the training weights sampled for ``agent`` and the update
    corrects for the gap: a reduced-precision copy, or an engine (``engine_correction``)."""
    return agent.sampling_copy is not None or (agent.rollout_engine is not None and engine_correction)


@torch.no_grad()
def score_all(
    team: Team,
    objective: Objective,
    model: torch.nn.Module,
    experience: Experience,
    field: str,
    with_entropy: bool = False,
) -> list[torch.Tensor]:
    """Set ``field`` of every micro-batch to ``model``'s log-probs of its completions (a reference
    on another device scores there), with the idle passes of a sharded rank. ``with_entropy``:
    returns each micro-batch's entropies too (else an empty list)."""
    where = next(model.parameters()).device
    entropies = []
    for mb in experience.micro_batches:
        on = None if where == mb.completion_ids.device else where
        scores = micro_batch_logprobs(model, mb, objective, on=on, with_entropy=with_entropy)
        if with_entropy:
            scores, entropy = scores
            entropies.append(entropy.to(mb.completion_ids.device))
        setattr(mb, field, scores.to(mb.completion_ids.device))
    for _ in range(experience.idle_passes):
        team.ranks.idle_pass(model, where, backward=False)
    return entropies


def set_entropy_masks(
    team: Team, objective: Objective, experience: Experience, entropies: Sequence[torch.Tensor]
) -> None:
    """Mark in every micro-batch the counted tokens whose entropy under pi_old is in the top
    ``top_entropy_quantile`` of the step's counted tokens (every micro-batch, every rank)."""
    mine = [e[mb.completion_mask].float().cpu() for e, mb in zip(entropies, experience.micro_batches)]
    every = [t for part in team.ranks.gather(mine) for t in part]
    threshold = entropy_threshold(every, objective.top_entropy_quantile)
    for e, mb in zip(entropies, experience.micro_batches):
        mb.entropy_mask = mb.completion_mask & (e >= threshold) if threshold is not None else None


def micro_batch_logprobs(
    model: torch.nn.Module,
    mb: MicroBatch,
    objective: Objective,
    on: torch.device | None = None,
    with_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log pi(c_t | ...) ``[B, L]`` of the micro-batch's completions under ``model`` (and, with
    ``with_entropy``, each position's entropy). ``on``: the device ``model`` runs on when it is
    not the micro-batch's (a reference copy elsewhere)."""
    tensors = (mb.prompt_ids, mb.prompt_mask, mb.prompt_index, mb.completion_ids, mb.completion_mask)
    prompt_ids, prompt_mask, prompt_index, completion_ids, mask = (
        tensors if on is None else tuple(t.to(on) for t in tensors)
    )
    chunk, temperature = objective.logprob_chunk_size, objective.temperature
    if objective.share_prompt and len(prompt_ids) < len(completion_ids):  # each prompt through the model once
        return shared_prompt_token_logprobs(
            model, prompt_ids, prompt_mask, prompt_index, completion_ids, mask, temperature, chunk, with_entropy
        )
    return completion_token_logprobs(
        model,
        prompt_ids[prompt_index],
        prompt_mask[prompt_index],
        completion_ids,
        mask,
        temperature,
        chunk,
        with_entropy,
    )


@contextlib.contextmanager
def scoring(agent: AgentPolicy, precision: Precision) -> Iterator[torch.nn.Module]:
    """``agent``'s model as the update scores it: its adapter on, dropout off (the policy that
    sampled, which samples in eval mode), the forward passes at the run's precision."""
    with agent.with_own_adapter() as on, scoring_mode(on) as model, precision.autocast_on(agent.device):
        yield model


def counted_rows(agent: AgentPolicy, rollout: Rollout, mask_truncated: bool) -> torch.Tensor:
    """[P * G] bool on the CPU: the completions the loss counts. All of them, or with
    ``mask_truncated`` only those that ended within max_new_tokens: with an end-of-sequence token
    or a stop string."""
    if not mask_truncated:
        return torch.ones(rollout.completion_ids.shape[0], dtype=torch.bool)
    ended = torch.isin(rollout.completion_ids, eos_tensor(agent.eos_token_ids, rollout.completion_ids))
    ended = (ended & rollout.completion_mask).any(dim=-1).cpu()
    return ended if rollout.stopped is None else ended | rollout.stopped


__all__ = [
    "Experience",
    "MicroBatch",
    "build_experience",
    "counted_rows",
    "micro_batch",
    "micro_batch_logprobs",
    "samples_elsewhere",
    "scoring",
    "set_entropy_masks",
]
