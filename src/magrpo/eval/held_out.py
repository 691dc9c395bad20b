"""The team's held-out figures: one greedy (or ``eval_temperature``) joint answer per item, each
turn's figures averaged. Under torchrun every rank answers its share of the items."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch

from magrpo.envs.base import MultiAgentEnv
from magrpo.eval.figures import final_figures_per_turn, mean_figures
from magrpo.samples import item_refs, tree_rows
from magrpo.sampling import sampler_for
from magrpo.team import Team
from magrpo.tree import expand_tree


def evaluate_team(
    team: Team,
    env_factory: Callable[[Mapping[str, Any]], MultiAgentEnv],
    items: Sequence[Mapping[str, Any]],
    batch_size: int = 8,
) -> dict[str, float]:
    """``{"items": n, "reward": ..., <scorer figures>..., "turn_2/reward": ...}`` over ``items``."""
    return answer_held_out(team, env_factory, items, batch_size)[0]


@torch.no_grad()
def answer_held_out(
    team: Team,
    env_factory: Callable[[Mapping[str, Any]], MultiAgentEnv],
    items: Sequence[Mapping[str, Any]],
    batch_size: int = 8,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The figures of :func:`evaluate_team` and the answers behind them: one row per item and
    turn (:mod:`magrpo.samples`, without node and joint; ``item`` is the item's index in
    ``items``), turn by turn in the items' order."""
    a, ranks = team.args, team.ranks
    sampler = sampler_for(a, training=False, agent_names=[agent.name for agent in team.agents])
    mine = ranks.share(list(range(len(items))))  # the places of this rank's items
    per_turn: list[list[dict[str, float]]] = [[] for _ in range(a.num_turns)]
    rows: list[dict[str, Any]] = []
    with ranks.whole_weights(sampler.models_to_gather(team.agents)):
        for start in range(0, len(mine), batch_size):
            indices = mine[start : start + batch_size]
            batch = [items[i] for i in indices]
            turns = expand_tree(
                team.agents,
                [env_factory(item) for item in batch],
                sampler=sampler,
                joint_mode="aligned",
                protocol=a.protocol,  # one answer per agent, each after the earlier ones' where sequential
                num_turns=a.num_turns,
                early_stop_reward=a.early_stop_reward,
            )
            for t, figures in enumerate(final_figures_per_turn(turns, len(batch), a.num_turns)):
                per_turn[t].extend(figures)
            # one joint answer per item and turn: its place in a batch (node, joint) names nothing
            answers = tree_rows(turns, item_refs(batch, indices))
            rows.extend({k: v for k, v in row.items() if k not in ("node", "joint")} for row in answers)
    shares = ranks.gather((per_turn, rows))  # every item's figures and answers, in the items' order
    per_turn = [[row for share, _ in shares for row in share[t]] for t in range(a.num_turns)]
    rows = [row for _, answers in shares for row in answers]
    out: dict[str, float] = {"items": float(len(items))}
    out.update(mean_figures(per_turn[-1]))  # the team's final answers
    if a.num_turns > 1:  # what each turn of feedback adds
        for t, turn_rows in enumerate(per_turn):
            out.update({f"turn_{t + 1}/{k}": v for k, v in mean_figures(turn_rows).items()})
    return out, sorted(rows, key=lambda row: (row["turn"], row["item"]))


__all__ = ["answer_held_out", "evaluate_team"]
