"""Samples a person can read: one row per joint action of a rollout tree, with the item it
answers, what each agent was shown (chat messages, not the rendered template), what each wrote,
the joint reward and the scorer's other figures (each reward level, tests passed, ...), and for
a training step the return and each agent's advantage.

A row (samples.jsonl adds its ``step``; eval_before_samples.jsonl and eval_after_samples.jsonl
hold the held-out answers, one per item and turn, without node, joint, return and advantages)::

    {"turn": 1, "node": 0, "joint": 2, "item": 17, "item_id": "HumanEval/3",
     "prompts": [[{"role": "user", "content": "..."}], ...], "completions": ["...", "..."],
     "reward": 1.5, "figures": {"level_defined": 1.0, ...}, "return": 1.5, "advantages": [0.4, -0.1]}
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from magrpo.eval.figures import numeric_figures
from magrpo.tree import Turn
from magrpo.types import Observation

#: columns that name an item for good (the index moves when a data set is filtered or shuffled)
ID_COLUMNS = ("id", "task_id", "item_id")


def as_messages(observation: Observation) -> list[dict[str, str]]:
    """An observation as the chat messages an agent renders: a text is one user message."""
    if isinstance(observation, str):
        return [{"role": "user", "content": observation}]
    return [dict(message) for message in observation]


def item_refs(items: Sequence[Mapping[str, Any]], indices: Sequence[int | None]) -> list[dict[str, Any]]:
    """For each item of a batch: ``{"item": its index in its data set (None: not known),
    "item_id": its own id column, where it has one}``."""
    refs = []
    for item, index in zip(items, indices):
        ref: dict[str, Any] = {"item": index}
        stable = next((item[column] for column in ID_COLUMNS if column in item), None)
        if isinstance(stable, (str, int)):
            ref["item_id"] = stable
        refs.append(ref)
    return refs


def node_roots(turns: Sequence[Turn]) -> list[list[int]]:
    """Per turn, per node: the batch position of the item the node answers (turn 1's node p is
    item p; a later node continues its parent's)."""
    roots: list[list[int]] = []
    for turn in turns:
        if not roots:
            roots.append(list(range(turn.num_nodes)))
        else:
            roots.append([roots[-1][parent] for parent, _ in turn.parents or []])
    return roots


def tree_rows(
    turns: Sequence[Turn],
    refs: Sequence[Mapping[str, Any]] | None = None,
    returns: Sequence[torch.Tensor] | None = None,
    advantages: Sequence[Sequence[torch.Tensor]] | None = None,
) -> list[dict[str, Any]]:
    """One row per joint action of every node of every turn (see the module's docstring).
    ``refs``: per batch position, what names its item (:func:`item_refs`; None: not known);
    ``returns`` (per turn ``[P, J]``) and ``advantages`` (per agent, per turn ``[P * G]``) where
    the tree was learnt from."""
    rows = []
    for t, (turn, roots) in enumerate(zip(turns, node_roots(turns))):
        # an agent that answers after others (protocol="sequential") saw a prompt per earlier answer
        own_prompt_per_node = [len(r.texts) == turn.num_nodes * r.num_generations for r in turn.rollouts]
        for p in range(turn.num_nodes):
            ref = dict(refs[roots[p]]) if refs is not None else {"item": None}
            for j in range(turn.num_joint):
                row: dict[str, Any] = {"turn": turn.index + 1, "node": p, "joint": j, **ref}
                rows_of = turn.joint_rows(p, j)  # each agent's rollout row in joint action j
                row["prompts"] = [
                    as_messages(
                        turn.observations[i][p]
                        if turn.observations and own_prompt_per_node[i]
                        else r.prompts[rows_of[i] // r.num_generations]
                    )
                    for i, r in enumerate(turn.rollouts)
                ]
                row["completions"] = list(turn.joint_completions(p, j))
                row["reward"] = float(turn.rewards[p, j])
                row["figures"] = {k: v for k, v in numeric_figures(turn.results[p][j]).items() if k != "reward"}
                if returns is not None:
                    row["return"] = float(returns[t][p, j])
                if advantages is not None:
                    row["advantages"] = [float(per_agent[t][r]) for per_agent, r in zip(advantages, rows_of)]
                rows.append(row)
    return rows


def merge_shares(parts: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """The rows of every data-parallel rank's share of a step (in rank order) as one process with
    the whole batch gives them: each rank's nodes numbered after the earlier ranks' of the same
    turn, turn by turn."""
    rows, offset = [], {}
    for part in parts:
        counts: dict[int, int] = {}
        for row in part:
            rows.append({**row, "node": row["node"] + offset.get(row["turn"], 0)})
            counts[row["turn"]] = max(counts.get(row["turn"], 0), row["node"] + 1)
        for turn, count in counts.items():
            offset[turn] = offset.get(turn, 0) + count
    return sorted(rows, key=lambda row: (row["turn"], row["node"], row["joint"]))


def item_label(row: Mapping[str, Any]) -> str:
    """``17 (HumanEval/3)``: the item's index, and its own id where it has one."""
    stable = f" ({row['item_id']})" if row.get("item_id") is not None else ""
    return f"{row.get('item')}{stable}"


def advantages_text(row: Mapping[str, Any]) -> str:
    return " / ".join(f"{a:+.3f}" for a in row.get("advantages", []))


def completions_table(rows: Sequence[Mapping[str, Any]], step: int, limit: int | None = None) -> Any:
    """A step's samples as a rich table, TRL's log_completions: per joint action its item and
    turn, each agent's completion, the joint reward and each agent's advantage; the first
    ``limit`` rows (None: all)."""
    from rich.table import Table

    shown = list(rows)[:limit] if limit is not None else list(rows)
    table = Table(title=f"step {step}: {len(shown)} of {len(rows)} joint actions", show_lines=True)
    table.add_column("item")
    table.add_column("turn", justify="right")
    for i in range(len(rows[0]["completions"]) if rows else 0):
        table.add_column(f"agent_{i}", overflow="fold")
    table.add_column("joint reward", justify="right")
    table.add_column("advantages", justify="right")
    for row in shown:
        table.add_row(
            item_label(row), str(row["turn"]), *row["completions"], f"{row['reward']:+.3f}", advantages_text(row)
        )
    return table


def samples_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """A step's samples as Markdown (TensorBoard's text): a heading line per joint action, each
    agent's completion in a code block (its line breaks and characters kept)."""
    parts = []
    for row in rows:
        head = f"**item {item_label(row)}, turn {row['turn']}, joint action {row['joint']}**: "
        head += f"joint reward {row['reward']:+.3f}"
        if "advantages" in row:
            head += f", advantages {advantages_text(row)}"
        parts.append(head)
        for i, completion in enumerate(row["completions"]):
            block = "\n".join("    " + line for line in (completion.splitlines() or [""]))
            parts.append(f"agent_{i}:\n\n{block}")
    return "\n\n".join(parts)


__all__ = [
    "ID_COLUMNS",
    "as_messages",
    "completions_table",
    "item_label",
    "item_refs",
    "merge_shares",
    "node_roots",
    "samples_markdown",
    "tree_rows",
]
