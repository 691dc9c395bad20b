"""Critic targets and advantages on hand-built rollout trees, exactly (IAC and MAAC share the
math; they differ in what the critic reads, hence in the values given here)."""

from __future__ import annotations

import math

import pytest
import torch

from magrpo.advantages import tree_returns
from magrpo.critics import critic_advantages, explained_variance, normalise_advantages, value_loss, value_targets


def test_one_turn_one_sample_per_observation_the_advantage_is_the_return_less_the_value():
    rewards = [torch.tensor([[1.0], [0.25]])]  # two observations, G = 1: no group to compare with
    returns = tree_returns(rewards, [{}], gamma=0.9)
    iac = [torch.tensor([0.5, 0.5]), torch.tensor([1.0, -1.0])]  # agent 0's critic, agent 1's
    assert critic_advantages(returns[0], iac[0]).tolist() == [0.5, -0.25]
    assert critic_advantages(returns[0], iac[1]).tolist() == [0.0, 1.25]
    assert value_targets(returns[0]).tolist() == [1.0, 0.25]


# turn 1: one node, joint action 0 continues into node 0 of turn 2, joint action 1 ends
REWARDS = [torch.tensor([[1.0, 0.5]]), torch.tensor([[2.0, 4.0]])]
CHILDREN = [{(0, 0): 0}, {}]
MAAC_VALUES = [torch.tensor([0.8], dtype=torch.float64), torch.tensor([2.5], dtype=torch.float64)]  # one critic


@pytest.mark.parametrize(
    "lam, first_turn",
    [
        (1.0, [1.0 + 0.5 * 3.0, 0.5]),  # Monte-Carlo: the child's mean return (2 + 4) / 2
        (0.0, [1.0 + 0.5 * 2.5, 0.5]),  # TD(0): the child's value
        (0.5, [1.0 + 0.5 * (0.5 * 2.5 + 0.5 * 3.0), 0.5]),
    ],
)
def test_two_turns_td_lambda_targets_and_maac_advantages(lam, first_turn):
    returns = tree_returns(REWARDS, CHILDREN, gamma=0.5, values=MAAC_VALUES, lam=lam)
    assert returns[0].tolist() == [first_turn] and returns[1].tolist() == [[2.0, 4.0]]
    # every agent takes the one critic's advantages
    assert critic_advantages(returns[0], MAAC_VALUES[0]).tolist() == pytest.approx([first_turn[0] - 0.8, -0.3])
    assert critic_advantages(returns[1], MAAC_VALUES[1]).tolist() == [-0.5, 1.5]


def test_two_turns_iac_each_agent_its_own_values_and_the_same_returns():
    values = {0: [torch.tensor([1.0]), torch.tensor([3.0])], 1: [torch.tensor([2.0]), torch.tensor([2.0])]}
    for agent, expected in [(0, ([1.5, -0.5], [-1.0, 1.0])), (1, ([0.5, -1.5], [0.0, 2.0]))]:
        returns = tree_returns(REWARDS, CHILDREN, gamma=0.5)  # Monte-Carlo: the critic changes only A
        advantages = [critic_advantages(r, v) for r, v in zip(returns, values[agent])]
        assert [a.tolist() for a in advantages] == list(expected)


def test_early_termination_a_solved_branch_keeps_its_reward_for_the_turns_it_skips():
    solved = [torch.tensor([[False, True]]), torch.tensor([[False, False]])]
    for lam in (1.0, 0.0):
        returns = tree_returns(REWARDS, CHILDREN, 0.5, solved=solved, num_turns=2, values=MAAC_VALUES, lam=lam)
        assert returns[0][0, 1] == 0.5 * (1 + 0.5)  # absorbing: no child, no critic needed
    assert critic_advantages(returns[0], MAAC_VALUES[0]).tolist() == [1.0 + 0.5 * 2.5 - 0.8, 0.75 - 0.8]


def test_value_loss_plain_and_clipped_and_its_gradient():
    f64 = dict(dtype=torch.float64)
    values = torch.tensor([1.0, 0.0, 2.0], requires_grad=True, **f64)
    targets = torch.tensor([0.0, 0.0, 4.0], **f64)
    loss = value_loss(values, targets)
    assert float(loss.detach()) == 0.5 * (1 + 0 + 4) / 3
    loss.backward()
    assert values.grad.tolist() == pytest.approx([1 / 3, 0.0, -2 / 3])  # (V - t) / n
    old = torch.tensor([0.5, 0.0, 1.0], **f64)
    values = torch.tensor([1.0, 0.0, 2.0], requires_grad=True, **f64)
    clipped = value_loss(values, targets, old_values=old, clip=0.2)
    # V clipped to [0.7, 0.0, 1.2]: row 0 max(1, 0.49) = 1; row 2 max(4, 7.84) = 7.84
    assert float(clipped.detach()) == pytest.approx(0.5 * (1.0 + 0.0 + (1.2 - 4.0) ** 2) / 3)
    clipped.backward()
    assert values.grad.tolist() == pytest.approx([1 / 3, 0.0, 0.0])  # the clipped branch has no gradient
    with pytest.raises(ValueError, match="needs old_values"):
        value_loss(values, targets, clip=0.2)


def test_explained_variance_and_normalised_advantages():
    targets = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(targets, targets) == 1.0
    assert explained_variance(torch.full((4,), 2.5), targets) == 0.0
    assert explained_variance(torch.tensor([1.0, 2.0, 3.0, 5.0]), targets) == pytest.approx(1 - 0.1875 / 1.25)
    assert math.isnan(explained_variance(targets, torch.ones(4)))
    normalised = normalise_advantages(torch.tensor([1.0, 3.0]))
    assert normalised.tolist() == pytest.approx([-1 / math.sqrt(2), 1 / math.sqrt(2)])
    assert normalise_advantages(torch.tensor([2.0, 2.0])).tolist() == [0.0, 0.0]
    assert normalise_advantages(torch.tensor([3.0])).tolist() == [0.0]


def test_values_that_do_not_match_the_nodes_are_refused():
    with pytest.raises(ValueError, match=r"values of shape \(3,\) for returns of shape \(2, 4\)"):
        critic_advantages(torch.zeros(2, 4), torch.zeros(3))


def test_values_of_each_joint_actions_context_baseline_each_return_on_its_own():
    """An agent that answered after others has one value per joint action (its context)."""
    returns = torch.tensor([[1.0, 2.0], [0.5, -1.0]])
    values = torch.tensor([[0.25, 1.5], [1.0, 0.0]])
    assert critic_advantages(returns, values).tolist() == [0.75, 0.5, -0.5, -1.0]
    assert critic_advantages(returns, torch.tensor([0.5, 1.0])).tolist() == [0.5, 1.5, -0.5, -2.0]
    with pytest.raises(ValueError, match=r"values of shape \(2, 3\) for returns of shape \(2, 2\)"):
        critic_advantages(returns, torch.zeros(2, 3))
