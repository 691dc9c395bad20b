"""MADPO: a team trained from preferences between the joint actions of each node (docs/preference.md).

    pairs      = preference_pairs(returns of a node's G joint actions)   ordered (winner, loser)
                 (a comparator: the team's k-th against its k-th, magrpo.comparator.comparator_pairs)
    margins    = dpo_margins(pi_i, pi_ref_i of winner and loser)         per agent, per pair
    z          = pair_logits(margins, preference_loss)                   joint: the sum over agents
    loss       = -log sigmoid(beta z)                                    each agent's DPO loss
    weights    = completion_weights(...)                                 its gradient as advantages

:class:`PreferenceBaseline` is the step's baseline (``team.baseline(turns, returns)``, as the
group's and the critics' are): it scores every pair's margins before the update, and hands each
completion the weight whose policy-gradient loss has the DPO loss's gradient, so the step's update
is left as it is.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F

from magrpo.baselines import NO_EXTRA_LOSS, ExtraLoss
from magrpo.choices import PAIR_SELECTIONS, PREFERENCE_LOSSES, check_choice
from magrpo.comparator import comparator_pairs
from magrpo.experience import micro_batch, micro_batch_logprobs, scoring
from magrpo.logprobs import scoring_mode
from magrpo.objective import Objective
from magrpo.seeds import mix_seed
from magrpo.tree import trained_rollouts

if TYPE_CHECKING:
    from magrpo.config import MAGRPOConfig
    from magrpo.models import AgentPolicy
    from magrpo.ranks import OneProcess
    from magrpo.sampling import Rollout
    from magrpo.team import Precision
    from magrpo.tree import Turn


def preference_pairs(
    returns: Sequence[float] | torch.Tensor,
    selection: str = "reward_gap",
    limit: int | None = 16,
    generator: torch.Generator | None = None,
) -> list[tuple[int, int]]:
    """The ordered pairs (winner, loser) of one node's joint actions, ``returns[w] > returns[l]``
    (ties make no pair). ``selection``: "reward_gap", the largest gaps first (equal gaps in (w, l)
    order); "all", every pair in (w, l) order, uncut; "random", shuffled by ``generator``. All but
    "all" keep the first ``limit`` (None: every one)."""
    check_choice("pair_selection", selection, PAIR_SELECTIONS)
    values = [float(r) for r in returns]
    pairs = [(w, lo) for w, rw in enumerate(values) for lo, rl in enumerate(values) if rw > rl]
    if selection == "all":
        return pairs
    if selection == "reward_gap":  # a stable sort: equal gaps keep their (w, l) order
        pairs.sort(key=lambda p: values[p[0]] - values[p[1]], reverse=True)
    else:
        order = torch.randperm(len(pairs), generator=generator).tolist()
        pairs = [pairs[k] for k in order]
    return pairs if limit is None else pairs[:limit]


def dpo_margins(
    policy_winner: torch.Tensor,
    policy_loser: torch.Tensor,
    reference_winner: torch.Tensor | None = None,
    reference_loser: torch.Tensor | None = None,
) -> torch.Tensor:
    """Each pair's DPO margin m = [log pi(w) - log pi_ref(w)] - [log pi(l) - log pi_ref(l)] from
    summed completion log-probs; without a reference (None) the policy's alone, log pi(w) - log pi(l)."""
    margin = policy_winner - policy_loser
    if reference_winner is None or reference_loser is None:
        return margin
    return margin - (reference_winner - reference_loser)


def pair_logits(margins: torch.Tensor, preference_loss: str = "joint") -> torch.Tensor:
    """``margins`` [N agents, P pairs] -> the z of each agent's loss -log sigmoid(beta z):
    "joint", the team's margin sum_j m_j (the DPO logit of the joint policy, the same for every
    agent); "own", the agent's m_i alone."""
    check_choice("preference_loss", preference_loss, PREFERENCE_LOSSES)
    if preference_loss == "own":
        return margins
    return margins.sum(dim=0, keepdim=True).expand_as(margins)


def dpo_loss(logits: torch.Tensor, beta: float) -> torch.Tensor:
    """-log sigmoid(beta z), elementwise."""
    return -F.logsigmoid(beta * logits)


def dpo_gradient_coefficients(logits: torch.Tensor, beta: float) -> torch.Tensor:
    """c = beta sigmoid(-beta z): d(-log sigmoid(beta z)) / dz = -c, so an agent's loss has the
    gradient -c (grad log pi(w) - grad log pi(l)) whatever its reference and the other agents' parts."""
    return beta * torch.sigmoid(-beta * logits)


