"""magrpo: train teams of LLM agents to cooperate with Multi-Agent Group Relative Policy Optimization."""

import os

# OpenMP threads that spin while waiting make torch up to 10x slower whenever another process
# (a sandboxed program, a second agent) wants a core; passive waiting costs nothing measurable.
# It only takes effect if set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from magrpo.config import ConfigError, MAGRPOConfig
from magrpo.envs import MultiAgentEnv, RewardFunctionEnv, StepResult
from magrpo.models import AgentPolicy, ModelError, build_agents
from magrpo.rewards import RewardError
from magrpo.trainer import DatasetError, MAGRPOTrainer

__version__ = "0.1.0"

__all__ = [
    "AgentPolicy",
    "ConfigError",
    "DatasetError",
    "MAGRPOConfig",
    "MAGRPOTrainer",
    "ModelError",
    "MultiAgentEnv",
    "RewardError",
    "RewardFunctionEnv",
    "StepResult",
    "build_agents",
]
