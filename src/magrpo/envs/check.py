"""``check_env``: does an environment keep the contract the trainer relies on?

In the spirit of PettingZoo's ``parallel_api_test``: reset and step return per-agent dicts with
one entry for every agent, observations are strings or chat messages, the reward is one finite
joint reward that every agent receives, flags are booleans, and ``branch()`` gives siblings that
do not share state (stepping one changes neither its parent nor another sibling), with
``step_many`` then ``observe_many`` agreeing with ``step``. Run it on your own environment in its tests.

The trainer runs the checks that cost nothing on the first item before any compute (``step=False``:
no reward is computed, no feedback asked for), and :func:`check_step_result` on every result of
every step it takes.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping, Sequence

from magrpo.envs.base import MultiAgentEnv, StepResult
from magrpo.errors import EnvError


def check_env(
    env: MultiAgentEnv,
    agent_names: Sequence[str] | None = None,
    *,
    actions: Mapping[str, str] | None = None,
    step: bool = True,
    check_branches: bool = True,
) -> None:
    """Raise :class:`EnvError` naming the first broken rule of the contract; return None if all hold.

    ``agent_names``: the team's agent names, which must be the environment's ``possible_agents``.
    ``actions``: the joint action to step with (default: an empty answer from every agent, which
    a model gives whenever it ends its answer at once, so every environment must take it).
    ``step=False`` checks the agents, ``reset`` and ``branch`` only (nothing is scored).
    ``check_branches``: compare sibling branches stepped with the same joint action, which
    assumes that ``step`` is deterministic; turn it off for an environment with a random reward.
    """
    where = type(env).__name__
    agents = _check_agents(env, agent_names, where)
    actions = dict(actions) if actions is not None else {name: "" for name in agents}
    if sorted(actions) != sorted(agents):
        raise EnvError(f"{where}: actions are keyed {sorted(actions)}; expected one per agent {sorted(agents)}")

    reset = env.reset()
    if not (isinstance(reset, tuple) and len(reset) == 2):
        raise EnvError(f"{where}.reset() returned {type(reset).__name__}; expected a tuple (observations, infos)")
    observations, infos = reset
    _check_per_agent(observations, agents, f"{where}.reset() observations")
    for name, observation in observations.items():
        _check_observation(observation, f"{where}.reset() observations[{name!r}]")
    _check_per_agent(infos, agents, f"{where}.reset() infos")
    for name, info in infos.items():
        if not isinstance(info, dict):
            raise EnvError(f"{where}.reset() infos[{name!r}] is {type(info).__name__}; expected a dict")

    first = env.branch()
    if first is env or not isinstance(first, MultiAgentEnv):
        raise EnvError(f"{where}.branch() must return a new MultiAgentEnv (a copy for one sibling), got {first!r}")
    if not step:
        return
    result = check_step_result(first.step(dict(actions)), agents, f"{where}.step()")
    if not check_branches:
        return
    sibling = check_step_result(env.branch().step(dict(actions)), agents, f"{where}.step() of a second branch")
    if not _same(result, sibling):
        raise EnvError(
            f"{where}: two branches of one state stepped with the same joint action disagree "
            f"(rewards {result.rewards} vs {sibling.rewards}); stepping a branch must not change its parent or "
            "its siblings (override branch() to copy all mutable state), or, for a random step, "
            "pass check_branches=False"
        )
    branches = [env.branch(), env.branch()]
    batch = type(env).step_many(branches, [dict(actions), dict(actions)])
    if not isinstance(batch, list) or len(batch) != 2:
        raise EnvError(f"{where}.step_many() returned {batch!r} for 2 environments; expected a list of 2 results")
    batch = [check_step_result(stepped, agents, f"{where}.step_many()[{index}]") for index, stepped in enumerate(batch)]
    if not result.done:  # what the trainer does for a branch that continues
        observed = type(env).observe_many(branches, batch)
        if not isinstance(observed, list) or len(observed) != 2:
            raise EnvError(f"{where}.observe_many() returned {observed!r} for 2 environments; expected a list of 2")
        for index, obs in enumerate(observed):
            check_observations(obs, agents, f"{where}.observe_many()[{index}]")
        batch = [stepped._replace(observations=obs) for stepped, obs in zip(batch, observed)]
    for index, stepped in enumerate(batch):
        if not _same(result, stepped):
            raise EnvError(
                f"{where}.step_many()[{index}] disagrees with step() on the same joint action "
                f"(rewards {stepped.rewards} vs {result.rewards})"
            )


def _check_agents(env: MultiAgentEnv, agent_names: Sequence[str] | None, where: str) -> list[str]:
    agents = getattr(env, "possible_agents", None)
    if not isinstance(agents, (list, tuple)) or not agents or not all(isinstance(a, str) for a in agents):
        raise EnvError(f"{where}.possible_agents is {agents!r}; expected a non-empty list of agent names")
    if len(set(agents)) != len(agents):
        raise EnvError(f"{where}.possible_agents {list(agents)} names an agent twice")
    if agent_names is not None and sorted(agent_names) != sorted(agents):
        raise EnvError(f"{where}.possible_agents {list(agents)} are not the team's agents {list(agent_names)}")
    return list(agents)


def _check_per_agent(values: Any, agents: Sequence[str], what: str) -> None:
    if not isinstance(values, dict):
        raise EnvError(f"{what} is {type(values).__name__}; expected a dict with one entry per agent {list(agents)}")
    if sorted(values) != sorted(agents):
        raise EnvError(f"{what} are keyed {sorted(values)}; expected one entry per agent {sorted(agents)}")


def _check_observation(observation: Any, what: str) -> None:
    if isinstance(observation, str):
        return
    if (
        isinstance(observation, list)
        and observation
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in observation
        )
    ):
        return
    raise EnvError(
        f"{what} is {observation!r:.80}; expected a string or a non-empty list of chat messages "
        "{'role': str, 'content': str}"
    )


def check_step_result(result: Any, agents: Sequence[str], where: str) -> StepResult:
    """``result`` as a :class:`StepResult` if it keeps the contract (one entry per agent in each of
    its five dicts, one finite joint reward, boolean flags, dict infos, valid observations where
    the episode goes on), else :class:`EnvError` naming ``where`` and what is wrong."""
    if not (isinstance(result, tuple) and len(result) == 5):
        raise EnvError(
            f"{where} returned {type(result).__name__}; expected a StepResult "
            "(observations, rewards, terminations, truncations, infos)"
        )
    result = StepResult(*result)
    for field, values in zip(StepResult._fields, result):
        _check_per_agent(values, agents, f"{where} {field}")
    for name, reward in result.rewards.items():
        if isinstance(reward, bool) or not isinstance(reward, numbers.Real) or not math.isfinite(reward):
            raise EnvError(f"{where} rewards[{name!r}] is {reward!r}; expected a finite real number")
    if len(set(float(r) for r in result.rewards.values())) != 1:
        raise EnvError(f"{where} rewards {result.rewards} differ between agents; the team shares one joint reward")
    for field in ("terminations", "truncations"):
        for name, flag in getattr(result, field).items():
            if not isinstance(flag, bool):
                raise EnvError(f"{where} {field}[{name!r}] is {flag!r}; expected True or False")
    for name, info in result.infos.items():
        if not isinstance(info, dict):
            raise EnvError(f"{where} infos[{name!r}] is {type(info).__name__}; expected a dict")
    if not result.done:
        check_observations(result.observations, agents, where)
    return result


def check_observations(observations: Any, agents: Sequence[str], where: str) -> None:
    """One string or chat-message observation per agent, else :class:`EnvError`."""
    _check_per_agent(observations, agents, f"{where} observations")
    for name, observation in observations.items():
        _check_observation(observation, f"{where} observations[{name!r}]")


def _same(a: StepResult, b: StepResult) -> bool:
    return a.rewards == b.rewards and a.observations == b.observations and a.terminations == b.terminations


__all__ = ["check_env", "check_observations", "check_step_result"]
