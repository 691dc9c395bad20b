"""From evaluated rollout trees to figures: each item's figures after every turn, and their means."""

from __future__ import annotations

from magrpo.tree import Turn


def final_figures_per_turn(turns: list[Turn], num_items: int, num_turns: int) -> list[list[dict[str, float]]]:
    """Per turn, each item's figures as they stand after that turn (one joint action per node: a
    chain that ended earlier carries its last figures forward, so every turn averages over every
    item). Figures are the joint reward and every numeric value of the step's infos."""
    current: list[dict[str, float]] = [{} for _ in range(num_items)]
    root_of = list(range(num_items))
    out = []
    for t in range(num_turns):
        if t < len(turns):
            turn = turns[t]
            for node in range(turn.num_nodes):
                result = turn.results[node][0]
                current[root_of[node]] = {"reward": float(result.joint_reward), **numeric_figures(result)}
            if t + 1 < len(turns):
                root_of = [root_of[p] for (p, _j) in turns[t + 1].parents or []]
        out.append([dict(c) for c in current])
    return out


def numeric_figures(result) -> dict[str, float]:
    """The numeric values of a step result's infos (every agent gets the same: the first's)."""
    info = next(iter(result.infos.values()), {})
    return {k: float(v) for k, v in info.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def mean_figures(rows: list[dict[str, float]]) -> dict[str, float]:
    """The mean of each figure over the rows that have it, in first-seen order."""
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    return {k: sum(r[k] for r in rows if k in r) / max(1, sum(1 for r in rows if k in r)) for k in keys}


__all__ = ["final_figures_per_turn", "mean_figures", "numeric_figures"]
