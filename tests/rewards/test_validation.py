"""What a reward function returns is checked: nothing is broadcast or coerced."""

from __future__ import annotations

import math

import pytest

from magrpo import RewardError
from magrpo.rewards.validation import validate_rewards


def reward_of_length(n):
    def bad_reward(*, completions, prompts, **_):
        return [1.0] * n

    return bad_reward


def test_reward_list_of_the_wrong_length_is_an_error_not_broadcast():
    with pytest.raises(RewardError, match="'bad_reward' returned 1 rewards for 4 joint actions"):
        validate_rewards(reward_of_length(1), [1.0], 4)


@pytest.mark.parametrize(
    "values, fragment",
    [
        ([1.0, math.nan], "returned nan at index 1"),
        ([math.inf, 1.0], "returned inf at index 0"),
        ([1.0, "1"], "returned '1' (str) at index 1"),
        ([None, 1.0], "returned None (NoneType) at index 0"),
        ([True, 1.0], "returned True (bool) at index 0"),
    ],
)
def test_non_finite_or_non_numbers_name_the_index(values, fragment):
    with pytest.raises(RewardError) as err:
        validate_rewards(reward_of_length(2), values, 2)
    assert fragment in str(err.value)


def test_numpy_like_rewards_are_accepted():
    import numpy as np

    assert validate_rewards(reward_of_length(2), np.array([1.0, 2.5]), 2) == [1.0, 2.5]