def completion_weights(
    pairs: Sequence[tuple[int, int]], coefficients: torch.Tensor, num_rows: int, scale: float = 1.0
) -> torch.Tensor:
    """[num_rows] float64: each row's signed sum of ``scale * coefficients`` over the pairs it
    wins (+) and loses (-). As advantages of -sum_s A_s log pi_s / S, with scale = S / P, their
    gradient is that of the pairs' mean DPO loss."""
    weights = torch.zeros(num_rows, dtype=torch.float64)
    if not pairs:
        return weights
    winners = torch.tensor([w for w, _ in pairs])
    losers = torch.tensor([lo for _, lo in pairs])
    c = coefficients.detach().to(dtype=torch.float64, device="cpu") * scale
    return weights.index_add(0, winners, c).index_add(0, losers, -c)


def pair_rows(pairs: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The distinct rows the pairs name, sorted (each scored once), and where each pair's winner
    and loser stand among them."""
    rows = torch.tensor(sorted({r for pair in pairs for r in pair}))
    where = {int(r): k for k, r in enumerate(rows)}
    return rows, torch.tensor([where[w] for w, _ in pairs]), torch.tensor([where[lo] for _, lo in pairs])


@torch.no_grad()
def sequence_logprobs(
    model: torch.nn.Module, rollouts: Sequence[Rollout], rows: torch.Tensor, objective: Objective, chunk: int
) -> torch.Tensor:
    """[len(rows)] float64 on the CPU: the summed log-probs of ``rows`` (sorted) of ``rollouts``
    laid end to end (the team's, then a comparator's) under ``model``, as the update scores them
    (the sampling temperature, the counted tokens)."""
    where = next(model.parameters()).device
    out, start = [], 0
    for rollout in rollouts:
        end = start + len(rollout.completion_ids)
        for part in (rows[(rows >= start) & (rows < end)] - start).split(chunk):
            mb = micro_batch(rollout, torch.zeros(len(rollout.completion_ids)), part, where, False)
            logprobs = micro_batch_logprobs(model, mb, objective)
            out.append((logprobs.double() * mb.completion_mask).sum(dim=-1).cpu())
        start = end
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


@dataclass(frozen=True)
class PreferenceSettings:
    """The preference knobs of the config, resolved once."""

    beta: float
    selection: str
    limit: int | None
    loss: str
    with_reference: bool
    seed: int

    @classmethod
    def from_config(cls, args: MAGRPOConfig) -> "PreferenceSettings":
        return cls(
            beta=args.dpo_beta,
            selection=args.pair_selection,
            limit=args.pairs_per_node,
            loss=args.preference_loss,
            with_reference=args.preference_reference == "initial",
            seed=args.seed,
        )


def node_generator(settings: PreferenceSettings, turn: Turn, node: int) -> torch.Generator | None:
    """The random stream of a node's "random" pairs (else None): keyed by the run's seed and the
    node's texts, so a resumed run, or another rank, draws what the straight run would have."""
    if settings.selection != "random":
        return None
    g = turn.rollouts[0].num_generations
    texts = "\x00".join(t for r in turn.rollouts for t in r.texts[node * g : (node + 1) * g])
    return torch.Generator().manual_seed(mix_seed(settings.seed, zlib.crc32(texts.encode())))


class PreferenceBaseline:
    """MADPO's baseline: the step's pairs, every agent's DPO margins on them, and as each agent's
    advantages the weights whose update has the gradient of its mean DPO loss over the step's
    pairs (every turn's nodes, every rank's). Nothing trains beside the agents."""

    critics: tuple = ()

    def __init__(
        self,
        agents: Sequence[AgentPolicy],
        objectives: Sequence[Objective],
        settings: PreferenceSettings,
        precision: Precision,
        ranks: OneProcess,
        chunk: int,
    ) -> None:
        self.agents, self.objectives, self.settings = list(agents), list(objectives), settings
        self.precision, self.ranks, self.chunk = precision, ranks, chunk

    @classmethod
    def from_config(
        cls, agents: Sequence[AgentPolicy], args: MAGRPOConfig, precision: Precision, ranks: OneProcess
    ) -> "PreferenceBaseline":
        objectives = [Objective.from_config(args, sharded=ranks.sharded, agent=i) for i in range(len(agents))]
        return cls(
            agents, objectives, PreferenceSettings.from_config(args), precision, ranks, args.update_micro_batch_size
        )

    def turn_pairs(self, turn: Turn, returns: torch.Tensor) -> list[tuple[int, int]]:
        """The pairs of every node of ``turn``, as rows of its sides laid end to end: the team's
        rows p * G + k, then a comparator's P * G + p * G + k (magrpo.comparator)."""
        s, g, num_nodes = self.settings, turn.rollouts[0].num_generations, turn.num_nodes
        if turn.comparator is None:  # "current": the node's own joint actions among themselves
            return [
                (p * g + w, p * g + lo)
                for p in range(num_nodes)
                for w, lo in preference_pairs(returns[p], s.selection, s.limit, node_generator(s, turn, p))
            ]

        def row(node: int, k: int) -> int:  # the node's index k < G: the team's; G + k: the comparator's
            return node * g + k if k < g else num_nodes * g + node * g + (k - g)

        theirs = turn.comparator.rewards
        return [
            (row(p, w), row(p, lo))
            for p in range(num_nodes)
            for w, lo in comparator_pairs(returns[p], theirs[p], s.selection, s.limit, node_generator(s, turn, p))
        ]

    def __call__(
        self, turns: Sequence[Turn], returns: Sequence[torch.Tensor]
    ) -> tuple[list[list[torch.Tensor]], "PreferenceTraining"]:
        s, n = self.settings, len(self.agents)
        turn_pairs = [self.turn_pairs(turn, ret) for turn, ret in zip(turns, returns)]
        device = self.agents[0].device
        num_pairs = self.ranks.sum(sum(len(pairs) for pairs in turn_pairs), device)
        # S: every completion the update counts, a comparator's too (they are trained on)
        num_rows = self.ranks.sum(sum(len(r.completion_ids) for r in trained_rollouts(turns, 0)), device)
        advantages: list[list[torch.Tensor]] = [[] for _ in range(n)]
        comparator_weights: list[list[torch.Tensor]] = [[] for _ in range(n)]
        loss_sum = correct = margin_sum = 0.0
        for turn, pairs in zip(turns, turn_pairs):
            sides = [turn.rollouts] + ([turn.comparator.rollouts] if turn.comparator is not None else [])
            margins = torch.stack([self.agent_margins(i, [side[i] for side in sides], pairs) for i in range(n)])
            logits = pair_logits(margins, s.loss)
            if not torch.isfinite(logits).all():
                raise FloatingPointError(f"a DPO margin at turn {turn.index} is not finite: {margins.tolist()}")
            coefficients = dpo_gradient_coefficients(logits, s.beta)
            scale = num_rows / num_pairs if num_pairs else 0.0
            for i in range(n):
                sizes = [len(side[i].completion_ids) for side in sides]
                own, *theirs = completion_weights(pairs, coefficients[i], sum(sizes), scale).float().split(sizes)
                advantages[i].append(own)
                comparator_weights[i].extend(theirs)
            loss_sum += float(dpo_loss(logits, s.beta).sum())
            correct += float((logits > 0).double().sum())
            margin_sum += float(margins.sum())
        totals = [self.ranks.sum(v, device) for v in (loss_sum, correct, margin_sum)]
        figures = {"pairs": float(num_pairs), **self.comparator_figures(turns)}
        if num_pairs:
            figures.update(
                dpo_loss=totals[0] / (num_pairs * n),
                accuracy=totals[1] / (num_pairs * n),
                margin=totals[2] / (num_pairs * n),
            )
        # in trained_rollouts' order: every turn's own rows, then the comparator's
        return [own + theirs for own, theirs in zip(advantages, comparator_weights)], PreferenceTraining(figures)

    def comparator_figures(self, turns: Sequence[Turn]) -> dict[str, float]:
        """With a comparator: the mean joint reward of its joint actions over every rank's nodes
        (the team's own is the step's reward_mean), so the log shows the team pulling ahead."""
        sampled = [turn.comparator.rewards for turn in turns if turn.comparator is not None]
        if not sampled:
            return {}
        device = self.agents[0].device
        total = self.ranks.sum(sum(float(r.sum()) for r in sampled), device)
        return {"comparator_reward": total / self.ranks.sum(sum(r.numel() for r in sampled), device)}

    def agent_margins(self, index: int, rollouts: Sequence[Rollout], pairs: Sequence[tuple[int, int]]) -> torch.Tensor:
        """[P] float64: agent ``index``'s DPO margin on each pair (rows of ``rollouts`` laid end to
        end), both sides scored under its current policy, before any update."""
        if not pairs:
            return torch.zeros(0, dtype=torch.float64)
        agent = self.agents[index]
        rows, winners, losers = pair_rows(pairs)
        with scoring(agent, self.precision) as model:
            policy = sequence_logprobs(model, rollouts, rows, self.objectives[index], self.chunk)
        if not self.settings.with_reference:
            return dpo_margins(policy[winners], policy[losers])
        with scoring(agent, self.precision), agent.as_reference() as reference, scoring_mode(reference) as model:
            ref = sequence_logprobs(model, rollouts, rows, self.objectives[index], self.chunk)
        return dpo_margins(policy[winners], policy[losers], ref[winners], ref[losers])


class PreferenceTraining:
    """Nothing trains beside the agents; the step's DPO figures, under "preference"."""

    def __init__(self, figures: dict[str, float]) -> None:
        self.figures = figures

    def extra_loss(self, agent: int) -> ExtraLoss:
        return NO_EXTRA_LOSS

    def train(self) -> dict[str, dict[str, float]]:
        return {"preference": self.figures}


__all__ = [
    "PreferenceBaseline",
    "PreferenceSettings",
    "PreferenceTraining",
    "completion_weights",
    "dpo_gradient_coefficients",
    "dpo_loss",
    "dpo_margins",
    "node_generator",
    "pair_rows",
    "pair_logits",
    "preference_pairs",
    "sequence_logprobs",
]
