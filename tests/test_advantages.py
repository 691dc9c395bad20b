import math

import pytest
import torch

from magrpo import MAGRPOConfig
from magrpo.advantages import (
    agent_advantages,
    cross_completion_returns,
    cross_joint_indices,
    group_advantages,
    tree_returns,
)


def test_group_advantages_centre_on_the_group_mean():
    adv = group_advantages(torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 1.0, 1.0]]))
    assert adv.tolist() == [[-2.0, -1.0, 0.0, 3.0], [-0.5, -0.5, 0.5, 0.5]]


def test_group_advantages_std_scaling_uses_unbiased_std():
    adv = group_advantages(torch.tensor([1.0, 2.0, 3.0, 6.0]), "std")
    std = math.sqrt((4 + 1 + 0 + 9) / 3)
    assert adv.tolist() == pytest.approx([-2 / std, -1 / std, 0.0, 3 / std], abs=1e-12)


@pytest.mark.parametrize("scaling", ["none", "std"])
def test_equal_rewards_give_zero_advantage_not_nan(scaling):
    adv = group_advantages(torch.full((3, 4), 0.7), scaling)
    assert torch.equal(adv, torch.zeros(3, 4, dtype=torch.float64))


def test_the_reinforce_baselines_give_their_exact_advantages():
    rewards = torch.tensor([1.0, 2.0, 3.0, 6.0])
    # RLOO: R^g minus the mean of the other three
    assert group_advantages(rewards, baseline="loo").tolist() == pytest.approx(
        [1 - 11 / 3, 2 - 10 / 3, 3 - 3.0, 6 - 2.0], abs=1e-12
    )
    assert group_advantages(rewards, baseline="max").tolist() == [-5.0, -4.0, -3.0, 0.0]
    assert group_advantages(rewards, baseline="none").tolist() == [1.0, 2.0, 3.0, 6.0]
    # RLOO is the mean baseline scaled by G / (G - 1)
    assert group_advantages(rewards, baseline="loo") == pytest.approx(group_advantages(rewards) * 4 / 3, abs=1e-12)
    std = math.sqrt(14 / 3)
    assert group_advantages(rewards, "std", baseline="max").tolist() == pytest.approx(
        [-5 / std, -4 / std, -3 / std, 0.0]
    )
    # under std scaling the four still differ: shifts and scales of each other, not one update
    variants = {b: tuple(group_advantages(rewards, "std", baseline=b).tolist()) for b in ("mean", "loo", "max", "none")}
    assert len(set(variants.values())) == 4
    # a group without spread: no signal, except raw returns without scaling
    flat = torch.full((4,), 0.7, dtype=torch.float64)
    for b in ("mean", "loo", "max"):
        assert torch.equal(group_advantages(flat, baseline=b), torch.zeros(4, dtype=torch.float64))
    assert torch.equal(group_advantages(flat, baseline="none"), flat)
    assert torch.equal(group_advantages(flat, "std", baseline="none"), torch.zeros(4, dtype=torch.float64))
    with pytest.raises(  # checked once, where the run is configured
        ValueError, match="advantage_baseline='median' is not valid; choose one of 'mean', 'loo', 'max', 'none'"
    ):
        MAGRPOConfig(advantage_baseline="median")


def test_the_trainer_takes_the_baseline_from_the_config():
    from magrpo import ConfigError, MAGRPOConfig

    assert MAGRPOConfig(advantage_baseline="loo").advantage_baseline == "loo"
    with pytest.raises(ConfigError, match="advantage_baseline='best' is not valid"):
        MAGRPOConfig(advantage_baseline="best")
    returns = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    assert agent_advantages(returns, agent=1, num_agents=2, joint_mode="aligned", baseline="max").tolist() == [
        -5.0,
        -4.0,
        -3.0,
        0.0,
    ]


def test_group_of_one_is_refused():
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages(torch.tensor([[1.0]]))


def test_cross_joint_indices_agent0_varies_slowest():
    assert cross_joint_indices(2, 2).tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert cross_joint_indices(2, 3).shape == (8, 3)


def test_cross_returns_mean_and_max_over_partner_completions():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0]])  # joint (0,0) (0,1) (1,0) (1,1)
    assert cross_completion_returns(rewards, 0, 2).tolist() == [[1.5, 3.5]]
    assert cross_completion_returns(rewards, 1, 2).tolist() == [[2.0, 3.0]]
    assert cross_completion_returns(rewards, 0, 2, "max").tolist() == [[2.0, 4.0]]
    assert cross_completion_returns(rewards, 1, 2, "max").tolist() == [[3.0, 4.0]]


def test_agent_advantages_cross_mode_centres_each_agents_completion_returns():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    a0 = agent_advantages(rewards, agent=0, num_agents=2, joint_mode="cross")
    a1 = agent_advantages(rewards, agent=1, num_agents=2, joint_mode="cross")
    assert a0.tolist() == [-1.0, 1.0]
    assert a1.tolist() == [-0.5, 0.5]


def test_agent_advantages_aligned_mode_is_shared_by_all_agents():
    rewards = torch.tensor([[0.0, 4.0], [1.0, 1.0]])
    for agent in (0, 1):
        assert agent_advantages(rewards, agent=agent, num_agents=2, joint_mode="aligned").tolist() == [
            -2.0,
            2.0,
            0.0,
            0.0,
        ]


def test_tree_returns_discount_the_mean_of_children():
    # turn 1: one node, two joint actions; joint action 0 continues into node 0 of turn 2
    rewards = [torch.tensor([[1.0, 0.5]]), torch.tensor([[2.0, 4.0]])]
    children = [{(0, 0): 0}, {}]
    ret = tree_returns(rewards, children, gamma=0.5)
    assert ret[1].tolist() == [[2.0, 4.0]]
    assert ret[0].tolist() == [[1.0 + 0.5 * 3.0, 0.5]]
