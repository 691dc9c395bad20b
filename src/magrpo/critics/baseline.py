"""IAC's and MAAC's baseline (:class:`CriticBaseline`): the critics value the tree's nodes, the
agents' advantages are A = R - V (a Q critic's Q(s, a_j) - mean_j' Q(s, a_j')), and each critic's
value loss trains in one of two places:

- a head on an agent's model: in that agent's update, as its extra loss term
  (:class:`HostedValueLoss`: ``value_loss_coef`` times the value loss, the head clipped apart);
- a critic model of its own: after the agents, by its own optimiser (:func:`train_critic_model`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from magrpo.baselines import NO_EXTRA_LOSS, ExtraLoss
from magrpo.critics.critic import Critic, CriticBatch, chunked_values, critic_step
from magrpo.critics.targets import value_loss
from magrpo.logprobs import scoring_mode
from magrpo.models import AgentPolicy
from magrpo.ranks import OneProcess

if TYPE_CHECKING:
    from magrpo.config import MAGRPOConfig
    from magrpo.team import Precision
    from magrpo.tree import Turn


class CriticBaseline:
    """The critics of IAC (one per agent) or MAAC (one for the team) as the step's baseline."""

    def __init__(
        self,
        critics: Sequence[Critic],
        agents: Sequence[AgentPolicy],
        args: MAGRPOConfig,
        precision: Precision,
        ranks: OneProcess,
    ) -> None:
        self.critics = list(critics)
        self.agents, self.args, self.precision, self.ranks = agents, args, precision, ranks

    def __call__(
        self, turns: Sequence[Turn], returns: Sequence[torch.Tensor]
    ) -> tuple[list[list[torch.Tensor]], "CriticTraining"]:
        a = self.args
        advantages, batches = critic_step(
            self.critics,
            self.agents,
            turns,
            returns,
            gamma=a.discount,
            num_turns=a.num_turns,
            lam=a.critic_lambda,
            normalise=a.normalise_critic_advantages,
            chunk=a.update_micro_batch_size,
            autocast=self.precision.autocast_on,
            ranks=self.ranks,
        )
        return advantages, CriticTraining(self, batches)


class CriticTraining:
    """One step's critic training: each hosted head's value loss in its host's update, then the
    critic models' own updates, then every critic's figures."""

    def __init__(self, baseline: CriticBaseline, batches: Sequence[CriticBatch]) -> None:
        self.baseline, self.batches = baseline, list(batches)
        a = baseline.args
        self.hosted = {
            b.critic.host: HostedValueLoss(b, baseline.agents[b.critic.host].device, a, baseline.ranks)
            for b in self.batches
            if b.critic.model is None
        }

    def extra_loss(self, agent: int) -> ExtraLoss:
        return self.hosted.get(agent, NO_EXTRA_LOSS)

    def train(self) -> dict[str, dict[str, float]]:
        b = self.baseline
        return {
            batch.critic.name: (
                self.hosted[batch.critic.host].figures()
                if batch.critic.model is None
                else train_critic_model(batch, b.args, b.precision, b.ranks)
            )
            for batch in self.batches
        }


class HostedValueLoss:
    """A value head on its host agent's model: its value loss, weighted by ``value_loss_coef``,
    joins the agent's loss in every optimiser step (its gradient reaches the shared body too, as
    a shared trunk's); the head is a parameter group of the agent's optimiser, clipped at
    ``max_grad_norm`` apart from the agent's weights (its gradient would otherwise set the
    actor's clip)."""

    def __init__(self, batch: CriticBatch, device: torch.device, args: MAGRPOConfig, ranks: OneProcess) -> None:
        self.batch, self.device, self.args, self.ranks = batch, device, args, ranks
        self.parameters = list(batch.critic.head.parameters())
        self.count = ranks.sum(batch.num_targets, device)  # every rank's targets
        self._share, self.losses, self.grad_norms = 0.0, [], []

    def backward(self, model: torch.nn.Module) -> float:
        a = self.args
        self._share = value_loss_sum(model, self.batch, self.count, a, weight=a.value_loss_coef)
        return a.value_loss_coef * self._share

    def clip(self, ranks: OneProcess) -> None:
        self.losses.append(ranks.sum(self._share, self.device))
        self.grad_norms.append(ranks.clip_gradients(self.parameters, self.args.max_grad_norm))

    def figures(self) -> dict[str, float]:
        """The value loss and the head's gradient norm (means over the optimiser steps), and the
        critic's figures before the update over every rank's nodes (collective)."""
        return {
            "value_loss": sum(self.losses) / len(self.losses),
            "value_grad_norm": sum(self.grad_norms) / len(self.grad_norms),
            **self.batch.figures(self.ranks),
        }


def train_critic_model(
    batch: CriticBatch, args: MAGRPOConfig, precision: Precision, ranks: OneProcess
) -> dict[str, float]:
    """``num_iterations`` AdamW steps of a critic with a model of its own on its value loss (the
    agents' updates are done: they do not see it; ``value_loss_coef`` does not apply, the loss is
    all it trains on); gradients summed over the ranks and clipped at ``max_grad_norm``, as an agent's."""
    critic = batch.critic
    body, params = critic.model, critic.parameters()
    count = ranks.sum(batch.num_targets, body.device)
    losses, grad_norms = [], []
    critic.optimizer.zero_grad(set_to_none=True)
    for _ in range(args.num_iterations):
        with body.with_own_adapter() as on, scoring_mode(on) as model, precision.autocast_on(body.device):
            losses.append(ranks.sum(value_loss_sum(model, batch, count, args), body.device))
        ranks.sum_gradients(params)
        grad_norms.append(ranks.clip_gradients(params, args.max_grad_norm))
        critic.optimizer.step()
        critic.optimizer.zero_grad(set_to_none=True)
    return {
        "value_loss": sum(losses) / len(losses),
        "value_grad_norm": sum(grad_norms) / len(grad_norms),
        **batch.figures(ranks),
    }


def value_loss_sum(
    model: torch.nn.Module, batch: CriticBatch, count: int, args: MAGRPOConfig, weight: float = 1.0
) -> float:
    """Backpropagate this rank's share of the critic's value loss on ``model`` (its body, in
    scoring mode): 0.5 * (V - R_j)^2 summed over the J joint actions' returns of every node of
    every turn and divided by ``count`` (the targets of every rank), times ``weight`` (a hosted
    head's ``value_loss_coef``); with ``critic_value_clip``, PPO's clipped value loss against the
    values the advantages were made with. Returns this rank's share of the un-weighted value loss."""
    total = 0.0
    for ids, mask, old, targets in zip(batch.prompt_ids, batch.prompt_mask, batch.old_values, batch.targets):
        width = targets.shape[1]  # every joint action's return is a target of its node's value
        for rows in torch.arange(ids.shape[0], device=ids.device).split(args.update_micro_batch_size):
            values = chunked_values(model, batch.critic.head, ids[rows], mask[rows], len(rows))
            loss = value_loss(
                values.repeat_interleave(width),
                targets[rows.cpu()].reshape(-1).to(values.device),
                old[rows.cpu()].repeat_interleave(width).to(values.device),
                args.critic_value_clip,
            ) * (len(rows) * width / count)
            (weight * loss).backward()
            total += float(loss.detach())
    return total


__all__ = ["CriticBaseline", "CriticTraining", "HostedValueLoss", "train_critic_model", "value_loss_sum"]
