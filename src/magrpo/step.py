"""One MAGRPO step, top to bottom: the whole algorithm, and nothing but the algorithm.

    envs       = one environment per dataset item
    turns      = expand_tree(agents, envs)        1. rollout: every agent samples G completions per
                                                     node from its own observation; the joint actions
                                                     step the environments (joint rewards, next
                                                     observations), up to num_turns
    returns    = turn_returns(turns)              2. reward + discount * mean of the children's returns
    advantages = agent_advantages(returns, i)     3. per agent, centred over the siblings of each node
                 (IAC, MAAC: critic_step)            (or R - V(node), a critic's value: magrpo.critics)
    update_agent(i, rollouts, advantages)         4. per agent: -sum A * log pi_i(c_i | o_i) / normaliser,
                                                     (+ its critic's value loss), gradient clipping, one
                                                     AdamW step (or num_iterations clipped ones: magrpo.loss)

The hand-off from sampling to the update is the :class:`~magrpo.sampling.Rollout` of each agent
at each turn (inside :class:`~magrpo.tree.Turn`). Data parallel stays out of sight behind
``team.ranks`` (:mod:`magrpo.ranks`): with one process its every call is the identity.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from magrpo.advantages import agent_advantages
from magrpo.config import MAGRPOConfig
from magrpo.critics.critic import Critic, CriticBatch, chunked_values, critic_step
from magrpo.critics.targets import value_loss
from magrpo.envs.base import MultiAgentEnv
from magrpo.errors import ConfigError
from magrpo.grouping import distinct_by_identity
from magrpo.logprobs import (
    completion_token_logprobs,
    eos_tensor,
    pad_right,
    scoring_mode,
    shared_prompt_token_logprobs,
    trim_left,
    trim_right,
)
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
from magrpo.models import AgentPolicy
from magrpo.ranks import OneProcess
from magrpo.sampling import Rollout, concurrent_agents, sampler_for
from magrpo.sampling.vllm_engine import engines_asleep
from magrpo.threads import in_split_threads
from magrpo.tree import Turn, expand_tree, turn_returns

#: what a critic reports each step, under its own name
CRITIC_FIGURES = ("value_loss", "value_grad_norm", "value_mean", "explained_variance")
#: update(agent index, its rollouts per turn, their advantages per turn[, critic=the CriticBatch of
#: the critic it hosts]) -> the update's figures
UpdateFn = Callable[..., dict[str, float]]


@dataclass
class Precision:
    """The precision policy of a run, resolved once from the config and the devices."""

    #: the dtype of the update's forward passes under torch.autocast; None: the weights' own
    autocast: torch.dtype | None
    #: the weights that sample: "same" (the training weights) or a reduced-precision copy's dtype
    rollout_dtype: str


@dataclass
class Team:
    """What a step works with, built once by :func:`magrpo.prepare.prepare_team`."""

    agents: list[AgentPolicy]
    optimizers: list[torch.optim.Optimizer]
    args: MAGRPOConfig
    ranks: OneProcess
    precision: Precision
    #: one learning-rate schedule per optimiser, stepped once per training step (None: constant)
    schedulers: list[torch.optim.lr_scheduler.LRScheduler] | None = None
    #: IAC, MAAC: the critics (a head on an agent's model is a parameter group of that agent's
    #: optimiser; a critic model has its own)
    critics: list[Critic] = field(default_factory=list)


@dataclass
class StepOutput:
    """What one step did: its tree, returns, each agent's update figures and the time of each half."""

    turns: list[Turn]
    returns: list[torch.Tensor]
    #: per agent: its advantages at each turn, and its update's figures
    advantages: list[list[torch.Tensor]]
    agent_figures: list[dict[str, float]]
    rollout_seconds: float
    update_seconds: float
    #: IAC, MAAC: each critic's figures (CRITIC_FIGURES), by its name
    critic_figures: dict[str, dict[str, float]] = field(default_factory=dict)


