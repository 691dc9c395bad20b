"""One MAGRPO step, top to bottom: the whole algorithm, and nothing but the algorithm.

    envs       = one environment per dataset item
    turns      = expand_tree(agents, envs)        1. rollout: every agent samples G completions per
                                                     node from its own observation; the joint actions
                                                     step the environments (joint rewards, next
                                                     observations), up to num_turns
    returns    = tree_returns(rewards)            2. reward + discount * mean of the children's returns
    advantages = agent_advantages(returns, i)     3. per agent, centred over the siblings of each node
    update_agent(i, rollouts, advantages)         4. per agent: -sum A * log pi_i(c_i | o_i) / normaliser,
                                                     gradient clipping, one AdamW step

The hand-off from sampling to the update is the :class:`~magrpo.sampling.Rollout` of each agent
at each turn (inside :class:`~magrpo.tree.Turn`). Data parallel stays out of sight behind
``team.ranks`` (:mod:`magrpo.ranks`): with one process its every call is the identity.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from magrpo.advantages import agent_advantages, tree_returns
from magrpo.config import MAGRPOConfig
from magrpo.envs.base import MultiAgentEnv
from magrpo.errors import ConfigError
from magrpo.logprobs import (
    completion_token_logprobs,
    pad_right,
    scoring_mode,
    shared_prompt_token_logprobs,
    trim_left,
    trim_right,
)
from magrpo.loss import ImportanceWeightTally, loss_normaliser, policy_gradient_loss_sum, truncated_importance_weights
from magrpo.models import AgentPolicy
from magrpo.ranks import OneProcess
from magrpo.sampling import Rollout, concurrent_agents, sampler_for
from magrpo.sampling.vllm_engine import engines_asleep
from magrpo.tree import Turn, expand_tree

#: update(agent index, its rollouts per turn, their advantages per turn) -> the update's figures
UpdateFn = Callable[[int, Sequence[Rollout], Sequence[torch.Tensor]], dict[str, float]]


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


def magrpo_step(team: Team, envs: Sequence[MultiAgentEnv], step: int, update: UpdateFn | None = None) -> StepOutput:
    """One MAGRPO step on ``envs`` (one per dataset item of this rank's share of the batch).
    ``update(i, rollouts, advantages)`` updates agent i (default :func:`update_agent` on ``team``)."""
    update = update or (lambda i, rollouts, advantages: update_agent(team, i, rollouts, advantages))
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
    returns = tree_returns(
        [t.rewards for t in turns],
        [t.children for t in turns],
        a.discount,
        solved=[t.solved for t in turns],
        num_turns=a.num_turns,
    )
    # 3. + 4. per agent: its advantages, then its update (vLLM engines asleep on a GPU meanwhile)
    started = time.perf_counter()
    advantages, agent_figures = [], []
    with engines_asleep(team.agents):
        for i in range(len(team.agents)):
            mine = [
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
            agent_figures.append(update(i, [t.rollouts[i] for t in turns], mine))
            advantages.append(mine)
    return StepOutput(turns, returns, advantages, agent_figures, rollout_seconds, time.perf_counter() - started)


def update_agent(
    team: Team, index: int, rollouts: Sequence[Rollout], advantages: Sequence[torch.Tensor]
) -> dict[str, float]:
    """One AdamW step of agent ``index`` on its completions of every turn: ``rollouts[t]`` and
    ``advantages[t]`` (``[P_t * G]``, row p * G + g) are its samples and their advantages at turn t.

    The loss is normalised over the whole step (all turns, all micro-batches, all ranks), so
    splitting the batch changes nothing but memory. Completions with advantage exactly 0 add
    exactly 0 gradient and are not run through the model; when every advantage is 0 there is no
    gradient and no optimiser step (no momentum or weight-decay move without a learning signal).
    Gradients are freed after the step: between updates an agent holds none.
    """
    a, ranks = team.args, team.ranks
    agent, optimizer = team.agents[index], team.optimizers[index]
    device = agent.device
    all_masks = torch.cat(
        [pad_right(r.completion_mask, max(x.completion_mask.shape[1] for x in rollouts)) for r in rollouts]
    )
    normaliser = ranks.sum(loss_normaliser(all_masks, a.loss_aggregation), device)
    params = agent.trainable_parameters()
    optimizer.zero_grad(set_to_none=True)
    # micro-batches of the completions that carry a learning signal
    work = [
        (rollout, adv, chunk)
        for rollout, adv in zip(rollouts, advantages)
        for chunk in torch.nonzero(adv != 0).flatten().split(a.update_micro_batch_size)
        if len(chunk)
    ]
    if not ranks.sum(len(work), device):  # no rank has a signal: no pass, no step
        return {"loss": 0.0, "grad_norm": 0.0}
    idle = ranks.idle_passes(len(work), device)
    loss_total = 0.0
    weights = ImportanceWeightTally()
    autocast = (
        torch.autocast(device.type, dtype=team.precision.autocast)
        if team.precision.autocast is not None
        else contextlib.nullcontext()
    )
    # dropout off: the update scores the policy that sampled (which samples in eval mode)
    with agent.with_own_adapter() as on, scoring_mode(on) as model, autocast:
        for rollout, adv, rows in work:
            loss = chunk_loss(team, agent, model, rollout, adv, rows, weights) / normaliser
            loss.backward()
            loss_total += float(loss.detach())
        for _ in range(idle):
            ranks.idle_pass(model, device)
    loss_total = ranks.sum(loss_total, device)
    ranks.sum_gradients(params)  # the global step's gradient: the sum of every rank's share
    grad_norm = ranks.clip_gradients(params, a.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    agent.sync_sampling_copy()
    return {"loss": loss_total, "grad_norm": grad_norm, **weights.figures()}


def chunk_loss(
    team: Team,
    agent: AgentPolicy,
    model: torch.nn.Module,
    rollout: Rollout,
    adv: torch.Tensor,
    rows: torch.Tensor,
    tally: ImportanceWeightTally,
) -> torch.Tensor:
    """The un-normalised loss of one micro-batch: the completions ``rows`` of ``rollout``."""
    a = team.args
    device = rollout.completion_ids.device
    rows_d = rows.to(device)
    # the distinct prompts of this chunk, and which one each row continues
    prompts, prompt_index = torch.unique(rows_d // rollout.num_generations, return_inverse=True)
    prompt_ids, prompt_mask = trim_left(rollout.prompt_ids[prompts], rollout.prompt_mask[prompts])
    completion_ids, mask = trim_right(rollout.completion_ids[rows_d], rollout.completion_mask[rows_d])
    # sharded: every rank's micro-batch must make the same collectives, so one model pass each
    shared = a.share_prompt_in_update and not a.gradient_checkpointing and not team.ranks.sharded
    if shared and len(prompts) < len(rows_d):  # each prompt through the model once
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
    weights = None
    # another precision, or another engine, sampled: correct for the gap
    if agent.sampling_copy is not None or (agent.rollout_engine is not None and a.vllm_importance_sampling_correction):
        if rollout.token_logprobs is None:
            raise ConfigError(
                f"agent {agent.name!r} samples with a {team.precision.rollout_dtype} copy, but its rollout carries no "
                "sampling-time log-probabilities; use rollout_backend='fast' or rollout_dtype='same'"
            )
        sampler_logprobs = rollout.token_logprobs[rows_d][:, : completion_ids.shape[1]]
        weights = truncated_importance_weights(logprobs, sampler_logprobs, a.rollout_is_cap)
        tally.add(weights, mask, a.rollout_is_cap)
    return policy_gradient_loss_sum(logprobs, mask, adv[rows].to(device=device, dtype=torch.float32), weights)


__all__ = ["Precision", "StepOutput", "Team", "UpdateFn", "chunk_loss", "magrpo_step", "update_agent"]
