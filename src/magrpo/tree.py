"""Rollout trees: the joint actions of a step, turn by turn.

Turn 1 starts from one node per dataset item. At every node each agent samples G completions
from its own observation; the joint actions of a node are either aligned (the g-th completion of
every agent together, G of them) or cross (every combination, G**N). With the sequential protocol
the agents answer one after the other, each seeing the earlier answers of its joint action
(:mod:`magrpo.protocol`: the turn's shape). Each joint action steps its own branch of the
environment; a branch that is not finished becomes a node of the next turn (all of them, or only
the best k of each node by reward). All nodes of a turn are sampled together in one batch per
agent (per agent position, sequential).

One turn reads as the data flow: observations -> ``protocol.sample`` (one Rollout per agent) ->
``step_joint_actions`` (joint actions -> joint rewards and next observations) -> the nodes of the
next turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from magrpo.advantages import tree_returns
from magrpo.envs.base import MultiAgentEnv, StepResult, observe_batch, step_batch
from magrpo.envs.check import check_observations, check_step_result
from magrpo.models.agent import AgentPolicy
from magrpo.protocol import TurnProtocol
from magrpo.sampling import Rollout, Sampler
from magrpo.seeds import mix_seed
from magrpo.types import Observation


@dataclass
class ComparatorSamples:
    """MADPO's comparator at one turn (magrpo.comparator): its G joint actions per node, sampled on
    the turn's observations, aligned as the team's are."""

    rollouts: list[Rollout]  # per agent; row p * G + k
    rewards: torch.Tensor  # [P, G] joint rewards (one turn: the returns)


@dataclass
class Turn:
    """One turn of a step: P nodes, each expanded into J joint actions."""

    index: int  # 0-based turn number
    rollouts: list[Rollout]  # per agent; row p * C + c (C: the agent's completions per node, G or more)
    joint_indices: torch.Tensor  # [J, N]: which of each agent's completions of the node joint action j holds
    rewards: torch.Tensor  # [P, J]
    finished: torch.Tensor  # [P, J] bool: the branch ended (terminated, truncated or last turn)
    #: [P, J] bool: the branch ended by reaching its goal (terminated by the environment, or its
    #: reward reached early_stop_reward); absorbing: it keeps its reward for the turns it skips.
    #: With one turn (num_turns = 1) every branch is finished anyway: ``solved`` then only records
    #: whether the env terminated it or its reward reached early_stop_reward, and changes no return
    #: (a solved leaf of the last turn skips no turn)
    solved: torch.Tensor
    results: list[list[StepResult]]  # [P][J]
    #: for nodes of turn > 0: (node, joint action) of the previous turn they continue
    parents: list[tuple[int, int]] | None
    #: (node, joint action) of this turn -> node index in the next turn
    children: dict[tuple[int, int], int] = field(default_factory=dict)
    #: [P, J] bool: open branches that best-k did not continue (their future is not sampled; their
    #: return takes the continued siblings' mean future, see :func:`magrpo.advantages.tree_returns`)
    dropped: torch.Tensor | None = None
    #: per agent, per node: the observation it sampled from (a text or chat messages), as the
    #: environment gave it, before any chat template (None: a turn kept by an older checkpoint)
    observations: list[list[Observation]] | None = None
    #: MADPO with a comparator: the comparator's joint actions on the same observations
    comparator: ComparatorSamples | None = None

    @property
    def num_nodes(self) -> int:
        return self.rewards.shape[0]

    @property
    def num_joint(self) -> int:
        return self.rewards.shape[1]

    def joint_rows(self, node: int, joint: int) -> list[int]:
        """Each agent's rollout row in joint action ``joint`` of ``node``."""
        return joint_rows(self.rollouts, self.num_nodes, node, self.joint_indices[joint])

    def joint_completions(self, node: int, joint: int) -> tuple[str, ...]:
        return tuple(r.texts[row] for r, row in zip(self.rollouts, self.joint_rows(node, joint)))

    def joint_prompts(self, node: int, joint: int) -> tuple[str, ...]:
        """What each agent saw (its rendered prompt) in joint action ``joint`` of ``node``."""
        return tuple(r.prompts[row // r.num_generations] for r, row in zip(self.rollouts, self.joint_rows(node, joint)))


def trained_rollouts(turns: Sequence[Turn], agent: int) -> list[Rollout]:
    """The rollouts agent ``agent``'s update trains on, in the order of a baseline's advantages:
    its own of every turn, then the comparator's of every turn that has one (MADPO: both sides of
    a pair carry the DPO weights)."""
    own = [turn.rollouts[agent] for turn in turns]
    return own + [turn.comparator.rollouts[agent] for turn in turns if turn.comparator is not None]


def joint_rows(rollouts: Sequence[Rollout], num_nodes: int, node: int, indices: torch.Tensor) -> list[int]:
    """Each agent's rollout row for its completion ``indices[i]`` of ``node`` (agent i's rows of a
    node are consecutive, as many as it sampled for the node)."""
    return [node * (len(r.texts) // num_nodes) + int(c) for r, c in zip(rollouts, indices)]


def step_joint_actions(
    nodes: Sequence[MultiAgentEnv], rollouts: Sequence[Rollout], names: Sequence[str], joint_indices: torch.Tensor
) -> tuple[list[list[MultiAgentEnv]], list[list[StepResult]]]:
    """The joint reward step: every joint action of every node steps its own branch of the node's
    environment (all of them in one batch). Returns the branches and their results, both
    ``[P][J]``: node p, joint action j (the joint reward, next observations, whether it ended)."""
    branches: list[MultiAgentEnv] = []
    actions: list[dict[str, str]] = []
    for p, env in enumerate(nodes):
        for row in joint_indices:
            branches.append(env.branch())
            rows = joint_rows(rollouts, len(nodes), p, row)
            actions.append({n: r.texts[k] for n, r, k in zip(names, rollouts, rows)})
    flat = [
        check_step_result(r, names, f"{type(b).__name__}.step()")
        for b, r in zip(branches, step_batch(branches, actions))
    ]
    J = len(joint_indices)
    return [branches[p * J : (p + 1) * J] for p in range(len(nodes))], [
        flat[p * J : (p + 1) * J] for p in range(len(nodes))
    ]


def expand_tree(
    agents: Sequence[AgentPolicy],
    envs: Sequence[MultiAgentEnv],
    *,
    sampler: Sampler,
    joint_mode: str,
    protocol: str = "simultaneous",
    num_continuations: int | None = None,
    num_turns: int = 1,
    expand: str = "full",
    expand_k: int = 1,
    early_stop_reward: float | None = None,
    item_keys: Sequence[int] | None = None,
    seed_source: torch.Generator | None = None,
) -> list[Turn]:
    """Expand every item's tree up to ``num_turns`` turns; returns the turns in order.

    ``sampler`` samples every agent's G completions per observation (G: its settings'
    ``num_generations``); ``protocol`` and ``num_continuations`` say whether the agents answer at
    once or one after the other (:class:`magrpo.protocol.TurnProtocol`).

    ``item_keys`` (one per env, e.g. the item's place in the step's global
    batch) give every node its own random stream, keyed by its item and its place in that item's
    tree, so an item's samples do not depend on the other items beside it (data-parallel ranks
    sample the same). ``seed_source``: where each turn's agent seeds are drawn from (None: torch's
    global RNG)."""
    names = [a.name for a in agents]
    shape = TurnProtocol(protocol, joint_mode, sampler.settings.num_generations, num_continuations)
    joint_indices = shape.joint_indices(len(agents))
    nodes: list[MultiAgentEnv] = list(envs)
    observations = [env.reset()[0] for env in nodes]
    parents: list[tuple[int, int]] | None = None
    roots = list(range(len(nodes)))  # the item each node belongs to
    turns: list[Turn] = []
    for t in range(num_turns):
        # each node's stream: its samples (when keyed by item) and its best-k ties
        keys = _node_keys(range(len(envs)) if item_keys is None else item_keys, roots, t)
        rollouts = shape.sample(
            sampler,
            agents,
            nodes,
            observations,
            prompt_keys=None if item_keys is None else keys,
            seed_source=seed_source,
        )
        branches, results = step_joint_actions(nodes, rollouts, names, joint_indices)
        rewards = torch.tensor([[r.joint_reward for r in row] for row in results], dtype=torch.float64)
        solved = torch.tensor([[_reached_goal(r, early_stop_reward) for r in row] for row in results], dtype=torch.bool)
        last = t == num_turns - 1
        # the env ended the branch: terminated or truncated (StepResult.done)
        ended = torch.tensor([[r.done for r in row] for row in results], dtype=torch.bool)
        finished = solved | ended | last
        # what each agent was given per node, before any chat template (an agent that answers after
        # others saw these with the earlier answers added: its rendered prompts keep that)
        given = [[obs[name] for obs in observations] for name in names]
        turn = Turn(t, rollouts, joint_indices, rewards, finished, solved, results, parents, observations=given)
        turns.append(turn)
        if last:
            break
        continuing = [
            (p, j)
            for p in range(len(nodes))
            for j in _joint_actions_to_expand(rewards[p], finished[p], expand, expand_k, mix_seed(keys[p], 1))
        ]
        turn.dropped = ~finished
        for p, j in continuing:
            turn.dropped[p, j] = False
        if not continuing:
            break
        # only the branches that continue are asked for their next observations (feedback)
        next_nodes = [branches[p][j] for p, j in continuing]
        next_obs = observe_batch(next_nodes, [results[p][j] for p, j in continuing])
        for env, obs in zip(next_nodes, next_obs):
            check_observations(obs, names, f"{type(env).__name__}.observe_many()")
        turn.children = {pj: k for k, pj in enumerate(continuing)}
        nodes, observations, parents = next_nodes, next_obs, continuing
        roots = [roots[p] for p, _ in continuing]
    return turns


def turn_returns(
    turns: Sequence[Turn],
    gamma: float,
    num_turns: int,
    values: Sequence[torch.Tensor] | None = None,
    lam: float = 1.0,
    rewards: Sequence[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """The discounted return of every joint action of ``turns`` (``[P_t, J]`` per turn):
    :func:`magrpo.advantages.tree_returns` over the tree's rewards (or ``rewards``, one ``[P_t, J]``
    per turn: what the team learns from where it is not the logged reward), branches, solved and
    dropped branches; with a critic's node ``values`` and ``lam`` < 1, its TD(lambda) returns."""
    return tree_returns(
        [t.rewards for t in turns] if rewards is None else list(rewards),
        [t.children for t in turns],
        gamma,
        solved=[t.solved for t in turns],
        num_turns=num_turns,
        dropped=[t.dropped for t in turns],
        values=values,
        lam=lam,
    )


def _node_keys(item_keys: Sequence[int], roots: Sequence[int], turn: int) -> list[int]:
    """A key per node: its item's key, the turn and its place among that item's nodes (nodes of
    one item are adjacent and in the same order however the items are batched)."""
    seen: dict[int, int] = {}
    keys = []
    for root in roots:
        place = seen.get(root, 0)
        seen[root] = place + 1
        keys.append(mix_seed(int(item_keys[root]), turn, place))
    return keys


def _reached_goal(result: StepResult, early_stop_reward: float | None) -> bool:
    terminated = all(result.terminations.values())
    return terminated or (early_stop_reward is not None and result.joint_reward >= early_stop_reward)


def _joint_actions_to_expand(
    rewards: torch.Tensor, finished: torch.Tensor, expand: str, k: int, tie_key: int
) -> list[int]:
    """The open joint actions of a node that continue: all of them, or the k best by reward, ties
    broken by a random order drawn from ``tie_key`` (the node's own stream), not by index."""
    open_ = [j for j in range(len(rewards)) if not finished[j]]
    if expand == "full":
        return open_
    order = torch.randperm(len(rewards), generator=torch.Generator().manual_seed(tie_key % 2**63)).tolist()
    place = {j: i for i, j in enumerate(order)}
    return sorted(sorted(open_, key=lambda j: (-float(rewards[j]), place[j]))[:k])


__all__ = [
    "ComparatorSamples",
    "Turn",
    "expand_tree",
    "joint_rows",
    "step_joint_actions",
    "trained_rollouts",
    "turn_returns",
]
