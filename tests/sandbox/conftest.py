"""Shared fixtures: every hostile program must leave the machine exactly as it found it."""
from __future__ import annotations

import os
import tempfile
import time

import pytest

from magrpo.sandbox import run_tests

# Small limits keep the suite fast on a 2-core machine; each test states what it overrides.
FAST = dict(timeout_s=4.0, test_timeout_s=1.0, memory_bytes=512 << 20)


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


def _listing(path: str) -> set[str]:
    try:
        return {n for n in os.listdir(path) if not n.startswith("pytest-of-")}  # pytest's own tmp_path root
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
    """After each test: no sandbox process alive, no file left in /tmp or $HOME, parent alive."""
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
    assert _listing(tmp) - before_tmp == set()
    assert _listing(home) - before_home == set()
    assert os.getppid() == parent
    os.kill(parent, 0)  # raises if our parent was killed