def magrpo_step(team: Team, envs: Sequence[MultiAgentEnv], step: int, update: UpdateFn | None = None) -> StepOutput:
    """One MAGRPO step on ``envs`` (one per dataset item of this rank's share of the batch).
    ``update(i, rollouts, advantages)`` updates agent i (default :func:`update_agent` on ``team``)."""
    update = update or (lambda i, rollouts, advantages, **critic: update_agent(team, i, rollouts, advantages, **critic))
    a, ranks = team.args, team.ranks
    started = time.perf_counter()
    # 1. rollout, with whole weights (sharded agents are gathered for it)
    with ranks.whole_weights(agent.model for agent in team.agents):
        turns = expand_tree(
            team.agents,
            envs,
            sample=sampler_for(a, training=True),
            joint_mode=a.joint_mode,
            num_generations=a.num_generations,
            num_turns=a.num_turns,
            expand=a.expand,
            expand_k=a.expand_k,
            early_stop_reward=a.early_stop_reward,
            concurrent_agents=concurrent_agents(a),
            # each item's place in the step's global batch keys its random stream: the same
            # samples whichever rank, and whichever other items, it is sampled with
            item_keys=[(step * ranks.world_size + ranks.rank) * len(envs) + k for k in range(len(envs))],
        )
    rollout_seconds = time.perf_counter() - started
    # 2. returns over the tree
    returns = turn_returns(turns, a.discount, a.num_turns)
    # 3. + 4. per agent: its advantages, then its update (vLLM engines asleep on a GPU meanwhile)
    started = time.perf_counter()
    with engines_asleep(team.agents):
        if team.critics:  # IAC, MAAC: the baseline is a critic's value of the node, not the group's mean
            advantages, critic_batches = critic_step(
                team.critics,
                team.agents,
                turns,
                returns,
                gamma=a.discount,
                num_turns=a.num_turns,
                lam=a.critic_lambda,
                normalise=a.normalise_critic_advantages,
                chunk=a.update_micro_batch_size,
                autocast=lambda device: update_autocast(team, device),
                ranks=ranks,
            )
        else:
            advantages = [
                [
                    agent_advantages(
                        ret,
                        agent=i,
                        num_agents=len(team.agents),
                        joint_mode=a.joint_mode,
                        scaling=a.advantage_scaling,
                        cross_aggregation=a.cross_aggregation,
                        baseline=a.advantage_baseline,
                    )
                    for ret in returns
                ]
                for i in range(len(team.agents))
            ]
            critic_batches = []
        # a head on an agent's model trains in that agent's update; a critic model after them
        hosted = {b.critic.host: b for b in critic_batches if b.critic.model is None}
        jobs = [
            lambda i=i: update(
                i, [t.rollouts[i] for t in turns], advantages[i], **({"critic": hosted[i]} if i in hosted else {})
            )
            for i in range(len(team.agents))
        ]
        agent_figures = in_split_threads(jobs) if updates_at_once(team) else [job() for job in jobs]
        critic_figures = {
            batch.critic.name: (
                {k: agent_figures[batch.critic.host].pop(k) for k in CRITIC_FIGURES}
                if batch.critic.model is None
                else update_critic(team, batch)
            )
            for batch in critic_batches
        }
    return StepOutput(
        turns, returns, advantages, agent_figures, rollout_seconds, time.perf_counter() - started, critic_figures
    )


def updates_at_once(team: Team) -> bool:
    """Whether the agents update at once, each in a thread with its share of the CPU threads: with
    ``concurrent_agents``, in one process (ranks' collectives must come in one order), for agents
    on CPU with models of their own, in float32. Each agent's update touches only its own
    weights, optimiser and figures, and draws no random numbers (dropout is off while scoring),
    so the run is the same. Under bf16 autocast two runs of concurrent updates differed in the
    last bits from the fifth step on (oneDNN's bf16 kernels, whose choice depends on the threads
    of whoever built them first), which would break an exact resume: there they take turns."""
    agents = team.agents
    return (
        team.precision.autocast is None
        and team.args.concurrent_agents
        and not team.ranks.sharded
        and team.ranks.world_size == 1
        and len(agents) > 1
        and len(distinct_by_identity(agents, key=lambda agent: agent.model)) == len(agents)
        and all(agent.device.type == "cpu" for agent in agents)
    )


