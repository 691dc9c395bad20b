"""Joint reward functions and the checks on what they return."""

from magrpo.rewards.validation import RewardError, validate_rewards

__all__ = ["RewardError", "validate_rewards"]
