"""Environments in the PettingZoo ParallelEnv style: per-agent dicts in, per-agent dicts out."""

from magrpo.envs.base import MultiAgentEnv, StepResult, step_batch
from magrpo.envs.reward_env import RewardFunctionEnv, reward_env_factory

__all__ = ["MultiAgentEnv", "RewardFunctionEnv", "StepResult", "reward_env_factory", "step_batch"]
