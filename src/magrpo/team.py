"""What a step works with, resolved once when the run is set up (:func:`magrpo.prepare.prepare_team`):
the agents with their optimisers and schedules, the ranks, the precision policy, the sampler, the
baseline that turns returns into advantages and the objective each agent minimises."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import torch

from magrpo.grouping import distinct_by_identity

if TYPE_CHECKING:
    from magrpo.baselines import Baseline
    from magrpo.comparator import Comparator
    from magrpo.config import MAGRPOConfig
    from magrpo.critics.critic import Critic
    from magrpo.models import AgentPolicy
    from magrpo.objective import EntropyControl, Objective
    from magrpo.ranks import OneProcess
    from magrpo.sampling import Sampler
    from magrpo.tree import Turn


@dataclass(frozen=True)
class Precision:
    """The precision policy of a run, resolved once from the config and the devices."""

    #: the dtype of the update's forward passes under torch.autocast; None: the weights' own
    autocast: torch.dtype | None
    #: the weights that sample: "same" (the training weights) or a reduced-precision copy's dtype
    rollout_dtype: str

    def autocast_on(self, device: torch.device) -> contextlib.AbstractContextManager:
        """The update's forward passes' precision on ``device``: the run's autocast, or none."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast)


@dataclass
class Team:
    """The agents and everything their steps need. ``baseline``, ``objectives`` and ``sampler``
    left out are the config's own (MAGRPO's group baseline, each agent's loss, its sampler)."""

    agents: list[AgentPolicy]
    optimizers: list[torch.optim.Optimizer]
    args: MAGRPOConfig
    ranks: OneProcess
    precision: Precision
    #: one learning-rate schedule per optimiser, stepped once per training step (None: constant)
    schedulers: list[torch.optim.lr_scheduler.LRScheduler] | None = None
    baseline: Baseline | None = field(default=None)
    #: one per agent: an agent's own temperature and budget enter its loss
    objectives: list[Objective] = field(default_factory=list)
    sampler: Sampler | None = field(default=None)
    #: each agent's entropy coefficient, moved after every optimiser step by use_adaptive_entropy
    #: (in every checkpoint)
    entropy_controls: list[EntropyControl] = field(default_factory=list)
    #: multi_objective_aggregation="normalize_then_sum": the reward functions' (name, weight) pairs
    reward_parts: list[tuple[str, float]] | None = None
    #: MADPO's comparator (magrpo.comparator): G joint actions of its own per node (None: none)
    comparator: Comparator | None = None

    def __post_init__(self) -> None:
        from magrpo.baselines import GroupBaseline
        from magrpo.objective import Objective
        from magrpo.sampling import sampler_for

        self.baseline = self.baseline or GroupBaseline.from_config(self.args)
        self.objectives = self.objectives or [
            Objective.from_config(self.args, sharded=self.ranks.sharded, agent=i) for i in range(len(self.agents))
        ]
        self.sampler = self.sampler or sampler_for(
            self.args, training=True, agent_names=[agent.name for agent in self.agents]
        )
        self.entropy_controls = self.entropy_controls or [objective.entropy_control() for objective in self.objectives]

    def learning_rewards(self, turns: Sequence[Turn]) -> list[torch.Tensor] | None:
        """The rewards the returns are made of where they are not the turns' own (the weighted
        sums): with ``normalize_then_sum``, each function's values normalised per node first."""
        if self.args.multi_objective_aggregation != "normalize_then_sum" or not self.reward_parts:
            return None
        from magrpo.rewards.aggregation import normalize_then_sum

        return [normalize_then_sum(turn.results, self.reward_parts) for turn in turns]

    def after_step(self, step: int) -> None:
        """What follows training step ``step`` (1-based) besides the schedules: with
        ``sync_ref_model``, every ``ref_model_sync_steps``-th step each agent's reference moves
        towards its policy (TR-DPO's mix; TRL counts optimiser steps, magrpo training steps)."""
        if self.args.sync_ref_model and step % self.args.ref_model_sync_steps == 0:
            for agent in self.agents:
                agent.mix_into_reference(self.args.ref_model_mixup_alpha)

    @property
    def critics(self) -> list[Critic]:
        """The critics the baseline trains (IAC, MAAC; none for MAGRPO)."""
        return list(self.baseline.critics)

    def updates_at_once(self) -> bool:
        """Whether the agents update at once, each in a thread with its share of the CPU threads:
        with ``concurrent_agents``, in one process (ranks' collectives must come in one order),
        for agents on CPU with models of their own, in float32. Each agent's update touches only
        its own weights, optimiser and figures, and draws no random numbers (dropout is off while
        scoring), so the run is the same. Under bf16 autocast two runs of concurrent updates
        differed in the last bits from the fifth step on (oneDNN's bf16 kernels, whose choice
        depends on the threads of whoever built them first), which would break an exact resume:
        there they take turns."""
        agents = self.agents
        return (
            self.precision.autocast is None
            and self.args.concurrent_agents
            and not self.ranks.sharded
            and self.ranks.world_size == 1
            and len(agents) > 1
            and len(distinct_by_identity(agents, key=lambda agent: agent.model)) == len(agents)
            and all(agent.device.type == "cpu" for agent in agents)
        )


__all__ = ["Precision", "Team"]
