"""What a step will cost before it runs: the number of generations and reward calls.

Per item, a node expands into J joint actions. Simultaneous turns (every agent samples G
completions per node): J = G (aligned) or G**N (cross). Sequential turns (agent k answers after
the earlier agents, magrpo.protocol): agent 0 samples G per node and each of agent k-1's answers
is continued by M samples of agent k, M = 1 (aligned) or num_continuations (cross, G by default),
so agent k samples G * M**k per node and J = G * M**(N-1). With full expansion turn t (1-based)
has J**(t-1) nodes; best-k keeps at most k**(t-1). These are upper bounds: branches that finish
early are not expanded.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RolloutPlan:
    nodes_per_turn: tuple[int, ...]  # per item
    joint_actions_per_node: int
    num_generations: int
    batch_size: int
    #: each agent's completions per node (G each where the turns are simultaneous)
    completions_per_node: tuple[int, ...] = ()

    @property
    def generations_per_agent(self) -> int:
        """Completions the busiest agent samples per step (all items, all turns)."""
        per_node = max(self.completions_per_node, default=self.num_generations)
        return self.batch_size * per_node * sum(self.nodes_per_turn)

    @property
    def reward_calls(self) -> int:
        """Joint actions scored per step."""
        return self.batch_size * self.joint_actions_per_node * sum(self.nodes_per_turn)

    def describe(self) -> str:
        per_node = set(self.completions_per_node)
        generations = (
            f"{self.generations_per_agent} generations per agent"
            if len(per_node) < 2
            else "generations per agent "
            + str([self.batch_size * c * sum(self.nodes_per_turn) for c in self.completions_per_node])
        )
        return (
            f"{len(self.nodes_per_turn)} turn(s), nodes per item per turn {list(self.nodes_per_turn)}, "
            f"{self.joint_actions_per_node} joint actions per node, {generations} "
            f"and {self.reward_calls} joint rewards per step"
        )


def completions_per_node(
    *, num_agents: int, num_generations: int, joint_mode: str, protocol: str, num_continuations: int | None
) -> list[int]:
    """C_k: agent k's completions per node (G, or G * M**k in a sequential cross tree)."""
    if protocol != "sequential" or joint_mode == "aligned":
        return [num_generations] * num_agents
    continuations = num_generations if num_continuations is None else num_continuations
    return [num_generations * continuations**k for k in range(num_agents)]


def joint_actions_per_node(
    *, num_agents: int, num_generations: int, joint_mode: str, protocol: str, num_continuations: int | None
) -> int:
    """J: a node's joint actions (a sequential tree: one per answer of the last agent)."""
    if protocol == "sequential":
        return completions_per_node(
            num_agents=num_agents,
            num_generations=num_generations,
            joint_mode=joint_mode,
            protocol=protocol,
            num_continuations=num_continuations,
        )[-1]
    return num_generations if joint_mode == "aligned" else num_generations**num_agents


def plan_rollout(
    *,
    num_agents: int,
    num_generations: int,
    num_turns: int,
    joint_mode: str,
    expand: str,
    expand_k: int,
    batch_size: int,
    protocol: str = "simultaneous",
    num_continuations: int | None = None,
) -> RolloutPlan:
    shape = dict(
        num_agents=num_agents,
        num_generations=num_generations,
        joint_mode=joint_mode,
        protocol=protocol,
        num_continuations=num_continuations,
    )
    joint = joint_actions_per_node(**shape)
    branching = joint if expand == "full" else min(expand_k, joint)
    nodes = tuple(branching**t for t in range(num_turns))
    return RolloutPlan(nodes, joint, num_generations, batch_size, tuple(completions_per_node(**shape)))
