"""Built-in tasks, by name. Each factory imports its data packages only when called."""

from __future__ import annotations

from typing import Callable

from magrpo.tasks.base import Task, columns_of


def _coding() -> Task:
    from magrpo.tasks.coding import coding_task

    return coding_task()


def _coding_paper() -> Task:
    from magrpo.tasks.coding import paper_coding_task

    return paper_coding_task()


def _summarize() -> Task:
    from magrpo.tasks.writing import summarize_task

    return summarize_task()


def _expand() -> Task:
    from magrpo.tasks.writing import expand_task

    return expand_task()


#: name -> (one-line description, factory)
TASKS: dict[str, tuple[str, Callable[[], Task]]] = {
    "coding": ("HumanEval, helper + main function (2 agents)", _coding),
    "summarize": ("ACL papers: TL;DR + detailed summary of an introduction (2 agents)", _summarize),
    "expand": ("ACL papers: background + methods halves of an introduction from an abstract (2 agents)", _expand),
    "coding-paper": ("HumanEval with the paper's own reward (max 4) and prompts (2 agents)", _coding_paper),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name][1]()


__all__ = ["TASKS", "Task", "columns_of", "get_task"]
