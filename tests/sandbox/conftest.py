"""Shared fixtures: every hostile program must leave the machine exactly as it found it."""

from __future__ import annotations

import os
import tempfile
import time

import pytest

from magrpo.sandbox import run_tests

# Small limits keep the suite fast on a 2-core machine; each test states what it overrides. The
# wall-clock backstops are five times the CPU limits, as the defaults' are.
FAST = dict(cpu_time_s=4.0, test_cpu_time_s=1.0, timeout_s=20.0, test_timeout_s=5.0, memory_bytes=512 << 20)
#: FAST with a short wall-clock backstop per test, for tests that sleep or block
SHORT_WALL = {**FAST, "test_timeout_s": 1.0}


def processes_matching(needle: str) -> list[int]:
    """Pids whose command line contains ``needle`` (a plain /proc scan, no psutil)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle.encode() in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


#: the sandbox's own names: its work folders (magrpo-sandbox-*) and what the hostile tests try to write
OUR_NAMES = ("magrpo-sandbox-", "magrpo_sandbox_")
#: run uids start here (1_000_000 + the loader's host pid): a file owned by one was written by a program
RUN_UID_BASE = 1_000_000


def _left_by_the_sandbox(path: str, before: set[str]) -> set[str]:
    """New entries of ``path`` that the code under test made: named like the sandbox's own, or
    owned by a sandbox run uid. Other processes of the machine (a pip install, another test run)
    may create files in /tmp meanwhile; they are not this test's business."""
    try:
        names = set(os.listdir(path)) - before
    except OSError:
        return set()
    found = set()
    for name in names:
        try:
            owner = os.lstat(os.path.join(path, name)).st_uid
        except OSError:
            continue  # already gone
        if name.startswith(OUR_NAMES) or owner >= RUN_UID_BASE:
            found.add(name)
    return found


def _listing(path: str) -> set[str]:
    try:
        return set(os.listdir(path))
    except OSError:
        return set()


@pytest.fixture(scope="session")
def tier() -> str:
    """Isolation tier this machine gives (tests of kernel-level guarantees need "namespaces")."""
    return run_tests("", ["assert True"]).isolation


@pytest.fixture
def strong(tier: str) -> None:
    if tier != "namespaces":
        pytest.skip(f"needs root namespaces; this machine gives {tier!r}")


@pytest.fixture(autouse=True)
def machine_unharmed():
    """After each test: no sandbox process alive, nothing the sandbox made left in /tmp or $HOME, parent alive."""
    tmp, home = tempfile.gettempdir(), os.path.expanduser("~")
    before_tmp, before_home = _listing(tmp), _listing(home)
    parent = os.getppid()
    yield
    for _ in range(50):  # the kernel may still be tearing a namespace down
        if not processes_matching("sandbox/_child.py"):
            break
        time.sleep(0.02)
    assert processes_matching("sandbox/_child.py") == []
    assert processes_matching("MAGRPO_HOSTILE_MARKER") == []
    assert _left_by_the_sandbox(tmp, before_tmp) == set()
    assert _left_by_the_sandbox(home, before_home) == set()
    assert os.getppid() == parent
    os.kill(parent, 0)  # raises if our parent was killed
