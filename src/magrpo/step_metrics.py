"""What a step reports: its metrics row (rewards, the scorer's figures and the advantages over
every rank's items, each agent's update figures, throughput) and its samples (:mod:`magrpo.samples`)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from magrpo.eval.figures import mean_figures, numeric_figures
from magrpo.experience import counted_rows
from magrpo.protocol import TurnProtocol
from magrpo.samples import tree_rows
from magrpo.step import StepOutput
from magrpo.team import Team

#: the update figures each agent reports under its own name
AGENT_FIGURES = (
    "loss",
    "grad_norm",
    "advantage_mean",
    "advantage_std",
    "zero_advantage_groups",
    "is_weight_mean",
    "is_capped_fraction",
    "entropy",
    "clip_fraction",
    "clip_low_fraction",
    "clip_high_fraction",
    "ratio_mean",
    "kl",
    "vespo_weight_mean",
    "off_policy_masked_fraction",
    "entropy_exact",
    "entropy_coef",
    "completions/mean_length",
    "completions/clipped_ratio",
)


def step_metrics(team: Team, out: StepOutput, step: int) -> dict[str, Any]:
    """The metrics row of step ``step`` (1-based: the step just taken). Every figure is the
    global one, over every rank's items (one gather of what each rank holds)."""
    turns, ranks = out.turns, team.ranks
    mine = {
        "rewards": [t.rewards.flatten().cpu() for t in turns],  # per turn (a rank's tree may end sooner)
        "rows": [numeric_figures(result) for node in turns[0].results for result in node],
        "advantages": [[adv.detach().cpu() for adv in per_agent] for per_agent in out.advantages],
        "zero_std_nodes": [float(zero_reward_std(t.rewards).sum()) for t in turns],
        "nodes": sum(t.num_nodes for t in turns),
        "completions": [
            completion_figures(agent, [t.rollouts[i] for t in turns]) for i, agent in enumerate(team.agents)
        ],
    }
    every = ranks.gather(mine)
    first = torch.cat([part["rewards"][0] for part in every])
    tokens = int(ranks.sum(sum(r.num_completion_tokens for t in turns for r in t.rollouts)))
    metrics: dict[str, Any] = {
        "step": step,
        "reward_mean": float(first.mean()),
        "reward_std": float(first.std()) if first.numel() > 1 else 0.0,
        "reward_min": float(first.min()),
        "reward_max": float(first.max()),
    }
    for t in range(1, max(len(part["rewards"]) for part in every)):
        later = torch.cat([part["rewards"][t] for part in every if len(part["rewards"]) > t])
        metrics[f"turn_{t + 1}/reward_mean"] = float(later.mean())
    # the scorer's own figures (reward levels, tests passed, cooperation schemes) over the first turn
    rows = [row for part in every for row in part["rows"]]
    metrics.update({f"figures/{k}": v for k, v in mean_figures(rows).items()})
    # TRL's: the share of nodes (groups) whose joint rewards all tie, every turn
    metrics["frac_reward_zero_std"] = sum(sum(p["zero_std_nodes"]) for p in every) / sum(p["nodes"] for p in every)
    contexts = TurnProtocol.from_config(team.args)  # an agent's groups: the completions that share a context
    for i, (agent, optimizer, update) in enumerate(zip(team.agents, team.optimizers, out.agent_figures)):
        advantages = [adv for part in every for adv in part["advantages"][i]]
        figures = {**update, **advantage_figures(advantages, contexts.context_size(i))}
        figures.update(merged_completion_figures([part["completions"][i] for part in every]))
        metrics.update({f"{agent.name}/{key}": figures[key] for key in AGENT_FIGURES if key in figures})
        metrics[f"{agent.name}/learning_rate"] = optimizer.param_groups[0]["lr"]
    for name, figures in out.critic_figures.items():  # IAC, MAAC: each critic's; MADPO: "preference"
        metrics.update({f"{name}/{key}": value for key, value in figures.items()})
    for critic in team.critics:
        if critic.optimizer is not None:
            metrics[f"{critic.name}/learning_rate"] = critic.optimizer.param_groups[0]["lr"]
    metrics.update(
        tokens_generated=tokens,
        rollout_seconds=out.rollout_seconds,
        update_seconds=out.update_seconds,
        seconds=out.rollout_seconds + out.update_seconds,
        tokens_per_second=tokens / out.rollout_seconds if out.rollout_seconds > 0 else 0.0,
    )
    return metrics


def zero_reward_std(rewards: torch.Tensor) -> torch.Tensor:
    """[P] bool: the nodes whose J joint rewards have (close to) zero spread, as TRL's isclose."""
    if rewards.shape[1] < 2:
        return torch.ones(rewards.shape[0], dtype=torch.bool)
    std = rewards.double().std(dim=1)
    return torch.isclose(std, torch.zeros_like(std))


def completion_figures(agent: Any, rollouts: Sequence[Any]) -> tuple[float, float, int]:
    """An agent's completions of the step: their summed lengths (counted tokens), how many were cut
    at max_new_tokens without an end-of-sequence token, and how many there are."""
    lengths = sum(float(r.completion_mask.sum()) for r in rollouts)
    cut = sum(float((~counted_rows(agent, r, mask_truncated=True)).sum()) for r in rollouts)
    return lengths, cut, sum(r.completion_ids.shape[0] for r in rollouts)


def merged_completion_figures(parts: Sequence[tuple[float, float, int]]) -> dict[str, float]:
    """TRL's completion figures over every rank's share: the mean length, the share cut."""
    total = sum(p[2] for p in parts)
    if not total:
        return {}
    return {
        "completions/mean_length": sum(p[0] for p in parts) / total,
        "completions/clipped_ratio": sum(p[1] for p in parts) / total,
    }


def advantage_figures(advantages: Sequence[torch.Tensor], group_size: int) -> dict[str, float]:
    """Mean and std of an agent's advantages over the step, and the share of its groups (the
    ``group_size`` completions that share one context: G of one node, or in a sequential tree the
    M that continue one earlier answer) without any signal (every advantage 0: nothing to learn from)."""
    flat = torch.cat([adv.flatten() for adv in advantages]).double()
    groups = torch.cat([adv.reshape(-1, group_size) for adv in advantages])
    return {
        "advantage_mean": float(flat.mean()),
        "advantage_std": float(flat.std()) if flat.numel() > 1 else 0.0,
        "zero_advantage_groups": float((groups == 0).all(dim=1).double().mean()),
    }


def step_samples(out: StepOutput, refs: Sequence[Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per joint action of every node of every turn: the item (``refs``, per batch
    position: :func:`magrpo.samples.item_refs`), what each agent saw and wrote, the joint reward
    and the scorer's figures, the return and each agent's advantage (:mod:`magrpo.samples`)."""
    return tree_rows(out.turns, refs, returns=out.returns, advantages=out.advantages)


__all__ = [
    "AGENT_FIGURES",
    "advantage_figures",
    "completion_figures",
    "merged_completion_figures",
    "step_metrics",
    "step_samples",
    "zero_reward_std",
]
