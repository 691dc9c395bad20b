"""The environment protocol, after PettingZoo's ParallelEnv.

One instance is one episode for one dataset item. ``reset`` gives every agent its observation;
``step`` takes every agent's action (its completion text) at once and returns per-agent dicts of
observations, rewards, terminations, truncations and infos. The team is cooperative: every agent
receives the same joint reward. Multi-turn environments return the next observations (built from
feedback) and ``terminations`` False until the episode ends.

In a rollout tree the trainer steps many branches at once (``step_many``) and then asks only the
branches that go on to another turn for their next observations (``observe_many``): an
environment whose next observation is costly (a reviewer model's feedback) builds it there, so
branches that end, or that best-k expansion drops, cost nothing.

With ``protocol="sequential"`` the agents of a turn answer one after the other, and the trainer
asks ``observe_after`` what each agent sees once the earlier ones have answered (by default their
answers after its observation, each under its agent's name).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from typing import Any, Callable, Mapping, NamedTuple, Sequence

from magrpo.grouping import group_by_identity
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
    def reset(
        self, seed: int | None = None, options: dict | None = None
    ) -> tuple[dict[str, Observation], dict[str, dict]]:
        """Start the episode: every agent's first observation, and infos."""

    @abstractmethod
    def step(self, actions: dict[str, str]) -> StepResult:
        """Apply one joint action."""

    def observe_after(self, name: str, observation: Observation, earlier: Mapping[str, str]) -> Observation:
        """``protocol="sequential"``: what agent ``name`` sees once the agents before it have
        answered this turn (``earlier``: their names -> answers, in agent order), ``observation``
        being its own observation of the turn. By default each answer is added after it under its
        agent's name; an environment (a task) shows them its own way."""
        return with_text_added(
            observation, "\n\n".join(f"{agent} answered:\n{answer}" for agent, answer in earlier.items())
        )

    def branch(self) -> "MultiAgentEnv":
        """An independent copy for one sibling of a rollout tree (the G joint actions of a node
        each continue from the same state)."""
        return copy.deepcopy(self)

    @classmethod
    def step_many(cls, envs: Sequence["MultiAgentEnv"], actions: Sequence[dict[str, str]]) -> list[StepResult]:
        """Step many environments of this class; override to batch the reward (one call to a
        reward function, one pool of sandboxed programs). The results' observations may be left
        as they were: the trainer takes next observations from :meth:`observe_many`."""
        return [env.step(a) for env, a in zip(envs, actions)]

    @classmethod
    def observe_many(
        cls, envs: Sequence["MultiAgentEnv"], results: Sequence[StepResult]
    ) -> list[dict[str, Observation]]:
        """The next observations of branches that continue, ``results`` being what their last
        ``step_many`` returned. The default takes the results' observations; override to build
        costly observations (feedback) only for the branches that continue."""
        return [dict(r.observations) for r in results]


def with_text_added(observation: Observation, text: str) -> Observation:
    """``observation`` with ``text`` after it: a string's next paragraph, or the next paragraph
    of its last user message (a new user message after any other last message)."""
    if isinstance(observation, str):
        return f"{observation}\n\n{text}"
    messages = [dict(message) for message in observation]
    if messages and messages[-1].get("role") == "user":
        messages[-1]["content"] = f"{messages[-1]['content']}\n\n{text}"
    else:
        messages.append({"role": "user", "content": text})
    return messages


def _by_class(envs: Sequence[MultiAgentEnv], others: Sequence[Any], call: Callable[..., list[Any]]) -> list[Any]:
    """``call(env_class, envs_of_that_class, their_others)`` per class, results back in order."""
    if len(envs) != len(others):
        raise ValueError(f"{len(envs)} environments but {len(others)} joint actions or results")
    out: list[Any] = [None] * len(envs)
    # placed by zip, not run_per_group: a step_many that returns too few results leaves None,
    # which check_step_result then reports as that environment's error
    for indices in group_by_identity(envs, type):
        env_class = type(envs[indices[0]])
        for i, value in zip(indices, call(env_class, [envs[i] for i in indices], [others[i] for i in indices])):
            out[i] = value
    return out


def step_batch(envs: Sequence[MultiAgentEnv], actions: Sequence[dict[str, str]]) -> list[StepResult]:
    """Step a heterogeneous batch: environments of one class are stepped together."""
    return _by_class(envs, actions, lambda cls, e, a: cls.step_many(e, a))


def observe_batch(envs: Sequence[MultiAgentEnv], results: Sequence[StepResult]) -> list[dict[str, Observation]]:
    """The next observations of a heterogeneous batch of continuing branches, one class at a time."""
    return _by_class(envs, results, lambda cls, e, r: cls.observe_many(e, r))
