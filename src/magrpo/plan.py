"""What a step will cost before it runs: the number of generations and reward calls.

Per item, a node expands into J joint actions: J = G (aligned) or G**N (cross). Each agent
samples G completions per node. With full expansion turn t (1-based) has J**(t-1) nodes, so the
tree grows as G**T (aligned) or G**(N*T) (cross); best-k keeps at most k**(t-1) nodes.
These are upper bounds: branches that finish early are not expanded.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RolloutPlan:
    nodes_per_turn: tuple[int, ...]  # per item
    joint_actions_per_node: int
    num_generations: int
    batch_size: int

    @property
    def generations_per_agent(self) -> int:
        """Completions each agent samples per step (all items, all turns)."""
        return self.batch_size * self.num_generations * sum(self.nodes_per_turn)

    @property
    def reward_calls(self) -> int:
        """Joint actions scored per step."""
        return self.batch_size * self.joint_actions_per_node * sum(self.nodes_per_turn)

    def describe(self) -> str:
        return (
            f"{len(self.nodes_per_turn)} turn(s), nodes per item per turn {list(self.nodes_per_turn)}, "
            f"{self.joint_actions_per_node} joint actions per node, {self.generations_per_agent} generations per agent "
            f"and {self.reward_calls} joint rewards per step"
        )


def plan_rollout(
    *,
    num_agents: int,
    num_generations: int,
    num_turns: int,
    joint_mode: str,
    expand: str,
    expand_k: int,
    batch_size: int,
) -> RolloutPlan:
    joint = num_generations if joint_mode == "aligned" else num_generations**num_agents
    branching = joint if expand == "full" else min(expand_k, joint)
    nodes = tuple(branching**t for t in range(num_turns))
    return RolloutPlan(nodes, joint, num_generations, batch_size)
