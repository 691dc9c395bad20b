"""One MAGRPO step, top to bottom: the whole algorithm, and nothing but the algorithm.

    envs        = one environment per dataset item
    turns       = sample_tree(team, envs)        1. rollout: every agent samples G completions per
                                                    node from its own observation (sequential: after
                                                    the earlier agents, seeing their answers); the
                                                    joint actions step the environments (joint
                                                    rewards, next observations), up to num_turns;
                                                    MADPO with a comparator: its G joint actions per
                                                    node beside the team's (magrpo.comparator)
    returns     = turn_returns(turns)            2. reward + discount * mean of the children's returns
    advantages  = team.baseline(turns, returns)  3. per agent, centred over the siblings of each node
                                                    (MAGRPO; counterfactual credit: over the
                                                    alternatives that share its earlier answers;
                                                    IAC, MAAC: R - V, magrpo.critics; MADPO:
                                                    DPO's weights of each node's pairs,
                                                    magrpo.preference; MARLHF: a learnt reward's,
                                                    magrpo.learned_reward)
    experience  = build_experience(...)          4. per agent: its completions with a signal, in
    update_agent(i, experience)                     micro-batches (pi_old, pi_ref made before the
                                                    update); -sum A * log pi_i(c_i | o_i) / N, gradient
                                                    clipping, one AdamW step (or num_iterations
                                                    clipped ones: magrpo.objective)

What each of these is was resolved once, when the team was prepared (:class:`~magrpo.team.Team`):
the sampler, the baseline, the objective, the precision; the turn's protocol is the tree's
(:mod:`magrpo.protocol`). Data parallel stays out of sight behind
``team.ranks`` (:mod:`magrpo.ranks`): with one process its every call is the identity.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from magrpo.baselines import BaselineTraining, ExtraLoss
from magrpo.envs.base import MultiAgentEnv
from magrpo.experience import Experience, build_experience, micro_batch_logprobs, scoring
from magrpo.loss import UpdateTally
from magrpo.objective import EntropyBonus, EntropyControl, Objective, policy_loss
from magrpo.sampling.vllm_engine import engines_asleep
from magrpo.seeds import mix_seed
from magrpo.team import Team
from magrpo.threads import in_split_threads
from magrpo.tree import Turn, expand_tree, trained_rollouts, turn_returns


@dataclass
class SampledTree:
    """A step's rollout: its tree, the seconds it took, the step it is for (its items' random
    streams) and the policy version (updates taken before it) whose weights sampled it: the
    step's own, or the one before with rollouts sampled ahead (magrpo.overlap)."""

    turns: list[Turn]
    seconds: float
    step: int
    version: int


@dataclass
class StepOutput:
    """What one step did: its tree, returns, each agent's advantages and update figures, the
    baseline's training and figures (IAC, MAAC: each critic's, by its name), the time of each half."""

    turns: list[Turn]
    returns: list[torch.Tensor]
    #: per agent, per turn: [P_t * C] (C: its completions per node); then, MADPO with a comparator,
    #: the comparator's completions' weights, per turn that has them (magrpo.tree.trained_rollouts)
    advantages: list[list[torch.Tensor]]
    agent_figures: list[dict[str, float]]
    rollout_seconds: float
    update_seconds: float
    baseline_training: BaselineTraining | None = None
    critic_figures: dict[str, dict[str, float]] = field(default_factory=dict)


def magrpo_step(team: Team, envs: Sequence[MultiAgentEnv], step: int) -> StepOutput:
    """One MAGRPO step on ``envs`` (one per dataset item of this rank's share of the batch): the
    tree sampled with the current weights, then learnt from."""
    return learn(team, sample_tree(team, envs, step))


def sample_tree(team: Team, envs: Sequence[MultiAgentEnv], step: int, version: int | None = None) -> SampledTree:
    """1. rollout: every agent samples G completions per node from its own observation; the joint
    actions step the environments (joint rewards, next observations), up to num_turns. Its
    random draws come from the step's own seed, whatever else draws from torch's RNG meanwhile."""
    args, ranks = team.args, team.ranks
    started = time.perf_counter()
    # each item's place in the step's global batch keys its random stream: the same
    # samples whichever rank, and whichever other items, it is sampled with
    item_keys = [(step * ranks.world_size + ranks.rank) * len(envs) + k for k in range(len(envs))]
    # with whole weights: sharded agents are gathered for a sampler that runs them
    with ranks.whole_weights(team.sampler.models_to_gather(team.agents)):
        turns = expand_tree(
            team.agents,
            envs,
            sampler=team.sampler,
            joint_mode=args.joint_mode,
            protocol=args.protocol,
            num_continuations=args.num_continuations,
            num_turns=args.num_turns,
            expand=args.expand,
            expand_k=args.expand_k,
            early_stop_reward=args.early_stop_reward,
            item_keys=item_keys,
            seed_source=torch.Generator().manual_seed(mix_seed(args.seed, step)),
        )
        if team.comparator is not None:  # MADPO's comparator: G joint actions of its own per node (one turn)
            turns[0].comparator = team.comparator.sample(
                turns[0], envs, team.sampler, item_keys, mix_seed(args.seed, step)
            )
    return SampledTree(turns, time.perf_counter() - started, step, step if version is None else version)