def update_agent(
    team: Team,
    index: int,
    rollouts: Sequence[Rollout],
    advantages: Sequence[torch.Tensor],
    critic: CriticBatch | None = None,
) -> dict[str, float]:
    """``num_iterations`` AdamW steps of agent ``index`` (one: the paper's) on its completions of
    every turn: ``rollouts[t]`` and ``advantages[t]`` (``[P_t * G]``, row p * G + g) are its samples
    and their advantages at turn t. Each optimiser step takes the whole step's completions.

    The loss is normalised over the whole step (all turns, all micro-batches, all ranks), so
    splitting the batch changes nothing but memory. Completions with advantage exactly 0 add
    exactly 0 gradient and are not run through the model (unless the KL term, ``beta`` > 0, has a
    gradient for them); when no completion carries a signal there is no gradient and no optimiser
    step (no momentum or weight-decay move without a learning signal). Gradients are freed after
    each step: between updates an agent holds none. The figures are means over the steps.

    ``critic``: the critic whose head sits on this agent's model (IAC, MAAC) and what it trains
    on; its value loss (``value_loss_coef`` times :func:`critic_loss_sum`) joins the agent's loss
    in every optimiser step, its head a parameter group of the agent's optimiser, clipped at
    ``max_grad_norm`` apart from the agent's weights (the value loss's gradient on the shared body
    is clipped with the actor's, as a shared trunk's).
    """
    a, ranks = team.args, team.ranks
    agent, optimizer = team.agents[index], team.optimizers[index]
    device = agent.device
    counted = [counted_rows(agent, rollout, a.mask_truncated_completions) for rollout in rollouts]
    if a.mask_truncated_completions and not any(rows.any() for rows in counted):
        warnings.warn(
            f"every completion of {agent.name} reached max_new_tokens={a.max_new_tokens} without an end-of-sequence "
            "token: mask_truncated_completions leaves it nothing to learn from; raise max_new_tokens",
            stacklevel=2,
        )
    width = max(x.completion_mask.shape[1] for x in rollouts)
    all_masks = torch.cat([pad_right(r.completion_mask[rows], width) for r, rows in zip(rollouts, counted)])
    normaliser = ranks.sum(loss_normaliser(all_masks, a.loss_type, a.max_new_tokens), device)
    params = agent.trainable_parameters()
    head = list(critic.critic.head.parameters()) if critic else []
    value_count = ranks.sum(critic.num_targets, device) if critic else 0
    optimizer.zero_grad(set_to_none=True)
    # micro-batches of the counted completions that carry a learning signal
    work = [
        (rollout, adv, chunk)
        for rollout, adv, rows in zip(rollouts, advantages, counted)
        for chunk in torch.nonzero(rows.to(adv.device) & ((adv != 0) | (a.beta > 0)))
        .flatten()
        .split(a.update_micro_batch_size)
        if len(chunk)
    ]
    if not ranks.sum(len(work), device) and not critic:  # no rank has a signal: no pass, no step
        return {"loss": 0.0, "grad_norm": 0.0}
    idle = ranks.idle_passes(len(work), device)
    tally = UpdateTally()
    memos: list[dict[str, torch.Tensor]] = [{} for _ in work]  # per micro-batch: pi_old, pi_ref
    losses, grad_norms, value_losses, head_norms = [], [], [], []
    for _ in range(a.num_iterations):
        loss_total = 0.0
        # dropout off: the update scores the policy that sampled (which samples in eval mode)
        with agent.with_own_adapter() as on, scoring_mode(on) as model, update_autocast(team, device):
            for (rollout, adv, rows), memo in zip(work, memos):
                loss = chunk_loss(team, agent, model, rollout, adv, rows, tally, memo) / normaliser
                loss.backward()
                loss_total += float(loss.detach())
            for _ in range(idle):
                ranks.idle_pass(model, device)
            if critic:  # this rank's share of the value loss
                value_share = critic_loss_sum(team, model, critic, value_count, a.value_loss_coef)
                loss_total += a.value_loss_coef * value_share
        losses.append(ranks.sum(loss_total, device))
        if critic:
            value_losses.append(ranks.sum(value_share, device))
        ranks.sum_gradients(params + head)  # the global step's gradient: the sum of every rank's share
        grad_norms.append(ranks.clip_gradients(params, a.max_grad_norm))
        if critic:  # clipped apart: the head's value gradient would otherwise set the actor's clip
            head_norms.append(ranks.clip_gradients(head, a.max_grad_norm))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    agent.sync_sampling_copy()
    tally = tally.merged(ranks.gather(tally))  # every rank's tokens: the global figures
    figures = {"loss": sum(losses) / len(losses), "grad_norm": sum(grad_norms) / len(grad_norms), **tally.figures()}
    if critic:
        figures.update(
            value_loss=sum(value_losses) / len(value_losses),
            value_grad_norm=sum(head_norms) / len(head_norms),
            **critic.figures(ranks),
        )
    return figures


