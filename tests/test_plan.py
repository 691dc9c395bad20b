"""What a step will cost, before it runs."""

from __future__ import annotations

from magrpo.plan import plan_rollout


def test_planned_costs():
    p = plan_rollout(
        num_agents=2, num_generations=4, num_turns=2, joint_mode="aligned", expand="full", expand_k=1, batch_size=1
    )
    assert (p.nodes_per_turn, p.generations_per_agent, p.reward_calls) == ((1, 4), 20, 20)
    p = plan_rollout(
        num_agents=2, num_generations=2, num_turns=2, joint_mode="cross", expand="full", expand_k=1, batch_size=3
    )
    assert (p.nodes_per_turn, p.generations_per_agent, p.reward_calls) == ((1, 4), 30, 60)
    p = plan_rollout(
        num_agents=2, num_generations=2, num_turns=3, joint_mode="cross", expand="best-k", expand_k=1, batch_size=1
    )
    assert (p.nodes_per_turn, p.generations_per_agent, p.reward_calls) == ((1, 1, 1), 6, 12)
