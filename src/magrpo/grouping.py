"""Group by identity, run once per group, put the results back in order.

A batch often holds several objects that must be served together by one shared thing (the
environments of one class, the joint actions of one scorer, the agents on one model): these two
functions are that pattern, written once."""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def group_by_identity(items: Sequence[T], key: Callable[[T], object] = lambda item: item) -> list[list[int]]:
    """The indices of ``items`` grouped by the identity (``is``) of ``key(item)``, each group in
    the items' order, the groups in the order their first members come."""
    groups: dict[int, list[int]] = {}
    keep_alive = []  # ids are only unique among live objects
    for index, item in enumerate(items):
        owner = key(item)
        keep_alive.append(owner)
        groups.setdefault(id(owner), []).append(index)
    return list(groups.values())


def distinct_by_identity(items: Sequence[T], key: Callable[[T], object] = lambda item: item) -> list[T]:
    """The first item of each group of :func:`group_by_identity`, in order."""
    return [items[indices[0]] for indices in group_by_identity(items, key)]


def run_per_group(items: Sequence[T], key: Callable[[T], object], run: Callable[[list[int]], Sequence[R]]) -> list[R]:
    """``run(indices)`` once per group of :func:`group_by_identity`, returning one result per
    index it was given; the results come back in the items' order."""
    out: list[R | None] = [None] * len(items)
    for indices in group_by_identity(items, key):
        results = list(run(indices))
        if len(results) != len(indices):
            raise ValueError(f"a group of {len(indices)} items gave {len(results)} results")
        for index, result in zip(indices, results):
            out[index] = result
    return out  # type: ignore[return-value]


__all__ = ["distinct_by_identity", "group_by_identity", "run_per_group"]
