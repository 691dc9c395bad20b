"""Warnings before a silent waste: steps that give no agent anything to learn from.

A step whose every group (the G joint actions of one node) tied on the joint reward has all its
advantages exactly 0 (the group's baseline), so no agent updates: a run of such steps trains
nothing and shows only a flat curve. The first such step is said at once; after ``patience`` in a
row, the likely causes are named with one joint action of the step and the reward it got. The
commonest: a reward function written for one model (TRL's ``[-abs(20 - len(c)) for c in
completions]``) given a team's joint actions, which are tuples of N completions: ``len`` of a
tuple is N, for every joint action.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from magrpo.ranks import OneProcess
    from magrpo.step import StepOutput

#: steps in a row without a signal before the causes are named
PATIENCE = 3


class SignalWatch:
    """Counts the steps without a learning signal and says so (rank 0 says it; every rank counts)."""

    def __init__(self, ranks: OneProcess, patience: int = PATIENCE) -> None:
        self.ranks, self.patience = ranks, patience
        self.silent_steps = 0  # in a row
        self.total = 0
        self.explained = False

    def observe(self, out: StepOutput, step: int) -> None:
        """After step ``step`` (1-based): warn where it had no signal on any rank."""
        mine = any(bool((adv != 0).any()) for per_agent in out.advantages for adv in per_agent)
        # a step in which the agents wait by design (MARLHF's reward model learns) is no waste
        waits = bool(getattr(out.baseline_training, "agents_wait", False))
        if self.ranks.any(mine or waits):  # one collective on every rank
            self.silent_steps = 0
            return
        self.silent_steps += 1
        self.total += 1
        if not self.ranks.is_main:
            return
        if self.total == 1:
            warnings.warn(
                f"step {step}: every group's joint actions got the same joint reward (first turn: "
                f"{_rewards_seen(out)}), so every advantage is 0 and no agent learns from this step",
                RuntimeWarning,
                stacklevel=3,
            )
        if self.silent_steps >= self.patience and not self.explained:
            self.explained = True
            warnings.warn(
                f"{self.silent_steps} steps in a row ({step - self.silent_steps + 1}-{step}) gave no agent a learning "
                f"signal ({self.total} so far): the joint reward never varied within a group. {_example(out)} "
                "Likely causes: a reward that does not depend on the completions (a team's reward function gets one "
                "tuple of N completions per joint action: len() of it is N for every one; write it as "
                "[f(c0, c1) for c0, c1 in completions]); a task too hard or too easy for the model at this "
                "max_new_tokens (every answer scores the same); num_generations too small to see a difference",
                RuntimeWarning,
                stacklevel=3,
            )


def _rewards_seen(out: StepOutput) -> str:
    first = out.turns[0].rewards
    values = sorted({round(float(r), 6) for r in first.flatten()})
    return "rewards " + ", ".join(f"{v:g}" for v in values[:5]) + (" ..." if len(values) > 5 else "")


def _example(out: StepOutput) -> str:
    turn = out.turns[0]
    joint = turn.joint_completions(0, 0)
    shown = tuple(text if len(text) <= 60 else text[:57] + "..." for text in joint)
    return f"One joint action of this step: {shown!r} got {float(turn.rewards[0, 0]):g}."


__all__ = ["PATIENCE", "SignalWatch"]
