"""The team's held-out figures: one greedy (or ``eval_temperature``) joint answer per item, each
turn's figures averaged. Under torchrun every rank answers its share of the items."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch

from magrpo.envs.base import MultiAgentEnv
from magrpo.eval.figures import final_figures_per_turn, mean_figures
from magrpo.sampling import sampler_for
from magrpo.team import Team
from magrpo.tree import expand_tree


@torch.no_grad()
def evaluate_team(
    team: Team,
    env_factory: Callable[[Mapping[str, Any]], MultiAgentEnv],
    items: Sequence[Mapping[str, Any]],
    batch_size: int = 8,
) -> dict[str, float]:
    """``{"items": n, "reward": ..., <scorer figures>..., "turn_2/reward": ...}`` over ``items``."""
    a, ranks = team.args, team.ranks
    sampler = sampler_for(a, training=False, agent_names=[agent.name for agent in team.agents])
    mine = ranks.share(items)
    per_turn: list[list[dict[str, float]]] = [[] for _ in range(a.num_turns)]
    with ranks.whole_weights(sampler.models_to_gather(team.agents)):
        for start in range(0, len(mine), batch_size):
            envs = [env_factory(item) for item in mine[start : start + batch_size]]
            turns = expand_tree(
                team.agents,
                envs,
                sampler=sampler,
                joint_mode="aligned",
                protocol=a.protocol,  # one answer per agent, each after the earlier ones' where sequential
                num_turns=a.num_turns,
                early_stop_reward=a.early_stop_reward,
            )
            for t, figures in enumerate(final_figures_per_turn(turns, len(envs), a.num_turns)):
                per_turn[t].extend(figures)
    shares = ranks.gather(per_turn)  # every item's figures, in the items' order
    per_turn = [[row for share in shares for row in share[t]] for t in range(a.num_turns)]
    out: dict[str, float] = {"items": float(len(items))}
    out.update(mean_figures(per_turn[-1]))  # the team's final answers
    if a.num_turns > 1:  # what each turn of feedback adds
        for t, rows in enumerate(per_turn):
            out.update({f"turn_{t + 1}/{k}": v for k, v in mean_figures(rows).items()})
    return out


__all__ = ["evaluate_team"]
