"""The sampler protocol: one set of :class:`SamplingSettings`, one agent's G completions per
observation (:meth:`Sampler.sample`) or the whole team's (:meth:`Sampler.sample_team`).

Agents with models of their own may decode at once, one core each (:mod:`magrpo.threads` says
why that pays). Agents that generate with the SAME model object (LoRA adapters on one shared
base) switch adapters on it, so they never run at once.

Randomness does not depend on the schedule: before anything runs, one seed per agent is drawn
from torch's global RNG in agent order, and each agent samples from its own generator, so
sequential and concurrent sampling make the same random draws. (With fewer threads per agent a
matmul may round its last bit differently, which can, rarely, tip a draw to a neighbouring token.)
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch

from magrpo.grouping import group_by_identity
from magrpo.models.agent import AgentPolicy
from magrpo.sampling.rollout import Rollout
from magrpo.seeds import mix_seed
from magrpo.threads import in_split_threads
from magrpo.types import Observation

#: one generator for all of an agent's prompts, or one per prompt
Generators = torch.Generator | Sequence[torch.Generator] | None


@dataclass(frozen=True)
class TokenFilter:
    """An agent's own sampling filters, as transformers' ``generate`` applies them: the
    repetition penalty on the raw logits (a token already in the prompt or the completion has its
    logit divided by the penalty where positive, multiplied where negative), then after the
    temperature top-k, top-p and min-p. The loss scores the plain tempered softmax, as TRL does."""

    #: the k likeliest tokens only (0: off)
    top_k: int = 0
    #: drop tokens less likely than min_p times the likeliest one (None: off)
    min_p: float | None = None
    #: 1: off; > 1 repeats less
    repetition_penalty: float = 1.0

    @property
    def is_off(self) -> bool:
        return self.top_k == 0 and self.min_p is None and self.repetition_penalty == 1.0


@dataclass(frozen=True)
class AgentSampling:
    """One agent's own sampling settings where they are not the team's (None: the team's)."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    #: strings that end a completion where they appear (None: the team's)
    stop: tuple[str, ...] | None = None
    token_filter: TokenFilter | None = None


@dataclass(frozen=True)
class SamplingSettings:
    """How a sampler samples: G completions of at most ``max_new_tokens`` per observation, at
    ``temperature`` (0: greedy) with nucleus ``top_p``, ended by an end-of-sequence token or one
    of the ``stop`` strings; an agent named in ``agents`` with its own values
    (:meth:`for_agent`)."""

    num_generations: int
    max_new_tokens: int
    temperature: float
    top_p: float = 1.0
    #: sample with an agent's reduced-precision sampling copy where it has one (training); False:
    #: with the training weights (evaluation measures the policy itself)
    use_sampling_copy: bool = True
    #: agents with models of their own sample at the same time, each in a thread with its share
    #: of the CPU threads (only a sampler whose draws come from its own generators may)
    concurrent_agents: bool = False
    #: a completion ends where one of these strings appears (the text stops before it; the ids
    #: keep the token that completed it, the last one the policy chose)
    stop: tuple[str, ...] = ()
    token_filter: TokenFilter = TokenFilter()
    #: (agent name, its own settings) pairs
    agents: tuple[tuple[str, AgentSampling], ...] = ()

    def for_agent(self, agent: AgentPolicy) -> "SamplingSettings":
        """These settings as ``agent`` samples with them: its own values where it has them."""
        own = dict(self.agents).get(getattr(agent, "name", None))
        if own is None:
            return self
        changed = {f.name: getattr(own, f.name) for f in dataclasses.fields(own) if getattr(own, f.name) is not None}
        return dataclasses.replace(self, agents=(), **changed)


