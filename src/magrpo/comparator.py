"""MADPO's comparator: a second set of G joint actions per node, sampled by another policy on the
same observations, whose k-th the team's k-th is paired with by joint reward (docs/preference.md;
CoMLRL 1.4.3's iterative MADPO, ``_select_policy_comparison_pairs``).

    comparator  = Comparator.from_config(agents, args)  "frozen": each agent's frozen initial policy;
                                                        "model:<folder>": a team saved there
    samples     = comparator.sample(turn, envs, ...)    G per node, the same observations, the env's rewards
    pairs       = comparator_pairs(team's, comparator's returns of a node)     (own k, comparator k)

The pairs' rows number the team's G joint actions of a node 0 .. G-1 and the comparator's
G .. 2G-1; :class:`magrpo.preference.PreferenceBaseline` scores both sides under the current
policy (DPO's margin needs log pi_i of both) and hands both their weights, so the comparator's
completions join the agents' update (:func:`magrpo.tree.trained_rollouts`).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import torch

from magrpo.checkpoint import load_agent_weights
from magrpo.choices import COMPARATOR_PAIR_SELECTIONS, MODEL_COMPARATOR, check_choice
from magrpo.errors import ConfigError
from magrpo.grouping import group_by_identity
from magrpo.logprobs import scoring_mode
from magrpo.models.agent import AgentPolicy
from magrpo.seeds import mix_seed
from magrpo.tree import ComparatorSamples, Turn, step_joint_actions

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from magrpo.config import MAGRPOConfig
    from magrpo.envs.base import MultiAgentEnv
    from magrpo.sampling import Sampler

#: mixed into the item keys and the step's seed: the comparator's random streams, apart from the team's
COMPARATOR_STREAM = 0x636F6D70


@dataclass
class ReferenceAgent(AgentPolicy):
    """An agent's reference policy as a sampler takes an agent: ``source.as_reference()`` (a LoRA
    agent's base with its adapter off, a full agent's frozen initial copy), in eval mode, never
    through a sampling copy (that holds the policy's weights)."""

    source: AgentPolicy | None = None

    @classmethod
    def of(cls, agent: AgentPolicy) -> "ReferenceAgent":
        model = agent.model if agent.reference_model is None else agent.reference_model
        return cls(name=agent.name, model=model, tokenizer=agent.tokenizer, source=agent)

    @contextlib.contextmanager
    def generating(self, use_sampling_copy: bool = True) -> Iterator["PreTrainedModel"]:
        with self.source.as_reference() as reference, scoring_mode(reference) as model:
            yield model


class Comparator:
    """The policy the team's joint actions are compared with: one stand-in agent per agent,
    sampled with the team's sampler (each agent's own settings, by name)."""

    def __init__(self, name: str, agents: Sequence[AgentPolicy]) -> None:
        self.name, self.agents = name, list(agents)

    @classmethod
    def from_config(cls, agents: Sequence[AgentPolicy], args: MAGRPOConfig) -> "Comparator | None":
        """The config's comparator (None: "current", the team's own joint actions among themselves)."""
        name = args.preference_comparator
        if name == "current":
            return None
        if name.startswith(MODEL_COMPARATOR):
            return cls(name, saved_team(agents, Path(name[len(MODEL_COMPARATOR) :]).expanduser(), name))
        return cls(name, [ReferenceAgent.of(agent) for agent in agents])  # "frozen": each agent's reference

    def sample(
        self,
        turn: Turn,
        envs: Sequence[MultiAgentEnv],
        sampler: Sampler,
        item_keys: Sequence[int],
        seed: int,
    ) -> ComparatorSamples:
        """G completions per agent and node from the observations ``turn`` was sampled from (the
        first turn: ``envs`` are its nodes, still as reset), joint as the team's are, each joint
        action stepping its own branch of its node's env. Its random streams are keyed as the
        team's (by item, so ranks and resumes draw the same) but apart from them."""
        keys = [mix_seed(int(key), COMPARATOR_STREAM) for key in item_keys]
        generator = torch.Generator().manual_seed(mix_seed(seed, COMPARATOR_STREAM))
        rollouts = sampler.sample_team(self.agents, turn.observations, prompt_keys=keys, seed_source=generator)
        names = [agent.name for agent in self.agents]
        _, results = step_joint_actions(envs, rollouts, names, turn.joint_indices)
        rewards = torch.tensor([[r.joint_reward for r in row] for row in results], dtype=torch.float64)
        return ComparatorSamples(rollouts, rewards)


def saved_team(agents: Sequence[AgentPolicy], folder: Path, setting: str) -> list[AgentPolicy]:
    """The team saved in ``folder`` (``folder/agent_i`` as :func:`magrpo.models.save_agent` wrote
    it), as frozen stand-ins of ``agents``: a copy of each agent's model (one per shared base, its
    LoRA agents' adapters on it) with the saved weights, never trained, in eval mode. The agents'
    tokenizers stay theirs: the saved team must be the same models (a run's own checkpoint)."""
    missing = [agent.name for agent in agents if not (folder / agent.name).is_dir()]
    if missing:
        raise ConfigError(
            f"preference_comparator={setting!r}: {str(folder)!r} has no folder {missing[0]!r}; name a folder "
            "holding agent_0, agent_1, ... as magrpo saves a team (a run's final folder or one of its checkpoints)"
        )
    stand_ins: list[AgentPolicy | None] = [None] * len(agents)
    for indices in group_by_identity(agents, lambda agent: agent.model):
        clone = copy.deepcopy(agents[indices[0]].model).requires_grad_(False).eval()
        for i in indices:
            agent = agents[i]
            stand_ins[i] = AgentPolicy(name=agent.name, model=clone, tokenizer=agent.tokenizer, adapter=agent.adapter)
            load_agent_weights(stand_ins[i], folder / agent.name)
    return stand_ins


def comparator_pairs(
    returns: Sequence[float] | torch.Tensor,
    comparator_returns: Sequence[float] | torch.Tensor,
    selection: str = "reward_gap",
    limit: int | None = 16,
    generator: torch.Generator | None = None,
) -> list[tuple[int, int]]:
    """The ordered pairs (winner, loser) of one node: the team's k-th joint action (index k) against
    the comparator's k-th (index G + k), the higher return winning (ties make no pair), k in
    order. ``selection``: "reward_gap" (the largest gaps first), "comparator_reward" (the highest
    comparator return first, then the largest gap), both stable; "all" (k order, uncut); "random"
    (shuffled by ``generator``). All but "all" keep the first ``limit`` (None: every one)."""
    check_choice("pair_selection", selection, COMPARATOR_PAIR_SELECTIONS)
    own, theirs = [float(r) for r in returns], [float(r) for r in comparator_returns]
    g = len(own)
    pairs = [(k, g + k) if r > c else (g + k, k) for k, (r, c) in enumerate(zip(own, theirs)) if r != c]
    if selection == "all":
        return pairs

    def gap(pair: tuple[int, int]) -> float:
        k = min(pair)
        return abs(own[k] - theirs[k])

    if selection == "reward_gap":
        pairs.sort(key=gap, reverse=True)
    elif selection == "comparator_reward":
        pairs.sort(key=lambda p: (theirs[min(p)], gap(p)), reverse=True)
    else:
        pairs = [pairs[k] for k in torch.randperm(len(pairs), generator=generator).tolist()]
    return pairs if limit is None else pairs[:limit]


__all__ = ["COMPARATOR_STREAM", "Comparator", "ReferenceAgent", "comparator_pairs", "saved_team"]
