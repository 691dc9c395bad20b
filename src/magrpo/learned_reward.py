"""MARLHF: a joint reward model learnt from preferences between joint actions, then MAGRPO on its
rewards (docs/preference.md).

    reward-model phase   the first ``reward_model_steps`` steps with pairs: each node's pairs
                         (magrpo.preference.preference_pairs, ranked by the task's returns) take
                         one AdamW step of the reward model on the Bradley-Terry loss
                         -log sigmoid(s_w - s_l); the agents do not learn (every advantage 0)
    RL phase             the reward model, frozen, scores every joint action; its scores are the
                         rewards of MAGRPO's returns and group baseline (the task's reward is
                         still what the run logs and evaluates)

The reward model is a Q critic of the team in form (magrpo.critics: a value head on a causal LM
of its own reading every agent's prompt and completion as one text), so the checkpoints hold its
weights and its optimiser state like a critic model's, and the phase is read from that state.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F

from magrpo.baselines import NO_EXTRA_LOSS, ExtraLoss, GroupBaseline
from magrpo.critics.critic import Critic, chunked_values, critic_observations, value_the_tree
from magrpo.critics.value_head import ValueHead
from magrpo.errors import ConfigError
from magrpo.logprobs import scoring_mode
from magrpo.preference import PreferenceSettings, node_generator, pair_rows, preference_pairs
from magrpo.tree import turn_returns

if TYPE_CHECKING:
    from magrpo.config import MAGRPOConfig
    from magrpo.models import AgentPolicy
    from magrpo.ranks import OneProcess
    from magrpo.team import Precision
    from magrpo.tree import Turn

#: the reward model's name: its folder in a checkpoint, its figures' prefix
REWARD_MODEL = "reward_model"


def bradley_terry_loss(winner_scores: torch.Tensor, loser_scores: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(s_w - s_l) of each pair: the Bradley-Terry model's negative log-likelihood that
    the winner is preferred."""
    return -F.logsigmoid(winner_scores - loser_scores)


def reward_model_critic(body: AgentPolicy) -> Critic:
    """The reward model: a zero-initialised value head on ``body`` (a model of its own), reading
    the joint action (every agent's prompt and completion) as a team's Q critic does."""
    head = ValueHead(body.model.config.hidden_size).to(body.device)
    return Critic(REWARD_MODEL, head, host=0, joint=True, model=body, action=True)


def reward_model_body(agents: Sequence[AgentPolicy]) -> tuple[torch.nn.Module, object]:
    """Without ``critic_model``: a copy of the first agent's model before training (CoMLRL takes the
    agents' model too), with its tokenizer; a LoRA agent's would carry its adapter, so it is refused."""
    first = agents[0]
    if first.adapter is not None:
        raise ConfigError(
            f"algorithm='marlhf' copies the first agent's model as the reward model, and {first.name!r} is a LoRA "
            "agent: give critic_model (a causal LM folder for the reward model)"
        )
    return copy.deepcopy(first.model).requires_grad_(True), first.tokenizer