class Sampler:
    """Samples one agent (:meth:`sample`, each backend's own) or the team (:meth:`sample_team`:
    the agents one after the other, or at once with ``concurrent_agents``; a backend that batches
    the team its own way overrides it)."""

    def __init__(self, settings: SamplingSettings) -> None:
        self.settings = settings

    def with_generations(self, num_generations: int) -> "Sampler":
        """This sampler, drawing ``num_generations`` completions per observation (a sequential
        team's later agents continue each earlier answer a number of times of their own)."""
        twin = copy.copy(self)
        twin.settings = dataclasses.replace(self.settings, num_generations=num_generations)
        return twin

    def models_to_gather(self, agents: Sequence[AgentPolicy]) -> list[torch.nn.Module]:
        """The models that sample and so must be whole while they do (sharded agents are gathered
        for the rollout): the agents' own, unless an engine holding its own copy samples."""
        return [agent.model for agent in agents]

    def sample(self, agent: AgentPolicy, observations: Sequence[Observation], generator: Generators = None) -> Rollout:
        """All P observations of one agent, G completions each (rows p * G + g)."""
        raise NotImplementedError

    def sample_team(
        self,
        agents: Sequence[AgentPolicy],
        observations: Sequence[Sequence[Observation]],
        prompt_keys: Sequence[int] | None = None,
        seed_source: torch.Generator | None = None,
    ) -> list[Rollout]:
        """``observations[i]`` are agent i's prompts; one rollout per agent, in agent order.
        ``prompt_keys``: one key per prompt, for per-prompt random streams; ``seed_source``: where
        the agents' seeds are drawn from (None: torch's global RNG; :func:`agent_generators`)."""
        generators = agent_generators(agents, prompt_keys, seed_source)
        return self.sample_agents(agents, observations, generators)

    def sample_agents(
        self,
        agents: Sequence[AgentPolicy],
        observations: Sequence[Sequence[Observation]],
        generators: Sequence[Generators],
    ) -> list[Rollout]:
        """Each agent from its own generator(s): in threads where ``concurrent_agents`` and the
        agents generate with different model objects, else one after the other."""
        jobs = [lambda i=i: self.sample(agents[i], observations[i], generators[i]) for i in range(len(agents))]
        groups = _groups_by_generating_model(agents)
        if not self.settings.concurrent_agents or len(groups) < 2:
            return [job() for job in jobs]
        done = in_split_threads([lambda members=members: [jobs[i]() for i in members] for members in groups])
        by_agent = {i: rollout for members, rollouts in zip(groups, done) for i, rollout in zip(members, rollouts)}
        return [by_agent[i] for i in range(len(agents))]


def agent_generators(
    agents: Sequence[AgentPolicy],
    prompt_keys: Sequence[int] | None = None,
    seed_source: torch.Generator | None = None,
) -> list[torch.Generator] | list[list[torch.Generator]]:
    """One generator per agent, seeded from ``seed_source`` (None: torch's global RNG) in agent
    order; with ``prompt_keys``, one generator per agent and prompt, seeded from the agent's seed
    and the prompt's key, so that a prompt's draws depend on its key, not on its place in the batch
    (the same item sampled on another rank, beside other items, draws the same numbers)."""
    seeds = torch.randint(0, 2**62, (len(agents),), generator=seed_source).tolist()
    if prompt_keys is None:
        return [torch.Generator(device=_sampling_device(agent)).manual_seed(seed) for agent, seed in zip(agents, seeds)]
    return [
        [
            torch.Generator(device=_sampling_device(agent)).manual_seed(mix_seed(int(key) + 1, seed) % 2**62)
            for key in prompt_keys
        ]
        for agent, seed in zip(agents, seeds)
    ]


def _groups_by_generating_model(agents: Sequence[AgentPolicy]) -> list[list[int]]:
    # a stand-in agent without a model (a scripted sampler) groups with the other stand-ins
    return group_by_identity(agents, lambda agent: getattr(agent, "sampling_model", None))


def _sampling_device(agent: AgentPolicy) -> torch.device:
    return agent.device if isinstance(agent, AgentPolicy) else torch.device("cpu")


__all__ = ["Generators", "Sampler", "SamplingSettings", "TokenFilter", "agent_generators"]
