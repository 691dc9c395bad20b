"""Built-in tasks, by name. Each factory imports its data packages only when called."""

from __future__ import annotations

from typing import Callable

from magrpo.tasks.base import CENTRALISED, Task, columns_of


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


def check_task_name(name: str) -> str:
    """``name`` without its ``-centralised`` suffix, if it names a built-in task; else a
    ValueError naming the choices (nothing is loaded)."""
    base = name.removesuffix(CENTRALISED)
    if base not in TASKS:
        raise ValueError(
            f"unknown task {name!r}; choose one of {', '.join(TASKS)} (each also as NAME{CENTRALISED}: one model "
            "writes the whole answer)"
        )
    return base


def get_task(name: str) -> Task:
    """The task ``name``; ``NAME-centralised`` is task NAME written whole by one policy
    (:meth:`Task.centralised`: centralised MAGRPO)."""
    base = check_task_name(name)
    task = TASKS[base][1]()
    return task.centralised() if name != base else task


__all__ = ["CENTRALISED", "TASKS", "Task", "check_task_name", "columns_of", "get_task"]