def update_critic(team: Team, batch: CriticBatch) -> dict[str, float]:
    """``num_iterations`` AdamW steps of a critic with a model of its own on its value loss (the
    agents' updates are done: they do not see it; ``value_loss_coef`` does not apply, the loss is
    all it trains on); gradients summed over the ranks and clipped at ``max_grad_norm``, as an agent's."""
    a, ranks, critic = team.args, team.ranks, batch.critic
    body, params = critic.model, critic.parameters()
    count = ranks.sum(batch.num_targets, body.device)
    losses, grad_norms = [], []
    critic.optimizer.zero_grad(set_to_none=True)
    for _ in range(a.num_iterations):
        with body.with_own_adapter() as on, scoring_mode(on) as model, update_autocast(team, body.device):
            losses.append(ranks.sum(critic_loss_sum(team, model, batch, count), body.device))
        ranks.sum_gradients(params)
        grad_norms.append(ranks.clip_gradients(params, a.max_grad_norm))
        critic.optimizer.step()
        critic.optimizer.zero_grad(set_to_none=True)
    return {
        "value_loss": sum(losses) / len(losses),
        "value_grad_norm": sum(grad_norms) / len(grad_norms),
        **batch.figures(ranks),
    }


def update_autocast(team: Team, device: torch.device) -> contextlib.AbstractContextManager:
    """The update's forward passes' precision on ``device``: the run's autocast, or none."""
    if team.precision.autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=team.precision.autocast)


def critic_loss_sum(team: Team, model: torch.nn.Module, batch: CriticBatch, count: int, weight: float = 1.0) -> float:
    """Backpropagate this rank's share of the critic's value loss on ``model`` (its body, in
    scoring mode): 0.5 * (V - R_j)^2 summed over the J joint actions' returns of every node of
    every turn and divided by ``count`` (the targets of every rank), times ``weight`` (a hosted
    head's ``value_loss_coef``); with ``critic_value_clip``, PPO's clipped value loss against the
    values the advantages were made with. Returns this rank's share of the un-weighted value loss."""
    a = team.args
    total = 0.0
    for ids, mask, old, targets in zip(batch.prompt_ids, batch.prompt_mask, batch.old_values, batch.targets):
        width = targets.shape[1]  # every joint action's return is a target of its node's value
        for rows in torch.arange(ids.shape[0], device=ids.device).split(a.update_micro_batch_size):
            values = chunked_values(model, batch.critic.head, ids[rows], mask[rows], len(rows))
            loss = value_loss(
                values.repeat_interleave(width),
                targets[rows.cpu()].reshape(-1).to(values.device),
                old[rows.cpu()].repeat_interleave(width).to(values.device),
                a.critic_value_clip,
            ) * (len(rows) * width / count)
            (weight * loss).backward()
            total += float(loss.detach())
    return total


def counted_rows(agent: AgentPolicy, rollout: Rollout, mask_truncated: bool) -> torch.Tensor:
    """[P * G] bool on the CPU: the completions the loss counts. All of them, or with
    ``mask_truncated`` only those that ended with an end-of-sequence token within max_new_tokens."""
    if not mask_truncated:
        return torch.ones(rollout.completion_ids.shape[0], dtype=torch.bool)
    ended = torch.isin(rollout.completion_ids, eos_tensor(agent.eos_token_ids, rollout.completion_ids))
    return (ended & rollout.completion_mask).any(dim=-1).cpu()


