"""How several reward functions make the reward a team learns from (TRL's
``multi_objective_aggregation``): ``"sum_then_normalize"``, the weighted sum (each joint
action's ``reward``), or ``"normalize_then_sum"`` (GDPO, arXiv:2601.05242): each function's values
first normalised over the joint actions of their node (the group), z = (v - mean) / (std + 1e-4)
with the unbiased std, then the weighted sum of the z. The logged rewards stay the weighted sums."""

from __future__ import annotations

from typing import Any, Sequence

import torch

#: TRL's epsilon in the group normalisation
EPSILON = 1e-4


def normalize_then_sum(results: Sequence[Sequence[Any]], parts: Sequence[tuple[str, float]]) -> torch.Tensor:
    """``[P, J]``: per node p and joint action j of one turn (``results[p][j]``, a StepResult whose
    first agent's info row holds each function's value as ``reward/NAME``), the weighted sum over
    ``parts`` (name, weight) of the values normalised over the node's J joint actions."""
    values = torch.tensor(
        [[[_info(result)[f"reward/{name}"] for name, _ in parts] for result in node] for node in results],
        dtype=torch.float64,
    )  # [P, J, K]
    mean = values.mean(dim=1, keepdim=True)
    std = values.std(dim=1, keepdim=True) if values.shape[1] > 1 else torch.zeros_like(mean)
    weights = torch.tensor([weight for _, weight in parts], dtype=torch.float64)
    return ((values - mean) / (std + EPSILON) * weights).sum(dim=-1)


def _info(result: Any) -> dict[str, Any]:
    return next(iter(result.infos.values()))


__all__ = ["EPSILON", "normalize_then_sum"]
