"""magrpo: train teams of LLM agents to cooperate with Multi-Agent Group Relative Policy Optimization.

The names below are imported on first use, so ``import magrpo`` (and the CLI's help) does not
load torch or transformers.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

# OpenMP threads that spin while waiting make torch up to 10x slower whenever another process
# (a sandboxed program, a second agent) wants a core; passive waiting costs nothing measurable.
# It only takes effect if set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "AgentPolicy": "magrpo.models.agent",
    "CheckpointError": "magrpo.errors",
    "ConfigError": "magrpo.errors",
    "DataError": "magrpo.errors",
    "DatasetError": "magrpo.errors",
    "DiskFullError": "magrpo.errors",
    "EnvError": "magrpo.errors",
    "MAGRPOConfig": "magrpo.config",
    "MAGRPOTrainer": "magrpo.trainer",
    "ModelError": "magrpo.errors",
    "MultiAgentEnv": "magrpo.envs.base",
    "RewardError": "magrpo.errors",
    "RolloutServerError": "magrpo.errors",
    "RewardFunctionEnv": "magrpo.envs.reward_env",
    "RewardModel": "magrpo.rewards.reward_model",
    "StepResult": "magrpo.envs.base",
    "build_agents": "magrpo.models.loading",
    "check_env": "magrpo.envs.check",
}

#: submodules reachable as attributes (``magrpo.distributed``), imported on first use
_SUBMODULES = {"distributed"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # the next access skips this function
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"magrpo.{name}")
    raise AttributeError(f"module 'magrpo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from magrpo.config import MAGRPOConfig
    from magrpo.envs.base import MultiAgentEnv, StepResult
    from magrpo.envs.check import check_env
    from magrpo.envs.reward_env import RewardFunctionEnv
    from magrpo.errors import (
        CheckpointError,
        ConfigError,
        DataError,
        DatasetError,
        DiskFullError,
        EnvError,
        ModelError,
        RewardError,
        RolloutServerError,
    )
    from magrpo.models.agent import AgentPolicy
    from magrpo.models.loading import build_agents
    from magrpo.rewards.reward_model import RewardModel
    from magrpo.trainer import MAGRPOTrainer
