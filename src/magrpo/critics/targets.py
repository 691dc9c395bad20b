"""What a critic is trained toward and what it gives the actor (IAC, MAAC): turn-level values.

A critic values each node of the rollout tree: the observation an agent (IAC: its own history)
or the team (MAAC: every agent's history) faces at a turn. Each of the node's J joint actions
has a return (:func:`magrpo.advantages.tree_returns`: Monte-Carlo, or TD(lambda) with the
critic's values of the child nodes); that return is both the critic's regression target and,
less the node's value, the actor's advantage. No group is needed: J = G = 1 works.

A Q critic values each joint action of a node instead (the observation and the action taken),
toward that joint action's return. Its advantage is Q(s, a_j) less the mean Q of the node's J
sampled joint actions (the on-policy estimate of V(s)): a baseline that does not depend on the
action, so J >= 2. (R - Q(s, a), as CoMLRL's Q critics take it, has a baseline that depends on
the action: as Q learns, its expected gradient goes to zero.)
"""

from __future__ import annotations

import torch

#: a batch whose advantages spread less than this is not rescaled by normalisation
NORMALISE_EPS = 1e-8


def critic_advantages(returns: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """A = R - V for every joint action of one turn, flattened to ``[P * J]`` (row p * J + j, the
    order of the turn's completions). ``returns``: ``[P, J]``; ``values``: ``[P]`` or ``[P, 1]``
    (one per node) or ``[P, J]`` (one per joint action's context: an agent that answered after
    others), taken as constants (the actor's loss does not train the critic)."""
    shaped = values[:, None] if values.dim() == 1 else values
    if shaped.dim() != 2 or shaped.shape[0] != returns.shape[0] or shaped.shape[1] not in (1, returns.shape[1]):
        raise ValueError(f"values of shape {tuple(values.shape)} for returns of shape {tuple(returns.shape)}")
    return (returns.to(torch.float64) - shaped.detach().to(torch.float64)).reshape(-1)


def q_advantages(q_values: torch.Tensor) -> torch.Tensor:
    """A = Q(s, a_j) - mean_j' Q(s, a_j') for every joint action of one turn, flattened to
    ``[P * J]`` (row p * J + j). ``q_values``: ``[P, J]``, taken as constants."""
    if q_values.dim() != 2 or q_values.shape[1] < 2:
        raise ValueError(f"Q values of shape {tuple(q_values.shape)}: a Q baseline needs [P, J] with J >= 2")
    q = q_values.detach().to(torch.float64)
    return (q - q.mean(dim=1, keepdim=True)).reshape(-1)


def normalise_advantages(advantages: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """(A - mean) / std (the unbiased std), as PPO implementations do, with the mean and std of
    ``reference`` (the whole batch, every rank's share; default: ``advantages`` themselves); a
    batch of one, or without spread, is only centred."""
    reference = advantages if reference is None else reference
    centred = advantages - reference.mean()
    if reference.numel() < 2:
        return centred
    std = reference.std()
    return centred / std if std > NORMALISE_EPS else centred


def value_targets(returns: torch.Tensor) -> torch.Tensor:
    """``[P, J]`` returns as ``[P * J]`` targets of the node values repeated J times (row p * J + j):
    the squared error against each joint action's return, whose mean the minimiser is."""
    return returns.to(torch.float64).reshape(-1)


def value_loss(
    values: torch.Tensor,
    targets: torch.Tensor,
    old_values: torch.Tensor | None = None,
    clip: float | None = None,
) -> torch.Tensor:
    """0.5 * mean((V - target)^2). With ``clip`` and the values before this update
    (``old_values``), PPO's clipped value loss: 0.5 * mean(max((V - t)^2, (V_clipped - t)^2)) with
    V_clipped = V_old + clamp(V - V_old, -clip, clip), which keeps the critic near the values
    the advantages were computed with over several updates of one rollout."""
    targets = targets.to(values.dtype)
    squared = (values - targets) ** 2
    if clip is not None:
        if old_values is None:
            raise ValueError("a clipped value loss needs old_values (the values before this update)")
        old = old_values.detach().to(values.dtype)
        clipped = old + torch.clamp(values - old, -clip, clip)
        squared = torch.maximum(squared, (clipped - targets) ** 2)
    return 0.5 * squared.mean()


def explained_variance(values: torch.Tensor, targets: torch.Tensor) -> float:
    """1 - Var(target - V) / Var(target): 1 for a perfect critic, 0 for one that predicts the
    mean, negative for one worse than that; NaN where the targets do not vary."""
    values, targets = values.detach().to(torch.float64).reshape(-1), targets.detach().to(torch.float64).reshape(-1)
    spread = targets.var(unbiased=False)
    if spread <= 0:
        return float("nan")
    return float(1.0 - (targets - values).var(unbiased=False) / spread)


__all__ = [
    "critic_advantages",
    "explained_variance",
    "normalise_advantages",
    "q_advantages",
    "value_loss",
    "value_targets",
]
