"""Every choice is checked against one tuple, by the config and by the functions that take it."""

from __future__ import annotations

import pytest
import torch

from magrpo import ConfigError, MAGRPOConfig
from magrpo.advantages import agent_advantages, group_advantages
from magrpo.choices import ADVANTAGE_SCALINGS, JOINT_MODES, LOSS_AGGREGATIONS, check_choice
from magrpo.loss import loss_normaliser
from magrpo.sampling import make_sampler
from magrpo.tree import joint_action_indices


def test_check_choice_names_the_value_and_the_choices():
    assert check_choice("joint_mode", "cross", JOINT_MODES) == "cross"
    with pytest.raises(ConfigError, match="joint_mode='diagonal' is not valid; choose one of 'aligned', 'cross'"):
        check_choice("joint_mode", "diagonal", JOINT_MODES)


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: group_advantages(torch.zeros(2), "rank"),
            f"advantage_scaling='rank' is not valid; choose one of {', '.join(map(repr, ADVANTAGE_SCALINGS))}",
        ),
        (
            lambda: agent_advantages(torch.zeros(1, 2), agent=0, num_agents=2, joint_mode="diagonal"),
            "joint_mode='diagonal'",
        ),
        (
            lambda: loss_normaliser(torch.ones(2, 2, dtype=torch.bool), "mean"),
            f"choose one of {', '.join(map(repr, LOSS_AGGREGATIONS))}",
        ),
        (lambda: joint_action_indices("diagonal", 2, 2), "joint_mode='diagonal'"),
        (
            lambda: make_sampler(num_generations=2, max_new_tokens=1, temperature=1.0, backend="sglang"),
            "rollout_backend='sglang' is not valid; choose one of 'fast', 'plain', 'vllm'",
        ),
        (
            lambda: MAGRPOConfig(rollout_backend="sglang"),
            "rollout_backend='sglang' is not valid; choose one of 'fast', 'plain', 'vllm'",
        ),
    ],
)
def test_functions_and_config_refuse_the_same_way(call, message):
    with pytest.raises(ConfigError, match=message):
        call()
