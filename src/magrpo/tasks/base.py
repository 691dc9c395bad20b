"""What a built-in task bundles: its data, one formatter per agent and a scorer.

A scorer does the work of the joint reward once and returns, for each joint action, a dict of
figures with at least ``"reward"``; the other keys (tests passed, ROUGE, each reward level) are
averaged by ``magrpo eval``. ``Task.reward_func`` exposes the plain reward-function view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from magrpo.data import columns_of
from magrpo.types import Formatter, JointAction, Observation, Scorer


@dataclass
class Task:
    name: str
    description: str
    agent_roles: tuple[str, ...]
    formatters: Sequence[Formatter]
    scorer: Scorer
    #: ``load_split("train" | "eval") -> list of items (dicts)``
    load_split: Callable[[str], list[dict[str, Any]]]
    #: the dataset columns each item must carry (checked before any compute)
    required_columns: tuple[str, ...] = ()
    #: columns only some figures need (column -> those figures): without them training runs and
    #: evaluation reports every other figure
    optional_columns: dict[str, str] = field(default_factory=dict)
    #: defaults this task prefers over the generic ones (max_new_tokens, ...)
    config_overrides: dict[str, Any] = field(default_factory=dict)
    #: the column holding the task statement itself (what a reviewer reads as "the task")
    task_column: str = "prompt"
    #: multi-turn: a scored joint action that needs no further turn (e.g. all tests pass)
    is_solved: Callable[[Mapping[str, Any]], bool] | None = None
    #: multi-turn: the task's own feedback from execution, if it has one
    execution_feedback: Callable[[], Any] | None = None
    #: the highest joint reward there is (normalised return = mean reward / this), None if unbounded
    max_reward: float | None = None
    #: one prompt asking a single model for the whole joint answer (the ``single`` baseline)
    single_agent_formatter: Formatter | None = None
    #: that model's reply, cut into the agents' parts: ``(reply, item) -> joint action``
    split_single_answer: Callable[[str, Mapping[str, Any]], JointAction] | None = None

    def skipped_figures(self, items: Sequence[Mapping[str, Any]]) -> list[str]:
        """Why figures are left out for ``items``: one line per optional column that some item lacks."""
        notes = []
        for column, figures in self.optional_columns.items():
            lacking = sum(1 for item in items if item.get(column) in (None, ""))
            if lacking:
                notes.append(
                    f"{figures} skipped for {lacking} of {len(items)} items: no {column!r} column "
                    f"(map one of yours with --columns {column}=YOUR_COLUMN)"
                )
        return notes

    def with_normalised_return(self, figures: dict[str, float]) -> dict[str, float]:
        """``figures`` with ``reward_normalised`` (mean joint reward / the task's maximum, as the
        paper reports it) beside each ``reward`` figure."""
        if not self.max_reward:
            return dict(figures)
        out: dict[str, float] = {}
        for key, value in figures.items():
            out[key] = value
            if key == "reward" or key.endswith("/reward"):
                out[key + "_normalised"] = value / self.max_reward
        return out

    @property
    def num_agents(self) -> int:
        return len(self.agent_roles)

    def reward_func(
        self, *, completions: Sequence[JointAction], prompts: Sequence[tuple[Observation, ...]], **columns: Any
    ) -> list[float]:
        return [row["reward"] for row in self.scorer(completions=completions, prompts=prompts, **columns)]


__all__ = ["Scorer", "Task", "columns_of"]
