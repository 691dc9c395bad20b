"""The baseline interface: how a step turns the tree's returns into every agent's advantages, and
what it trains beside the agents. Chosen once when the team is prepared:

- :class:`GroupBaseline` (MAGRPO, the paper's): A = R - b over the G siblings of each node,
  b the group's mean (or RLOO's leave-one-out mean, the group's best, or 0); nothing to train;
- :class:`magrpo.critics.baseline.CriticBaseline` (IAC, MAAC): A = R - V (or Q - mean Q), the
  critics' value losses trained with their hosts' updates or by a critic model's own optimiser;
- :class:`magrpo.preference.PreferenceBaseline` (MADPO): the weights whose update has the
  gradient of each agent's DPO loss on the pairs of each node's joint actions;
- :class:`magrpo.learned_reward.LearnedRewardBaseline` (MARLHF): a reward model taught by those
  pairs, then the group's baseline over its rewards.

``advantages, training = baseline(turns, returns)``; then each agent's update adds
``training.extra_loss(i)`` to its own loss, and ``training.train()`` trains what is left once the
agents are done and returns the baseline's figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence

import torch

from magrpo.advantages import agent_advantages, contextual_advantages
from magrpo.protocol import TurnProtocol

if TYPE_CHECKING:
    from magrpo.config import MAGRPOConfig
    from magrpo.critics.critic import Critic
    from magrpo.ranks import OneProcess
    from magrpo.tree import Turn


class ExtraLoss(Protocol):
    """A loss term an agent's update carries beside its policy loss (a critic's value loss on a
    head that sits on the agent's model), with parameters of its own."""

    #: summed over the ranks with the agent's gradients, clipped apart from them
    parameters: list[torch.nn.Parameter]

    def backward(self, model: torch.nn.Module) -> float:
        """Backpropagate this rank's share through ``model`` (the agent's, in scoring mode);
        returns the share as it adds to the agent's loss."""
        ...

    def clip(self, ranks: OneProcess) -> None:
        """After the ranks' gradients are summed: clip :attr:`parameters` and keep the figures."""
        ...


class BaselineTraining(Protocol):
    """What a baseline trains in one step, beside the agents."""

    def extra_loss(self, agent: int) -> ExtraLoss:
        """The loss term agent ``agent``'s update carries (:data:`NO_EXTRA_LOSS`: none)."""
        ...

    def train(self) -> dict[str, dict[str, float]]:
        """After the agents' updates: train what has an optimiser of its own; every trained
        part's figures by its name."""
        ...


class Baseline(Protocol):
    #: the critics it trains (none for the group's baseline)
    critics: Sequence[Critic]

    def __call__(
        self, turns: Sequence[Turn], returns: Sequence[torch.Tensor]
    ) -> tuple[list[list[torch.Tensor]], BaselineTraining]:
        """Every agent's advantages at every turn (``[P_t * C]``, row p * C + c: C = G, or more for a
        later agent of a sequential tree) and what the baseline trains in this step."""
        ...


class _NoExtraLoss:
    parameters: list[torch.nn.Parameter] = []

    def backward(self, model: torch.nn.Module) -> float:
        return 0.0

    def clip(self, ranks: OneProcess) -> None:
        pass


class _NothingToTrain:
    def extra_loss(self, agent: int) -> ExtraLoss:
        return NO_EXTRA_LOSS

    def train(self) -> dict[str, dict[str, float]]:
        return {}


#: an update without a loss term beside its policy loss
NO_EXTRA_LOSS: ExtraLoss = _NoExtraLoss()
#: a baseline that trains nothing
NOTHING_TO_TRAIN: BaselineTraining = _NothingToTrain()


@dataclass(frozen=True)
class GroupBaseline:
    """MAGRPO's baseline: every agent's completions centred over the siblings of their node
    (:func:`magrpo.advantages.agent_advantages`; cross mode aggregates each completion's joint
    actions first). In a sequential tree each completion is valued by the joint actions that
    continue it, then centred over its node (``credit="group"``) or, with a leave-one-out baseline,
    over the alternatives that share its exact context (``credit="counterfactual"``, C3:
    :func:`magrpo.advantages.contextual_advantages`)."""

    num_agents: int
    protocol: TurnProtocol = TurnProtocol()
    scaling: str = "none"
    cross_aggregation: str = "mean"
    baseline: str = "mean"
    credit: str = "group"
    critics: tuple = ()

    @classmethod
    def from_config(cls, args: MAGRPOConfig) -> "GroupBaseline":
        return cls(
            num_agents=args.num_agents,
            protocol=TurnProtocol.from_config(args),
            scaling=args.advantage_scaling,
            cross_aggregation=args.cross_aggregation,
            baseline=args.advantage_baseline,
            credit=args.credit,
        )

    def __call__(
        self, turns: Sequence[Turn], returns: Sequence[torch.Tensor]
    ) -> tuple[list[list[torch.Tensor]], BaselineTraining]:
        advantages = [[self.agent_advantages(i, ret) for ret in returns] for i in range(self.num_agents)]
        return advantages, NOTHING_TO_TRAIN

    def agent_advantages(self, agent: int, returns: torch.Tensor) -> torch.Tensor:
        """Agent ``agent``'s advantages at one turn (``[P * C_agent]``) from its returns ``[P, J]``."""
        if not self.protocol.sequential:
            return agent_advantages(
                returns,
                agent=agent,
                num_agents=self.num_agents,
                joint_mode=self.protocol.joint_mode,
                scaling=self.scaling,
                cross_aggregation=self.cross_aggregation,
                baseline=self.baseline,
            )
        per_node = self.protocol.completions_per_node(self.num_agents)[agent]
        counterfactual = self.credit == "counterfactual"
        return contextual_advantages(
            returns,
            completions_per_node=per_node,
            context_size=self.protocol.context_size(agent) if counterfactual else per_node,
            scaling=self.scaling,
            baseline="loo" if counterfactual else self.baseline,
            aggregation=self.cross_aggregation,
        )


__all__ = ["NOTHING_TO_TRAIN", "NO_EXTRA_LOSS", "Baseline", "BaselineTraining", "ExtraLoss", "GroupBaseline"]