def learn(team: Team, sampled: SampledTree) -> StepOutput:
    """2. - 4.: the tree's returns, every agent's advantages, and each agent's update."""
    args, turns = team.args, sampled.turns
    # 2. returns over the tree
    returns = turn_returns(turns, args.discount, args.num_turns, rewards=team.learning_rewards(turns))
    started = time.perf_counter()
    with engines_asleep(team.agents):  # vLLM engines asleep on a GPU during the update
        # 3. advantages: the group's baseline (or a critic's), and what the baseline trains
        advantages, training = team.baseline(turns, returns)

        # 4. per agent: its experience, then its update (at once where they can: Team.updates_at_once)
        def update(i: int) -> dict[str, float]:
            experience = build_experience(team, i, trained_rollouts(turns, i), advantages[i])
            return update_agent(team, i, experience, training.extra_loss(i))

        jobs = [lambda i=i: update(i) for i in range(len(team.agents))]
        agent_figures = in_split_threads(jobs) if team.updates_at_once() else [job() for job in jobs]
        critic_figures = training.train()  # a critic model of its own trains after the agents
    update_seconds = time.perf_counter() - started
    return StepOutput(
        turns, returns, advantages, agent_figures, sampled.seconds, update_seconds, training, critic_figures
    )


def update_agent(team: Team, index: int, experience: Experience, extra_loss: ExtraLoss) -> dict[str, float]:
    """``num_iterations`` AdamW steps of agent ``index`` on its ``experience`` (one: the paper's),
    each over the whole step's completions: for each micro-batch, the loss and its backward pass;
    then the gradients summed over the ranks, clipped, one optimiser step. ``extra_loss`` (a value
    head on this agent's model: IAC, MAAC) joins every step with parameters of its own.

    No completion with a signal on any rank and no extra loss: no pass and no optimiser step (no
    momentum or weight-decay move without a learning signal). Gradients are freed after each
    step: between updates an agent holds none. The figures are means over the steps."""
    agent, optimizer, objective, ranks = team.agents[index], team.optimizers[index], team.objectives[index], team.ranks
    if not (experience.has_signal or extra_loss.parameters):
        return {"loss": 0.0, "grad_norm": 0.0}
    params, device = agent.trainable_parameters(), agent.device
    control, with_entropy = team.entropy_controls[index], objective.has_entropy_bonus
    tally, losses, grad_norms = UpdateTally(), [], []
    optimizer.zero_grad(set_to_none=True)
    for _ in range(objective.num_iterations):
        loss_sum, step_tally = 0.0, UpdateTally()
        bonus = EntropyBonus(control.applied(objective.adaptive_entropy), experience.entropy_tokens)
        with scoring(agent, team.precision) as model:
            for mb in experience.micro_batches:
                logprobs = micro_batch_logprobs(model, mb, objective, with_entropy=with_entropy)
                if with_entropy:
                    logprobs, bonus.entropies = logprobs
                loss, figures = policy_loss(
                    objective,
                    logprobs,
                    mb.completion_mask,
                    mb.advantages,
                    normaliser=experience.normaliser,
                    entropy_bonus=bonus,
                    **mb.loss_inputs(),
                )
                step_tally.include(figures)
                loss.backward()
                loss_sum += float(loss.detach())
            for _ in range(experience.idle_passes):  # sharded: every rank makes the same collectives
                ranks.idle_pass(model, device)
            loss_sum += extra_loss.backward(model)
        losses.append(ranks.sum(loss_sum, device))
        ranks.sum_gradients(params + extra_loss.parameters)  # the global step's gradient: every rank's share
        grad_norms.append(ranks.clip_gradients(params, team.args.max_grad_norm))
        extra_loss.clip(ranks)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        adapt_entropy(team, objective, control, step_tally)
        tally.include(step_tally)
    agent.sync_sampling_copy()
    tally = tally.merged(ranks.gather(tally))  # every rank's tokens: the global figures
    figures = {"loss": sum(losses) / len(losses), "grad_norm": sum(grad_norms) / len(grad_norms), **tally.figures()}
    return {**figures, "entropy_coef": control.coef} if with_entropy else figures


def adapt_entropy(team: Team, objective: Objective, control: EntropyControl, step_tally: UpdateTally) -> None:
    """After an optimiser step: with use_adaptive_entropy, move the agent's entropy coefficient by
    the step's mean token entropy over every rank (the others: nothing)."""
    adaptive = objective.adaptive_entropy
    if adaptive is None:
        return
    figures = step_tally.merged(team.ranks.gather(step_tally)).figures()
    if "entropy_exact" in figures:
        control.update(adaptive, figures["entropy_exact"])


__all__ = ["SampledTree", "StepOutput", "adapt_entropy", "learn", "magrpo_step", "sample_tree", "update_agent"]