def chunk_loss(
    team: Team,
    agent: AgentPolicy,
    model: torch.nn.Module,
    rollout: Rollout,
    adv: torch.Tensor,
    rows: torch.Tensor,
    tally: UpdateTally,
    memo: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The un-normalised loss of one micro-batch: the completions ``rows`` of ``rollout``.
    ``memo`` keeps what the micro-batch's first pass computed for the later ones: the log-probs
    of pi_old (several updates per rollout) and of the reference (``beta`` > 0)."""
    a = team.args
    memo = {} if memo is None else memo
    device = rollout.completion_ids.device
    rows_d = rows.to(device)
    logprobs, mask = micro_batch_logprobs(team, model, rollout, rows_d)
    if a.num_iterations > 1 and "old" not in memo:  # the first pass scores the weights that sampled
        memo["old"] = logprobs.detach()
    old = memo.get("old", logprobs)
    if a.beta > 0 and "reference" not in memo:  # once per rollout, without gradient
        with torch.no_grad(), agent.as_reference() as reference:
            memo["reference"] = reference_logprobs(team, reference, rollout, rows_d, device)
    weights = None
    # another precision, or another engine, sampled: correct for the gap (on pi_old / pi_sampler)
    if agent.sampling_copy is not None or (agent.rollout_engine is not None and a.vllm_importance_sampling_correction):
        if rollout.token_logprobs is None:
            raise ConfigError(
                f"agent {agent.name!r} samples with a {team.precision.rollout_dtype} copy, but its rollout carries no "
                "sampling-time log-probabilities; use rollout_backend='fast' or rollout_dtype='same'"
            )
        sampler_logprobs = rollout.token_logprobs[rows_d][:, : mask.shape[1]]
        weights = truncated_importance_weights(old, sampler_logprobs, a.rollout_is_cap)
        tally.add_importance_weights(weights, mask, a.rollout_is_cap)
    tally.add("entropy", -logprobs, mask)  # the mean -log pi of sampled tokens estimates the entropy
    advantages = adv[rows].to(device=device, dtype=torch.float32)
    scale = sequence_scale(mask, a.loss_type)
    if a.num_iterations == 1:  # on-policy: r = 1 exactly, the paper's REINFORCE loss
        loss = policy_gradient_loss_sum(logprobs, mask, advantages, weights, scale)
    else:
        low, high = a.epsilon_bounds()
        clip = clipped_surrogate(logprobs, old, mask, advantages, low, high, a.importance_sampling_level)
        tally.add_clip(clip, mask)
        loss = token_terms_loss_sum(clip.terms if weights is None else clip.terms * weights, mask, scale)
    if a.beta > 0:
        kl = k3_kl(logprobs, memo["reference"])
        tally.add("kl", kl, mask)
        loss = loss + a.beta * token_terms_loss_sum(kl, mask, scale)
    return loss


def micro_batch_logprobs(
    team: Team, model: torch.nn.Module, rollout: Rollout, rows: torch.Tensor, on: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(c_t | ...) of the completions ``rows`` of ``rollout`` under ``model``, and their
    mask, trimmed to the longest of them. ``on``: the device ``model`` runs on when it is not the
    rollout's (a reference copy elsewhere): only this micro-batch's tensors move there."""
    a = team.args
    # the distinct prompts of this chunk, and which one each row continues
    prompts, prompt_index = torch.unique(rows // rollout.num_generations, return_inverse=True)
    prompt_ids, prompt_mask = trim_left(rollout.prompt_ids[prompts], rollout.prompt_mask[prompts])
    completion_ids, mask = trim_right(rollout.completion_ids[rows], rollout.completion_mask[rows])
    if on is not None:
        prompt_ids, prompt_mask, prompt_index, completion_ids, mask = (
            t.to(on) for t in (prompt_ids, prompt_mask, prompt_index, completion_ids, mask)
        )
    # sharded: every rank's micro-batch must make the same collectives, so one model pass each
    shared = a.share_prompt_in_update and not a.gradient_checkpointing and not team.ranks.sharded
    if shared and len(prompts) < len(rows):  # each prompt through the model once
        logprobs = shared_prompt_token_logprobs(
            model, prompt_ids, prompt_mask, prompt_index, completion_ids, mask, a.temperature, a.logprob_chunk_size
        )
    else:
        logprobs = completion_token_logprobs(
            model,
            prompt_ids[prompt_index],
            prompt_mask[prompt_index],
            completion_ids,
            mask,
            a.temperature,
            a.logprob_chunk_size,
        )
    return logprobs, mask


def reference_logprobs(
    team: Team, reference: torch.nn.Module, rollout: Rollout, rows: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """The reference policy's log-probs of the completions ``rows``, computed on its own device."""
    where = next(reference.parameters()).device
    with scoring_mode(reference) as model:
        return micro_batch_logprobs(team, model, rollout, rows, on=None if where == device else where)[0].to(device)


__all__ = [
    "CRITIC_FIGURES",
    "Precision",
    "StepOutput",
    "Team",
    "UpdateFn",
    "chunk_loss",
    "counted_rows",
    "critic_loss_sum",
    "magrpo_step",
    "micro_batch_logprobs",
    "update_agent",
    "update_autocast",
    "update_critic",
]
