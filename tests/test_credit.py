"""Per-agent credit in sequential trees: the group baseline and C3's counterfactual credit
(context-matched alternatives, each valued by its own continuations, leave-one-out baseline),
exact values on hand-built returns."""

from __future__ import annotations

import pytest
import torch

from magrpo import ConfigError, MAGRPOConfig
from magrpo.advantages import contextual_advantages
from magrpo.baselines import GroupBaseline
from magrpo.plan import plan_rollout


def credit(returns, *, credit, num_agents=2, G=2, M=None, **config):
    """Every agent's advantages at one turn, as a run with these settings makes them."""
    args = MAGRPOConfig(
        num_agents=num_agents,
        num_generations=G,
        protocol="sequential",
        joint_mode="cross",
        num_continuations=M,
        credit=credit,
        **config,
    )
    baseline = GroupBaseline.from_config(args)
    advantages, _ = baseline([], [torch.tensor(returns, dtype=torch.float64)])
    return [a[0].tolist() for a in advantages]


def test_the_group_baseline_credits_the_agent_that_did_not_choose_and_the_counterfactual_one_does_not():
    """G = M = 2. The first agent's answer decides everything: after x both of the second agent's
    answers score 0, after y both score 1. Within its context the second agent's alternatives are
    worth the same, so it deserves no credit; the first agent's y deserves all of it."""
    returns = [[0.0, 0.0, 1.0, 1.0]]  # joint actions (x, x0), (x, x1), (y, y0), (y, y1)
    group = credit(returns, credit="group")
    assert group[0] == [-0.5, 0.5]
    assert group[1] == [-0.5, -0.5, 0.5, 0.5]  # the second agent is credited for the first one's choice
    counterfactual = credit(returns, credit="counterfactual")
    assert counterfactual[0] == [-1.0, 1.0]  # V(x) = 0, V(y) = 1: leave-one-out, 0 - 1 and 1 - 0
    assert counterfactual[1] == [0.0, 0.0, 0.0, 0.0]  # the same context, the same value: no credit


def test_each_alternative_is_valued_by_its_own_continuations_with_a_leave_one_out_baseline():
    """G = 3 first answers, each continued by M = 2 answers of the second agent."""
    returns = [[1.0, 3.0, 0.0, 2.0, 5.0, 7.0], [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]]
    first, second = credit(returns, credit="counterfactual", G=3, M=2)
    # node 0: V = (2, 1, 6); A_g = V_g - mean of the other two: 2 - 3.5, 1 - 4, 6 - 1.5; node 1: all tied
    assert first == [-1.5, -3.0, 4.5, 0.0, 0.0, 0.0]
    # each pair that follows one first answer: its own leave-one-out (K = 2: the difference)
    assert second == [-2.0, 2.0, -2.0, 2.0, -2.0, 2.0] + [0.0] * 6


def test_a_middle_agent_is_valued_by_the_mean_of_the_last_agents_continuations():
    """Three agents, G = M = 2: eight joint actions per node with returns 0 .. 7."""
    returns = [[float(j) for j in range(8)]]
    first, middle, last = credit(returns, credit="counterfactual", num_agents=3)
    assert first == [-4.0, 4.0]  # V = mean(0..3) = 1.5, mean(4..7) = 5.5
    assert middle == [-2.0, 2.0, -2.0, 2.0]  # V = 0.5, 2.5 | 4.5, 6.5
    assert last == [-1.0, 1.0] * 4
    group_middle = credit(returns, credit="group", num_agents=3)[1]
    assert group_middle == [-3.0, -1.0, 1.0, 3.0]  # centred over the node's four: mean 3.5


def test_the_continuation_count_sets_the_alternatives_of_the_later_agents():
    """G = 2 first answers, each continued by M = 3: K = 2 for the first agent, 3 for the second."""
    returns = [[0.0, 3.0, 6.0, 1.0, 1.0, 4.0]]
    first, second = credit(returns, credit="counterfactual", M=3)
    assert first == [1.0, -1.0]  # V = 3, 2
    assert second == [-4.5, 0.0, 4.5, -1.5, -1.5, 3.0]  # 3/2 * (V - context mean): means 3 and 2
    # std scaling divides each context by its own spread (unbiased: 3 and sqrt(3))
    scaled = credit(returns, credit="counterfactual", M=3, advantage_scaling="std")[1]
    assert scaled == pytest.approx([-1.5, 0.0, 1.5, -1.5 / 3**0.5, -1.5 / 3**0.5, 3.0 / 3**0.5])


