"""Turn-taking: how the agents of one turn answer, and which of their answers make a joint action.

- ``simultaneous`` (the paper's): every agent samples G completions from its own observation, all
  at once; a node's joint actions are aligned (the g-th of every agent, G of them) or cross (every
  combination, G**N).
- ``sequential``: agent k answers after agents 0..k-1 of the same joint action, and its
  observation shows their answers (the environment's :meth:`~magrpo.envs.base.MultiAgentEnv.observe_after`:
  how they are shown is the task's). Agent 0 samples G completions per node; every answer of
  agent k-1 is continued by M samples of agent k: M = 1 (aligned: G joint actions, a chain per
  sample) or M = ``num_continuations`` (cross, G by default: G * M**(N-1) joint actions, a tree).

Either way agent k's completions of a node are numbered 0 .. C_k - 1 (its rollout's rows
``node * C_k + c``), and ``joint_indices[j, k]`` says which of them joint action j holds. In the
sequential tree the joint actions that continue completion c of agent k are contiguous (agent 0
varies slowest), and completion c of agent k continues completion ``c // M`` of agent k-1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

from magrpo.advantages import cross_joint_indices
from magrpo.choices import JOINT_MODES, PROTOCOLS, check_choice
from magrpo.plan import completions_per_node
from magrpo.sampling.sampler import agent_generators
from magrpo.seeds import mix_seed
from magrpo.types import Observation

if TYPE_CHECKING:
    from magrpo.config import MAGRPOConfig
    from magrpo.envs.base import MultiAgentEnv
    from magrpo.models.agent import AgentPolicy
    from magrpo.sampling import Rollout, Sampler


@dataclass(frozen=True)
class TurnProtocol:
    """One turn's shape: who answers when, how many completions each agent samples per node and
    which of them each joint action holds."""

    name: str = "simultaneous"
    joint_mode: str = "aligned"
    num_generations: int = 2
    #: sequential, cross: samples of agent k per answer of agent k-1 (None: num_generations)
    num_continuations: int | None = None

    def __post_init__(self) -> None:
        check_choice("protocol", self.name, PROTOCOLS)
        check_choice("joint_mode", self.joint_mode, JOINT_MODES)

    @classmethod
    def from_config(cls, args: MAGRPOConfig) -> "TurnProtocol":
        """A run's training turns: its protocol, joint mode, G and M."""
        return cls(args.protocol, args.joint_mode, args.num_generations, args.num_continuations)

    @property
    def sequential(self) -> bool:
        return self.name == "sequential"

    @property
    def continuations(self) -> int:
        """M: samples of agent k that continue each answer of agent k-1 (sequential)."""
        if self.joint_mode == "aligned":
            return 1
        return self.num_generations if self.num_continuations is None else self.num_continuations

    def completions_per_node(self, num_agents: int) -> list[int]:
        """C_k: agent k's completions per node (G each, but G * M**k for a sequential tree)."""
        return completions_per_node(num_agents=num_agents, **self._shape())

    def _shape(self) -> dict:
        return dict(
            num_generations=self.num_generations,
            joint_mode=self.joint_mode,
            protocol=self.name,
            num_continuations=self.num_continuations,
        )

    def joint_indices(self, num_agents: int) -> torch.Tensor:
        """``[J, N]``: which of agent k's completions of the node joint action j holds."""
        G = self.num_generations
        if self.joint_mode == "aligned":
            return torch.arange(G).unsqueeze(1).expand(G, num_agents).clone()
        if not self.sequential:
            return cross_joint_indices(G, num_agents)
        per_node = self.completions_per_node(num_agents)
        joint = torch.arange(per_node[-1])
        # the joint actions that continue one completion of agent k are contiguous
        return torch.stack([joint // (per_node[-1] // per_node[k]) for k in range(num_agents)], dim=-1)

    def context_size(self, agent: int) -> int:
        """K: how many of ``agent``'s completions share one context (the node's observation and,
        sequential, the same earlier answers): G for the first agent, M after it."""
        return self.num_generations if agent == 0 or not self.sequential else self.continuations

    def sample(
        self,
        sampler: Sampler,
        agents: Sequence[AgentPolicy],
        nodes: Sequence[MultiAgentEnv],
        observations: Sequence[dict[str, Observation]],
        prompt_keys: Sequence[int] | None = None,
        seed_source: torch.Generator | None = None,
    ) -> list[Rollout]:
        """One rollout per agent for the turn's nodes (their envs and observations), agent k's
        rows ``node * C_k + c``. ``prompt_keys``: one random-stream key per node."""
        if not self.sequential:
            per_agent = [[obs[agent.name] for obs in observations] for agent in agents]
            return sampler.sample_team(agents, per_agent, prompt_keys=prompt_keys, seed_source=seed_source)
        return self._sample_in_turns(sampler, agents, nodes, observations, prompt_keys, seed_source)

    def _sample_in_turns(
        self,
        sampler: Sampler,
        agents: Sequence[AgentPolicy],
        nodes: Sequence[MultiAgentEnv],
        observations: Sequence[dict[str, Observation]],
        prompt_keys: Sequence[int] | None,
        seed_source: torch.Generator | None,
    ) -> list[Rollout]:
        """Agent by agent, each in one batch over the turn's nodes: the first from the nodes'
        observations (G each), every later one from each answer of the agent before it (M each)."""
        first = agents[0]
        generator = agent_generators([first], prompt_keys, seed_source)[0]
        rollouts = [sampler.sample(first, [obs[first.name] for obs in observations], generator)]
        continued = sampler.with_generations(self.continuations)
        for k, agent in enumerate(agents[1:], start=1):
            answered = len(rollouts[-1].texts) // len(nodes)  # agent k-1's answers at each node
            prompts, keys = [], []
            for p, (env, obs) in enumerate(zip(nodes, observations)):
                for c in range(answered):
                    earlier = self._earlier_answers(agents, rollouts, len(nodes), p, c)
                    prompts.append(env.observe_after(agent.name, obs[agent.name], earlier))
                    if prompt_keys is not None:  # keyed by node, agent and the answer it follows
                        keys.append(mix_seed(prompt_keys[p], k, c))
            generator = agent_generators([agent], keys if prompt_keys is not None else None, seed_source)[0]
            rollouts.append(continued.sample(agent, prompts, generator))
        return rollouts

    def _earlier_answers(
        self, agents: Sequence[AgentPolicy], rollouts: Sequence[Rollout], num_nodes: int, node: int, last: int
    ) -> dict[str, str]:
        """The answers of the agents before agent ``len(rollouts)`` on the way to completion
        ``last`` of the agent just before it, at ``node``: name -> answer, in agent order."""
        answers: dict[str, str] = {}
        index = last
        for k in reversed(range(len(rollouts))):
            per_node = len(rollouts[k].texts) // num_nodes
            answers[agents[k].name] = rollouts[k].texts[node * per_node + index]
            index //= self.continuations
        return dict(reversed(answers.items()))


__all__ = ["TurnProtocol"]
