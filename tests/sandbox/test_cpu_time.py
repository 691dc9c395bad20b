"""Time is graded by the CPU a program spends, so a verdict does not depend on what else the
machine is doing: the same on a quiet machine and while four busy processes per core, each in a
session of its own, share the cores (started and stopped by each test). A program that blocks
or sleeps is stopped by the wall-clock backstop, and each stop names its limit ("cpu", "wall").

The programs here spend an exact amount of CPU (they spin until their own CPU clock reaches it),
so only the limit is measured. The wall-clock backstops here are ten times the CPU limits (the
defaults': five times), so that the tests hold on a machine that other work already loads.
"""

from __future__ import annotations

import os

import pytest

from magrpo.sandbox import SandboxLimits, run_tests

from .load import busy_processes

#: CPU seconds per test and for the whole program, here
TEST_CPU, PROGRAM_CPU = 0.5, 1.5
LIMITS = dict(
    test_cpu_time_s=TEST_CPU, test_timeout_s=10 * TEST_CPU, cpu_time_s=PROGRAM_CPU, timeout_s=10 * PROGRAM_CPU
)
#: four busy processes per core: with the graded test, 4.5 processes want each core
BUSY = 4 * (os.cpu_count() or 1)


def spends(seconds: float) -> str:
    """A test that spends ``seconds`` of CPU (its process's CPU clock starts at the fork)."""
    return f"import time\nwhile time.process_time() < {seconds}:\n    pass"


def verdicts(result) -> list[tuple[str, str]]:
    return [(o.status, o.reason) for o in result.outcomes]


def test_the_defaults_backstops_leave_a_program_within_its_cpu_limit_its_cpu_at_four_busy_processes_per_core():
    limits = SandboxLimits()
    assert limits.test_timeout_s >= 5 * limits.test_cpu_time_s and limits.timeout_s >= 5 * limits.cpu_time_s


def test_a_test_using_70_percent_of_its_cpu_limit_passes_quietly_and_under_four_busy_processes_per_core():
    tests = [spends(0.7 * TEST_CPU)] * 2
    quiet = run_tests("", tests, **LIMITS)
    with busy_processes(BUSY, seconds=60):
        loaded = run_tests("", tests, **LIMITS)
    assert verdicts(quiet) == verdicts(loaded) == [("passed", "")] * 2
    # a wall-clock limit as large as the CPU limit would have failed both under load
    assert all(o.wall_s > TEST_CPU for o in loaded.outcomes), [o.wall_s for o in loaded.outcomes]


def test_a_test_using_130_percent_of_its_cpu_limit_fails_quietly_and_under_load_stopped_at_the_limit():
    quiet = run_tests("", [spends(1.3 * TEST_CPU), "assert True"], **LIMITS)
    with busy_processes(BUSY, seconds=60):
        loaded = run_tests("", [spends(1.3 * TEST_CPU), "assert True"], **LIMITS)
    for result in (quiet, loaded):
        assert verdicts(result) == [("timeout", "cpu"), ("passed", "")]
        assert result.outcomes[0].message == f"test used more than {TEST_CPU} s of CPU time"
        assert TEST_CPU <= result.outcomes[0].cpu_s < 1.2 * TEST_CPU  # stopped as it reached the limit
        assert result.killed_reason == "cpu"


def test_a_programs_tests_together_within_its_cpu_limit_pass_under_load_and_beyond_it_are_stopped_there():
    within = [spends(0.7 * PROGRAM_CPU / 3)] * 3  # together 70% of the program's CPU
    beyond = [spends(0.9 * TEST_CPU)] * 4  # each within its own limit, together 120% of the program's
    with busy_processes(BUSY, seconds=90):
        passed = run_tests("", within, **LIMITS)
        stopped = run_tests("", beyond, **LIMITS)
    assert verdicts(passed) == [("passed", "")] * 3
    assert passed.cpu_s < PROGRAM_CPU < passed.duration_s
    assert [o.status for o in stopped.outcomes] == ["passed"] * 3 + ["timeout"]
    assert stopped.outcomes[3].message == f"program used more than {PROGRAM_CPU} s of CPU time"
    assert stopped.killed_reason == "cpu" and PROGRAM_CPU <= stopped.cpu_s < 1.2 * PROGRAM_CPU


def test_cpu_spent_in_child_processes_threads_and_orphans_counts_toward_the_tests_limit():
    forks = "import os\nfor _ in range(3):\n    if os.fork() == 0:\n        while True:\n            pass\nos.wait()"
    orphan = (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        while True:\n"
        "            pass\n    os._exit(0)\ntime.sleep(60)"
    )
    threads = (
        "import threading, time\ndef spin():\n    while True:\n        pass\n"
        "for _ in range(3):\n    threading.Thread(target=spin, daemon=True).start()\ntime.sleep(60)"
    )
    r = run_tests("", [forks, orphan, threads], **{**LIMITS, "cpu_time_s": 8 * TEST_CPU})
    assert verdicts(r) == [("timeout", "cpu")] * 3
    assert all(TEST_CPU <= o.cpu_s < 1.5 * TEST_CPU for o in r.outcomes), [o.cpu_s for o in r.outcomes]


@pytest.mark.parametrize("where", ["test", "program"])
def test_a_sleeping_program_is_stopped_by_the_wall_clock_backstop(where):
    limits = {**LIMITS, "test_timeout_s": 1.0, "timeout_s": 1.5}
    if where == "test":
        r = run_tests("import time\n", ["time.sleep(60)", "assert True"], **limits)
        assert verdicts(r) == [("timeout", "wall"), ("passed", "")]
        assert r.outcomes[0].message.startswith("test exceeded 1.0 s wall clock, using 0.0")
        assert r.outcomes[0].cpu_s < 0.1
    else:
        r = run_tests("import time\ntime.sleep(60)\n", ["assert True"], **limits)
        assert verdicts(r) == [("timeout", "wall")]
        assert r.outcomes[0].message == "program exceeded 1.5 s wall clock"
    assert r.killed_reason == "wall"
