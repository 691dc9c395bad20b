"""Every choice is checked once, against one tuple, where a run is configured: the functions of
the step take the names as given (a sampler made directly by name is checked where it is made)."""

from __future__ import annotations

import pytest

from magrpo import ConfigError, MAGRPOConfig
from magrpo.choices import ADVANTAGE_SCALINGS, JOINT_MODES, LOSS_TYPES, check_choice
from magrpo.sampling import make_sampler


def test_check_choice_names_the_value_and_the_choices():
    assert check_choice("joint_mode", "cross", JOINT_MODES) == "cross"
    with pytest.raises(ConfigError, match="joint_mode='diagonal' is not valid; choose one of 'aligned', 'cross'"):
        check_choice("joint_mode", "diagonal", JOINT_MODES)


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: MAGRPOConfig(advantage_scaling="rank"),
            f"advantage_scaling='rank' is not valid; choose one of {', '.join(map(repr, ADVANTAGE_SCALINGS))}",
        ),
        (lambda: MAGRPOConfig(joint_mode="diagonal"), "joint_mode='diagonal'"),
        (lambda: MAGRPOConfig(loss_type="mean"), f"choose one of {', '.join(map(repr, LOSS_TYPES))}"),
        (lambda: MAGRPOConfig(expand="some"), "expand='some' is not valid; choose one of 'full', 'best-k'"),
        (
            lambda: MAGRPOConfig(rollout_backend="sglang"),
            "rollout_backend='sglang' is not valid; choose one of 'fast', 'plain', 'vllm'",
        ),
        (
            lambda: make_sampler(num_generations=2, max_new_tokens=1, temperature=1.0, backend="sglang"),
            "rollout_backend='sglang' is not valid; choose one of 'fast', 'plain', 'vllm'",
        ),
    ],
)
def test_the_config_and_a_sampler_made_by_name_refuse_a_name_naming_the_choices(call, message):
    with pytest.raises(ConfigError, match=message):
        call()
