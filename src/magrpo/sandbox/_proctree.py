"""CPU time of a process tree, read from /proc (Linux; standard library only).

Loaded by path in the sandbox child before the program runs (like ``_isolation.py``), and
imported by the parent: both measure a tree of processes whose members may fork, exit or be
re-parented while they are measured.
"""

from __future__ import annotations

import os

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# Functions the sandbox child calls after the program has loaded are bound here, as defaults, before
# it runs: a program that replaces ``os.listdir`` or ``builtins.open`` does not change what they read.


def _stat(pid: str, _open=open) -> tuple[int, float]:
    """(parent pid, CPU seconds of the process and of the children it has reaped)."""
    with _open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    # utime, stime, cutime, cstime: fields 14-17 of proc(5), a zombie's included until it is reaped
    return int(fields[1]), (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / _TICK


def process_cpu_s(pid: int | str, _stat=_stat) -> float:
    """CPU seconds of process ``pid`` (all its threads) and of the children it has reaped; 0.0
    when it is gone."""
    try:
        return _stat(str(pid))[1]
    except (OSError, IndexError, ValueError):
        return 0.0


def tree_cpu_s(root: int, include_root: bool = True, _listdir=os.listdir, _stat=_stat) -> float:
    """CPU seconds of ``root``'s descendants (and of ``root`` itself with ``include_root``), each
    with the children it has reaped, zombies included; pids as this process's /proc numbers them
    (``int(os.readlink("/proc/self"))`` is this process in them)."""
    parents: dict[int, int] = {}
    spent: dict[int, float] = {}
    for entry in _listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            parent, cpu = _stat(entry)
        except (OSError, IndexError, ValueError):  # ended meanwhile
            continue
        parents[int(entry)] = parent
        spent[int(entry)] = cpu
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    total, pending = (spent.get(root, 0.0) if include_root else 0.0), list(children.get(root, ()))
    while pending:
        pid = pending.pop()
        total += spent[pid]
        pending += children.get(pid, ())
    return total


def descendants(root: int, _listdir=os.listdir, _stat=_stat) -> list[int]:
    """The pids of ``root``'s descendants, as this process's /proc numbers them."""
    children: dict[int, list[int]] = {}
    for entry in _listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            parent = _stat(entry)[0]
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, pending = [], list(children.get(root, ()))
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending += children.get(pid, ())
    return found
