"""Environments in the PettingZoo ParallelEnv style: per-agent dicts in, per-agent dicts out.

``base``: the protocol (:class:`MultiAgentEnv`, :class:`StepResult`); ``reward_env``: the
reward-function sugar (:class:`RewardFunctionEnv`); ``check``: :func:`check_env`, the
conformance checker for your own environments.
"""

from magrpo.envs.base import MultiAgentEnv, StepResult, step_batch
from magrpo.envs.check import check_env, check_step_result
from magrpo.envs.reward_env import RewardFunctionEnv, reward_env_factory, scorer_from_reward_funcs

__all__ = [
    "MultiAgentEnv",
    "RewardFunctionEnv",
    "StepResult",
    "check_env",
    "check_step_result",
    "reward_env_factory",
    "scorer_from_reward_funcs",
    "step_batch",
]
