"""Every agent of the team samples its completions: one after the other, or concurrently.

Agents with models of their own decode at once, one core each (:mod:`magrpo.threads` says why
that pays). Agents that generate with the SAME model object (LoRA adapters on one shared base)
switch adapters on it, so they never run at once.

Randomness does not depend on the schedule: before anything runs, one seed per agent is drawn
from torch's global RNG in agent order, and each agent samples from its own generator, so
sequential and concurrent sampling make the same random draws. (With fewer threads per agent a
matmul may round its last bit differently, which can, rarely, tip a draw to a neighbouring token.)
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from magrpo.grouping import group_by_identity
from magrpo.models.agent import AgentPolicy
from magrpo.sampling.rollout import Rollout
from magrpo.seeds import mix_seed
from magrpo.threads import in_split_threads
from magrpo.types import Observation

#: sample(agent, observations, generator=...) -> that agent's rollout
SampleFn = Callable[..., Rollout]


def agent_generators(
    agents: Sequence[AgentPolicy], prompt_keys: Sequence[int] | None = None
) -> list[torch.Generator] | list[list[torch.Generator]]:
    """One generator per agent, seeded from torch's global RNG in agent order; with
    ``prompt_keys``, one generator per agent and prompt, seeded from the agent's seed and the
    prompt's key, so that a prompt's draws depend on its key, not on its place in the batch (the
    same item sampled on another rank, beside other items, draws the same numbers)."""
    seeds = torch.randint(0, 2**62, (len(agents),)).tolist()
    if prompt_keys is None:
        return [torch.Generator(device=_sampling_device(agent)).manual_seed(seed) for agent, seed in zip(agents, seeds)]
    return [
        [
            torch.Generator(device=_sampling_device(agent)).manual_seed(mix_seed(int(key) + 1, seed) % 2**62)
            for key in prompt_keys
        ]
        for agent, seed in zip(agents, seeds)
    ]


def sample_team(
    agents: Sequence[AgentPolicy],
    observations: Sequence[Sequence[Observation]],
    sample: SampleFn,
    *,
    concurrent: bool = False,
    prompt_keys: Sequence[int] | None = None,
) -> list[Rollout]:
    """``observations[i]`` are agent i's prompts; returns one rollout per agent, in agent order.
    ``prompt_keys``: one key per prompt, for per-prompt random streams (:func:`agent_generators`).

    With ``concurrent``, agents that generate with different model objects run in threads, the
    intra-op threads split between them; agents sharing a model run one after the other. A sampler
    with a ``sample_agents(agents, observations, generators)`` attribute (vllm) takes the whole
    team at once and batches it its own way.
    """
    generators = agent_generators(agents, prompt_keys)
    together = getattr(sample, "sample_agents", None)
    if together is not None:  # a batching backend (vllm): the agents sharing an engine in one batch
        return together(agents, observations, generators)
    jobs = [lambda i=i: sample(agents[i], observations[i], generator=generators[i]) for i in range(len(agents))]
    groups = _groups_by_generating_model(agents)
    if not concurrent or len(groups) < 2:
        return [job() for job in jobs]

    done = in_split_threads([lambda members=members: [jobs[i]() for i in members] for members in groups])
    by_agent = {i: rollout for members, rollouts in zip(groups, done) for i, rollout in zip(members, rollouts)}
    return [by_agent[i] for i in range(len(agents))]


def _groups_by_generating_model(agents: Sequence[AgentPolicy]) -> list[list[int]]:
    # a stand-in agent without a model (a scripted sampler) groups with the other stand-ins
    return group_by_identity(agents, lambda agent: getattr(agent, "sampling_model", None))


def _sampling_device(agent: AgentPolicy) -> torch.device:
    return agent.device if isinstance(agent, AgentPolicy) else torch.device("cpu")


__all__ = ["SampleFn", "agent_generators", "sample_team"]
