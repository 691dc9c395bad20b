"""What a built-in task bundles: its data, one formatter per agent and a scorer.

A scorer does the work of the joint reward once and returns, for each joint action, a dict of
figures with at least ``"reward"``; the other keys (tests passed, ROUGE, each reward level) are
averaged by ``magrpo eval``. ``Task.reward_func`` exposes the plain reward-function view.
"""

from __future__ import annotations

import dataclasses
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
    #: protocol="sequential": how agent k is shown the answers of the agents before it in its joint
    #: action, ``(their answers in order, item) -> text`` added to its prompt (None: each answer
    #: under its agent's name)
    show_earlier_answers: Callable[[Sequence[str], Mapping[str, Any]], str] | None = None
    #: the roles that may pass (answer with an empty part), each with the task that scores a pass
    #: by the task's rule (:meth:`allowing_pass`); a role not named may not pass
    pass_rules: dict[str, Callable[[], "Task"]] = field(default_factory=dict)

    def allowing_pass(self, roles: Sequence[str]) -> "Task":
        """This task with the agents of ``roles`` allowed to pass, each scored by the task's rule
        for a pass. A role the task has no rule for is refused by name."""
        task = self
        for role in roles:
            if role not in self.agent_roles:
                raise ValueError(f"--allow-pass {role!r}: task {self.name!r} has the roles {list(self.agent_roles)}")
            if role not in self.pass_rules:
                allowed = sorted(self.pass_rules) or "none"
                raise ValueError(
                    f"--allow-pass {role!r}: task {self.name!r} has no rule for scoring a pass by its {role}; "
                    f"roles that may pass: {allowed}"
                )
            task = task.pass_rules[role]()
        return task

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

    def centralised(self) -> "Task":
        """Centralised MAGRPO's task: one policy writes the whole joint answer (the ``single``
        set-up's prompt), its reply is cut into the agents' parts and scored as the team's, with
        the team's new tokens per joint answer (the agents' budgets summed)."""
        if self.single_agent_formatter is None or self.split_single_answer is None:
            raise ValueError(f"task {self.name!r} has no single-model prompt to train one policy on")
        from magrpo.config import MAGRPOConfig

        default = MAGRPOConfig.__dataclass_fields__["max_new_tokens"].default
        budget = self.config_overrides.get("max_new_tokens", default)
        whole = sum(budget) if isinstance(budget, list) else budget * self.num_agents
        return dataclasses.replace(
            self,
            name=self.name + CENTRALISED,
            description=f"{self.description}, written whole by one model",
            agent_roles=("the whole answer",),
            formatters=[self.single_agent_formatter],
            scorer=whole_answer_scorer(self),
            config_overrides={**self.config_overrides, "max_new_tokens": whole},
            # the task's own feedback reads the agents' parts: a centralised run revises after a reviewer
            execution_feedback=None,
            single_agent_formatter=None,
            split_single_answer=None,
            show_earlier_answers=None,  # one policy: no earlier agent to see
            pass_rules={},
        )


#: the suffix of a task's centralised form (``summarize-centralised``: :meth:`Task.centralised`)
CENTRALISED = "-centralised"


def whole_answer_scorer(task: Task) -> Scorer:
    """``task``'s scorer for one model writing the whole answer: its reply cut into the parts."""

    def score(*, completions, prompts, **columns):
        items = [dict(zip(columns, values)) for values in zip(*columns.values())]
        # one agent: its completion as a string, or as an assistant message after a chat prompt
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        joint = [task.split_single_answer(text, item) for text, item in zip(texts, items)]
        return task.scorer(completions=joint, prompts=prompts, **columns)

    return score


__all__ = ["CENTRALISED", "Scorer", "Task", "columns_of", "whole_answer_scorer"]
