"""Checks on what a reward function returns: nothing is silently broadcast or coerced."""

from __future__ import annotations

import math
import numbers
from typing import Any

from magrpo.errors import RewardError


def _function_name(func: Any) -> str:
    return getattr(func, "__name__", None) or type(func).__name__


def validate_rewards(func: Any, rewards: Any, expected: int) -> list[float]:
    """Return ``rewards`` as a list of floats, or raise :class:`RewardError` naming the function
    and the offending index."""
    name = _function_name(func)
    if isinstance(rewards, (str, bytes)) or not hasattr(rewards, "__len__"):
        raise RewardError(
            f"reward function {name!r} returned {type(rewards).__name__}; expected a list of {expected} floats"
        )
    if hasattr(rewards, "tolist"):  # numpy arrays and torch tensors
        rewards = rewards.tolist()
    if len(rewards) != expected:
        raise RewardError(
            f"reward function {name!r} returned {len(rewards)} rewards for {expected} joint actions; "
            "it must return exactly one float per joint action"
        )
    out: list[float] = []
    for index, value in enumerate(rewards):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise RewardError(
                f"reward function {name!r} returned {value!r} ({type(value).__name__}) at index {index}; "
                "expected a finite real number"
            )
        value = float(value)
        if not math.isfinite(value):
            raise RewardError(f"reward function {name!r} returned {value} at index {index}; rewards must be finite")
        out.append(value)
    return out
