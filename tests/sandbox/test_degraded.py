"""Weaker isolation tiers still grade correctly and say so with a warning."""

from __future__ import annotations

import os
import stat
import sys

import pytest

from magrpo.sandbox import run_tests, runner

from .conftest import FAST, SHORT_WALL

CODE = "def add(a, b):\n    return a + b\n"
TESTS = ["assert add(1, 2) == 3", "assert add(1, 2) == 4", "import socket\nsocket.socket()"]


def _traversable(path: str) -> bool:
    parts = os.path.abspath(path).split(os.sep)
    return all(os.stat(os.sep.join(parts[:i]) or os.sep).st_mode & stat.S_IXOTH for i in range(2, len(parts) + 1))


@pytest.mark.parametrize("tier", ["userns", "none"])
def test_degraded_tier_grades_and_warns(tier, monkeypatch):
    monkeypatch.setenv("MAGRPO_SANDBOX_ISOLATION", tier)
    monkeypatch.setattr(runner, "_warned", set())
    with pytest.warns(RuntimeWarning, match="sandbox: "):
        r = run_tests(CODE, TESTS, **FAST)
    assert r.isolation == tier
    assert [o.status for o in r.outcomes] == ["passed", "failed", "passed" if tier == "userns" else "error"]
    if tier == "none":  # no network namespace: the audit hook refuses sockets instead
        expected = "PermissionError: [Errno 1] network access is disabled in the sandbox"
        if os.geteuid() == 0 and not _traversable(sys.base_prefix):
            # as root the program still drops to a private uid, which cannot read a stdlib under /root
            expected = "ModuleNotFoundError: No module named 'socket'"
        assert r.outcomes[2].message == expected


@pytest.mark.filterwarnings("ignore:sandbox")
def test_degraded_tier_still_times_out_and_cleans_up(monkeypatch):
    monkeypatch.setenv("MAGRPO_SANDBOX_ISOLATION", "none")
    r = run_tests("import time\n", ["time.sleep(30)", "assert True"], **SHORT_WALL)
    assert [(o.status, o.reason) for o in r.outcomes] == [("timeout", "wall"), ("passed", "")]
    r = run_tests(
        "import os\n", ["if os.fork() == 0:\n    os.setsid()\n    while True:\n        pass\nos.wait()"], **FAST
    )
    assert [(o.status, o.reason) for o in r.outcomes] == [("timeout", "cpu")]  # its orphan's CPU counted too
