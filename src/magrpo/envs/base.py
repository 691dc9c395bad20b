"""The environment protocol, after PettingZoo's ParallelEnv.

One instance is one episode for one dataset item. ``reset`` gives every agent its observation;
``step`` takes every agent's action (its completion text) at once and returns per-agent dicts of
observations, rewards, terminations, truncations and infos. The team is cooperative: every agent
receives the same joint reward. Multi-turn environments return the next observations (built from
feedback) and ``terminations`` False until the episode ends.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from typing import Any, NamedTuple, Sequence

from magrpo.types import Observation


class StepResult(NamedTuple):
    observations: dict[str, Observation]
    rewards: dict[str, float]
    terminations: dict[str, bool]
    truncations: dict[str, bool]
    infos: dict[str, dict[str, Any]]

    @property
    def joint_reward(self) -> float:
        return next(iter(self.rewards.values()))

    @property
    def done(self) -> bool:
        return all(self.terminations.values()) or all(self.truncations.values())


class MultiAgentEnv(ABC):
    possible_agents: list[str]

    @property
    def agents(self) -> list[str]:
        return list(self.possible_agents)

    @abstractmethod
    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict[str, Observation], dict[str, dict]]:
        """Start the episode: every agent's first observation, and infos."""

    @abstractmethod
    def step(self, actions: dict[str, str]) -> StepResult:
        """Apply one joint action."""

    def branch(self) -> "MultiAgentEnv":
        """An independent copy for one sibling of a rollout tree (the G joint actions of a node
        each continue from the same state)."""
        return copy.deepcopy(self)

    @classmethod
    def step_many(cls, envs: Sequence["MultiAgentEnv"], actions: Sequence[dict[str, str]]) -> list[StepResult]:
        """Step many environments of this class; override to batch the reward (one call to a
        reward function, one pool of sandboxed programs)."""
        return [env.step(a) for env, a in zip(envs, actions)]


def step_batch(envs: Sequence[MultiAgentEnv], actions: Sequence[dict[str, str]]) -> list[StepResult]:
    """Step a heterogeneous batch: environments of one class are stepped together."""
    if len(envs) != len(actions):
        raise ValueError(f"{len(envs)} environments but {len(actions)} joint actions")
    results: list[StepResult | None] = [None] * len(envs)
    by_class: dict[type, list[int]] = {}
    for index, env in enumerate(envs):
        by_class.setdefault(type(env), []).append(index)
    for env_class, indices in by_class.items():
        stepped = env_class.step_many([envs[i] for i in indices], [actions[i] for i in indices])
        for i, result in zip(indices, stepped):
            results[i] = result
    return results  # type: ignore[return-value]
