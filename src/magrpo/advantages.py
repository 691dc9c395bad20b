"""Group-relative advantages: no critic, the G siblings of a joint action are its baseline.

Shapes: ``rewards[..., G]`` holds the joint rewards of the G joint actions of one group (one
dataset item, or one node of a multi-turn tree) on its last axis.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

#: a group whose rewards spread less than this has no signal: its advantages are exactly zero
STD_EPS = 1e-6


def group_advantages(rewards: torch.Tensor, scaling: str = "none", baseline: str = "mean") -> torch.Tensor:
    """A^g = R^g - b^g, optionally divided by the group's standard deviation. The baseline b^g:

    - ``mean``: the group mean (MAGRPO, GRPO);
    - ``loo``: the mean of the other G - 1 members (RLOO; b^g does not depend on R^g), computed as
      G / (G - 1) * (R^g - mean), the same number, exactly 0 for a group without spread;
    - ``max``: the group's best reward (every advantage <= 0: only the best goes unpunished);
    - ``none``: 0, raw returns (REINFORCE without a baseline).

    The standard deviation is the unbiased one (divisor G - 1), as in TRL. A group whose rewards
    are all equal gets advantage 0 under ``std`` scaling (never NaN), and under ``none`` scaling
    with every baseline but ``none`` (raw returns keep their value).
    """
    if rewards.shape[-1] < 2:
        raise ValueError(f"a group needs at least 2 members for a baseline; got {rewards.shape[-1]}")
    rewards = rewards.to(torch.float64)
    if baseline == "max":
        centred = rewards - rewards.amax(dim=-1, keepdim=True)
    elif baseline == "none":
        centred = rewards.clone()
    else:
        centred = rewards - rewards.mean(dim=-1, keepdim=True)
        if baseline == "loo":
            centred = centred * (rewards.shape[-1] / (rewards.shape[-1] - 1))
    if scaling == "none":
        return centred
    std = rewards.std(dim=-1, keepdim=True)
    flat = std <= STD_EPS
    return torch.where(flat, torch.zeros_like(centred), centred / torch.where(flat, torch.ones_like(std), std))


def cross_joint_indices(num_generations: int, num_agents: int) -> torch.Tensor:
    """All G**N joint actions of cross mode, as a [G**N, N] tensor of completion indices.

    Row j pairs completion ``idx[j, i]`` of agent i; agent 0 varies slowest (row-major order),
    so ``rewards.view(G, ..., G)`` has agent i on axis i.
    """
    grids = torch.meshgrid(*[torch.arange(num_generations)] * num_agents, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], dim=-1)


def cross_completion_returns(
    rewards: torch.Tensor, agent: int, num_agents: int, aggregation: str = "mean"
) -> torch.Tensor:
    """Return of each of ``agent``'s G completions in cross mode.

    ``rewards[..., G**N]`` holds one group's joint rewards in :func:`cross_joint_indices` order.
    Completion g of agent i took part in the G**(N-1) joint actions whose i-th index is g; its
    return is the mean (or max) of their rewards. Result: ``[..., G]``.
    """
    total = rewards.shape[-1]
    g = round(total ** (1.0 / num_agents))
    if g**num_agents != total:
        raise ValueError(f"{total} joint rewards is not G**{num_agents} for any G")
    grid = rewards.reshape(*rewards.shape[:-1], *([g] * num_agents))
    lead = rewards.dim() - 1
    other_axes = [lead + a for a in range(num_agents) if a != agent]
    if not other_axes:
        return grid
    if aggregation == "mean":
        return grid.mean(dim=other_axes)
    return grid.amax(dim=other_axes)


def contextual_advantages(
    returns: torch.Tensor,
    *,
    completions_per_node: int,
    context_size: int,
    scaling: str = "none",
    baseline: str = "mean",
    aggregation: str = "mean",
) -> torch.Tensor:
    """Advantages of one agent's completions at one turn of a sequential tree, ``[P * C]`` (row
    p * C + c), from the node's joint returns ``[P, J]``.

    Each of the agent's C completions of a node is valued by the joint actions that continue it
    (the later agents' answers to it: J / C contiguous joint actions), their mean (or max) return.
    The values are then centred over groups of ``context_size`` consecutive completions, the
    alternatives that share one context: ``context_size = C`` is the node's whole group (MAGRPO's
    group credit); the completions that continue the same earlier answers, with
    ``baseline="loo"``, are C3's counterfactual credit: A = V(a) - mean of the other K - 1
    alternatives' V, each V the mean over the alternative's own continuations.
    """
    P, J = returns.shape
    if J % completions_per_node or completions_per_node % context_size:
        raise ValueError(
            f"{J} joint actions per node do not continue {completions_per_node} completions in contexts of "
            f"{context_size}"
        )
    continued = returns.to(torch.float64).reshape(P, completions_per_node, J // completions_per_node)
    values = continued.mean(dim=-1) if aggregation == "mean" else continued.amax(dim=-1)
    contexts = values.reshape(P, completions_per_node // context_size, context_size)
    return group_advantages(contexts, scaling, baseline).reshape(-1)


def tree_returns(
    rewards: Sequence[torch.Tensor],
    children: Sequence[Mapping[tuple[int, int], int]],
    gamma: float,
    *,
    solved: Sequence[torch.Tensor] | None = None,
    num_turns: int | None = None,
    dropped: Sequence[torch.Tensor | None] | None = None,
    values: Sequence[torch.Tensor] | None = None,
    lam: float = 1.0,
) -> list[torch.Tensor]:
    """Discounted returns of every joint action of a rollout tree.

    ``rewards[t]`` is ``[P_t, J]``: the reward of joint action j of node p at turn t (0-based).
    ``children[t]`` maps (p, j) to the node of turn t + 1 it continues: its return is
    reward + gamma * mean(returns of the child node's J joint actions). A joint action that was
    not continued is a leaf. A leaf that reached its goal (``solved[t][p, j]``: the environment
    terminated it, or early_stop_reward) is absorbing: it keeps earning its reward for each of
    the ``num_turns - 1 - t`` turns it skips, so its return is reward * sum_{k=0}^{num_turns-1-t}
    gamma^k and solving early is never worth less than solving later. Any other leaf (the last
    turn, a truncation) returns its reward.

    ``dropped[t][p, j]``: an open branch that best-k did not continue. Its future was never
    sampled, so it takes its continued siblings' mean future: reward + gamma * (the mean, over the
    siblings that continued, of their child nodes' mean return). Every sibling of a node is then
    valued over the same horizon, so a kept branch is not preferred for having more turns in its
    return: with the mean baseline, siblings with equal rewards get equal returns and zero
    advantage, and the turn's advantages are the differences of its rewards (the continued
    branches' own turns are credited at their own nodes).

    ``values[t]`` (``[P_t]``, a critic's value of each node) with ``lam`` < 1 makes these the
    TD(lambda) returns of actor-critic methods: a continued joint action's future is
    (1 - lam) * V(child) + lam * mean(returns of the child's joint actions); lam = 1 (or no
    values) is the Monte-Carlo return above, lam = 0 the one-step TD target r + gamma * V(child).
    """
    if solved is not None and num_turns is None:
        raise ValueError("tree_returns: solved needs num_turns (the turns a solved branch skips)")
    returns: list[torch.Tensor] = [torch.empty(0)] * len(rewards)
    for t in reversed(range(len(rewards))):
        ret = rewards[t].to(torch.float64).clone()
        if solved is not None:
            skipped = num_turns - 1 - t
            carry = sum(gamma**k for k in range(skipped + 1))
            ret = torch.where(solved[t], ret * carry, ret)
        if t + 1 < len(rewards):
            futures: dict[int, list[torch.Tensor]] = {}
            for (p, j), child in children[t].items():
                future = returns[t + 1][child].mean()
                if values is not None and lam < 1.0:
                    future = (1.0 - lam) * values[t + 1][child].to(torch.float64) + lam * future
                ret[p, j] += gamma * future
                futures.setdefault(p, []).append(future)
            if dropped is not None and dropped[t] is not None:
                for p, j in dropped[t].nonzero().tolist():
                    if p in futures:  # a node with no continued sibling has no future to share
                        ret[p, j] += gamma * torch.stack(futures[p]).mean()
        returns[t] = ret
    return returns


def agent_advantages(
    returns: torch.Tensor,
    *,
    agent: int,
    num_agents: int,
    joint_mode: str,
    scaling: str = "none",
    cross_aggregation: str = "mean",
    baseline: str = "mean",
) -> torch.Tensor:
    """Advantages of one agent's completions at one turn, flattened to ``[P * G]`` (row p * G + g).

    ``returns`` is ``[P, J]`` for P nodes. Aligned: joint action g holds completion g of every
    agent, so every agent's completion g gets the advantage of joint action g. Cross: completion
    g's return is aggregated over the joint actions it took part in, then centred over the G
    completions of the same agent at the same node.
    """
    if joint_mode == "aligned":
        per_completion = returns
    else:
        per_completion = cross_completion_returns(returns, agent, num_agents, cross_aggregation)
    return group_advantages(per_completion, scaling, baseline).reshape(-1)