def test_group_credit_in_a_sequential_tree_takes_the_runs_baseline_and_aggregation():
    returns = [[0.0, 4.0, 1.0, 3.0]]  # the first agent's answers: continued by (0, 4) and by (1, 3)
    assert credit(returns, credit="group")[0] == [0.0, 0.0]  # the means tie: 2 and 2
    assert credit(returns, credit="group", cross_aggregation="max")[0] == [0.5, -0.5]  # the best: 4 and 3
    # the second agent over the node's four, leave-one-out: 4/3 * (R - 2)
    assert credit(returns, credit="group", advantage_baseline="loo")[1] == [-8 / 3, 8 / 3, -4 / 3, 4 / 3]


def test_contextual_advantages_refuses_returns_that_do_not_fit_the_tree():
    with pytest.raises(ValueError, match="do not continue 4 completions in contexts of 3"):
        contextual_advantages(torch.zeros(1, 8), completions_per_node=4, context_size=3)


def test_an_aligned_sequential_chain_gets_the_simultaneous_group_advantages():
    """Each first answer continued once: joint action g holds the g-th answer of every agent,
    and the group baseline gives both agents its advantage, as in the simultaneous team."""
    args = MAGRPOConfig(num_generations=3, protocol="sequential", joint_mode="aligned")
    advantages, _ = GroupBaseline.from_config(args)([], [torch.tensor([[0.0, 3.0, 6.0]], dtype=torch.float64)])
    assert [a[0].tolist() for a in advantages] == [[-3.0, 0.0, 3.0]] * 2


@pytest.mark.parametrize(
    "config, message",
    [
        (dict(credit="counterfactual"), "protocol='simultaneous', joint_mode='cross'"),
        (dict(credit="counterfactual", protocol="sequential", joint_mode="aligned"), "joint_mode='aligned'"),
        (
            dict(credit="counterfactual", protocol="sequential", joint_mode="cross", num_continuations=1),
            "num_continuations=1 give none",
        ),
        (
            dict(credit="counterfactual", protocol="sequential", joint_mode="cross", advantage_baseline="max"),
            "advantage_baseline='max'",
        ),
        (dict(num_continuations=2), "num_continuations=2 sets how many"),
        (dict(protocol="sequential", algorithm="madpo"), "algorithm='madpo': the preference trainers pair"),
        (dict(protocol="sequential", data_parallel="shard"), "data_parallel='shard'"),
        (dict(protocol="sequential", rollout_backend="vllm", async_rollouts=1), "async_rollouts=1"),
        (
            dict(protocol="sequential", rollout_backend="auto", vllm_mode="server", vllm_server_url="http://x:1"),
            "vllm_mode='server'",
        ),
        (dict(protocol="turns"), "protocol='turns' is not valid; choose one of 'simultaneous', 'sequential'"),
        (dict(credit="shapley"), "credit='shapley' is not valid; choose one of 'group', 'counterfactual'"),
    ],
)
def test_combinations_not_built_are_refused_by_name(config, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        MAGRPOConfig(**config)


def test_the_joint_mode_left_unset_is_aligned_but_a_cross_tree_for_counterfactual_credit():
    assert MAGRPOConfig().joint_mode == "aligned"
    assert MAGRPOConfig(protocol="sequential").joint_mode == "aligned"
    assert MAGRPOConfig(protocol="sequential", credit="counterfactual").joint_mode == "cross"
    assert MAGRPOConfig.defaults()["joint_mode"] == "aligned"  # what a saved config holds: the value resolved


def test_the_plan_counts_each_agents_samples_in_a_sequential_tree():
    common = dict(num_agents=3, num_generations=2, num_turns=1, expand="full", expand_k=1, batch_size=2)
    cross = plan_rollout(joint_mode="cross", protocol="sequential", **common)
    assert (cross.completions_per_node, cross.joint_actions_per_node) == ((2, 4, 8), 8)
    assert (cross.generations_per_agent, cross.reward_calls) == (16, 16)
    assert "generations per agent [4, 8, 16]" in cross.describe()
    three = plan_rollout(joint_mode="cross", protocol="sequential", num_continuations=3, **common)
    assert (three.completions_per_node, three.joint_actions_per_node) == ((2, 6, 18), 18)
    aligned = plan_rollout(joint_mode="aligned", protocol="sequential", **common)
    assert (aligned.completions_per_node, aligned.joint_actions_per_node, aligned.generations_per_agent) == (
        (2, 2, 2),
        2,
        4,
    )
