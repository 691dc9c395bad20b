"""MADPO: a team trained from preferences between the joint actions of each node (docs/preference.md).

    pairs      = preference_pairs(returns of a node's G joint actions)   ordered (winner, loser)
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
from magrpo.experience import micro_batch, micro_batch_logprobs, scoring
from magrpo.logprobs import scoring_mode
from magrpo.objective import Objective
from magrpo.seeds import mix_seed

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
    model: torch.nn.Module, rollout: Rollout, rows: torch.Tensor, objective: Objective, chunk: int
) -> torch.Tensor:
    """[len(rows)] float64 on the CPU: the summed log-probs of ``rows`` of ``rollout`` under
    ``model`` (as the update scores them: the sampling temperature, the counted tokens)."""
    where = next(model.parameters()).device
    out = []
    for part in rows.split(chunk):
        mb = micro_batch(rollout, torch.zeros(len(rollout.completion_ids)), part, where, False)
        logprobs = micro_batch_logprobs(model, mb, objective)
        out.append((logprobs.double() * mb.completion_mask).sum(dim=-1).cpu())
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

    def node_pairs(self, turn: Turn, node: int, returns: torch.Tensor) -> list[tuple[int, int]]:
        """The pairs of one node's joint actions."""
        s = self.settings
        return preference_pairs(returns, s.selection, s.limit, node_generator(s, turn, node))

    def __call__(
        self, turns: Sequence[Turn], returns: Sequence[torch.Tensor]
    ) -> tuple[list[list[torch.Tensor]], "PreferenceTraining"]:
        s, n = self.settings, len(self.agents)
        # every turn's pairs as rows p * G + g of its rollouts
        turn_pairs = []
        for turn, ret in zip(turns, returns):
            g = turn.rollouts[0].num_generations
            turn_pairs.append(
                [(p * g + w, p * g + lo) for p in range(turn.num_nodes) for w, lo in self.node_pairs(turn, p, ret[p])]
            )
        device = self.agents[0].device
        num_pairs = self.ranks.sum(sum(len(pairs) for pairs in turn_pairs), device)
        num_rows = self.ranks.sum(sum(len(turn.rollouts[0].completion_ids) for turn in turns), device)
        advantages: list[list[torch.Tensor]] = [[] for _ in range(n)]
        loss_sum = correct = margin_sum = 0.0
        for turn, pairs in zip(turns, turn_pairs):
            margins = torch.stack([self.agent_margins(i, turn.rollouts[i], pairs) for i in range(n)])
            logits = pair_logits(margins, s.loss)
            if not torch.isfinite(logits).all():
                raise FloatingPointError(f"a DPO margin at turn {turn.index} is not finite: {margins.tolist()}")
            coefficients = dpo_gradient_coefficients(logits, s.beta)
            scale = num_rows / num_pairs if num_pairs else 0.0
            rows = len(turn.rollouts[0].completion_ids)
            for i in range(n):
                advantages[i].append(completion_weights(pairs, coefficients[i], rows, scale).float())
            loss_sum += float(dpo_loss(logits, s.beta).sum())
            correct += float((logits > 0).double().sum())
            margin_sum += float(margins.sum())
        totals = [self.ranks.sum(v, device) for v in (loss_sum, correct, margin_sum)]
        figures = {"pairs": float(num_pairs)}
        if num_pairs:
            figures.update(
                dpo_loss=totals[0] / (num_pairs * n),
                accuracy=totals[1] / (num_pairs * n),
                margin=totals[2] / (num_pairs * n),
            )
        return advantages, PreferenceTraining(figures)

    def agent_margins(self, index: int, rollout: Rollout, pairs: Sequence[tuple[int, int]]) -> torch.Tensor:
        """[P] float64: agent ``index``'s DPO margin on each pair, scored before any update."""
        if not pairs:
            return torch.zeros(0, dtype=torch.float64)
        agent = self.agents[index]
        rows, winners, losers = pair_rows(pairs)
        with scoring(agent, self.precision) as model:
            policy = sequence_logprobs(model, rollout, rows, self.objectives[index], self.chunk)
        if not self.settings.with_reference:
            return dpo_margins(policy[winners], policy[losers])
        with scoring(agent, self.precision), agent.as_reference() as reference, scoring_mode(reference) as model:
            ref = sequence_logprobs(model, rollout, rows, self.objectives[index], self.chunk)
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