class LearnedRewardBaseline:
    """MARLHF's baseline (module docstring): in the reward-model phase no advantages and the
    reward model's step; after it, MAGRPO's group baseline over the reward model's returns."""

    def __init__(
        self,
        critic: Critic,
        agents: Sequence[AgentPolicy],
        args: MAGRPOConfig,
        precision: Precision,
        ranks: OneProcess,
    ) -> None:
        self.critics = (critic,)
        self.agents, self.args, self.precision, self.ranks = list(agents), args, precision, ranks
        self.settings = PreferenceSettings.from_config(args)
        self.group = GroupBaseline.from_config(args)

    @property
    def critic(self) -> Critic:
        return self.critics[0]

    def reward_model_steps_taken(self) -> int:
        """The reward model's AdamW steps so far, from its optimiser's state (in every checkpoint)."""
        state = self.critic.optimizer.state.get(self.critic.head.score.bias, {})
        return int(state["step"]) if "step" in state else 0

    def learning_reward_model(self) -> bool:
        return self.reward_model_steps_taken() < self.args.reward_model_steps

    def __call__(
        self, turns: Sequence[Turn], returns: Sequence[torch.Tensor]
    ) -> tuple[list[list[torch.Tensor]], "RewardModelTraining"]:
        if self.learning_reward_model():
            nothing = [
                [torch.zeros(len(turn.rollouts[i].completion_ids)) for turn in turns] for i in range(len(self.agents))
            ]
            pairs = [self.turn_pairs(turn, ret) for turn, ret in zip(turns, returns)]
            return nothing, RewardModelTraining(self, turns, pairs, {})
        a = self.args
        _, _, scores = value_the_tree(
            self.critic, self.agents, turns, a.update_micro_batch_size, self.precision.autocast_on
        )
        learnt = [s.view(turn.num_nodes, turn.num_joint) for s, turn in zip(scores, turns)]
        learnt_returns = turn_returns(turns, a.discount, a.num_turns, rewards=learnt)
        advantages, _ = self.group(turns, learnt_returns)
        device = self.critic.model.device
        count = self.ranks.sum(sum(s.numel() for s in scores), device)
        mean = self.ranks.sum(sum(float(s.double().sum()) for s in scores), device) / count
        return advantages, RewardModelTraining(self, turns, [], {"learnt_reward_mean": mean})

    def turn_pairs(self, turn: Turn, returns: torch.Tensor) -> list[tuple[int, int]]:
        """The turn's pairs as rows p * J + j of its joint actions (a Q critic's rows), ranked by
        the task's returns as MADPO ranks them."""
        s, J = self.settings, turn.num_joint
        return [
            (p * J + w, p * J + lo)
            for p in range(turn.num_nodes)
            for w, lo in preference_pairs(returns[p], s.selection, s.limit, node_generator(s, turn, p))
        ]


class RewardModelTraining:
    """After the agents: in the reward-model phase, one AdamW step of the reward model on the
    step's pairs (every rank's: the loss is their mean, the gradients summed, clipped at
    ``max_grad_norm``); its figures under "reward_model"."""

    def __init__(
        self,
        baseline: LearnedRewardBaseline,
        turns: Sequence[Turn],
        pairs: Sequence[Sequence[tuple[int, int]]],
        figures: dict[str, float],
    ) -> None:
        self.baseline, self.turns, self.pairs, self.figures = baseline, turns, pairs, figures
        #: the reward model learns from this rank's pairs while the agents wait (no advantage)
        self.agents_wait = any(pairs)

    def extra_loss(self, agent: int) -> ExtraLoss:
        return NO_EXTRA_LOSS

    def train(self) -> dict[str, dict[str, float]]:
        b = self.baseline
        critic, ranks, args = b.critic, b.ranks, b.args
        if not self.pairs:
            return {REWARD_MODEL: self.figures}
        body, params = critic.model, critic.parameters()
        count = ranks.sum(sum(len(p) for p in self.pairs), body.device)
        if not count:  # no pair on any rank: no step (it does not count towards reward_model_steps)
            return {REWARD_MODEL: {"pairs": 0.0}}
        loss_sum = correct = 0.0
        critic.optimizer.zero_grad(set_to_none=True)
        with body.with_own_adapter() as on, scoring_mode(on) as model, b.precision.autocast_on(body.device):
            for turn, pairs in zip(self.turns, self.pairs):
                if not pairs:
                    continue
                ids, mask = critic_observations(critic, b.agents, turn)
                rows, winners, losers = pair_rows(pairs)
                scores = chunked_values(model, critic.head, ids[rows], mask[rows], args.update_micro_batch_size)
                winners, losers = winners.to(scores.device), losers.to(scores.device)
                losses = bradley_terry_loss(scores[winners].float(), scores[losers].float())
                (losses.sum() / count).backward()
                loss_sum += float(losses.detach().sum())
                correct += float((scores[winners] > scores[losers]).sum())
        ranks.sum_gradients(params)
        grad_norm = ranks.clip_gradients(params, args.max_grad_norm)
        critic.optimizer.step()
        critic.optimizer.zero_grad(set_to_none=True)
        return {
            REWARD_MODEL: {
                "pairs": float(count),
                "bt_loss": ranks.sum(loss_sum, body.device) / count,
                "accuracy": ranks.sum(correct, body.device) / count,
                "grad_norm": grad_norm,
                "steps": float(b.reward_model_steps_taken()),
            }
        }


__all__ = [
    "REWARD_MODEL",
    "LearnedRewardBaseline",
    "RewardModelTraining",
    "bradley_terry_loss",
    "reward_model_body",
    "reward_model_critic",
]
