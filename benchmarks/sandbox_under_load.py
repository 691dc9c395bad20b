"""Do the sandbox's verdicts depend on what else the machine is doing?

Grades honest but slow programs (a plain recursive ``fib`` and a counting loop, each sized to
``--cpu`` seconds of CPU on this machine) on a quiet machine, then while ``--busy`` processes
(default: four per core), each in a session of its own, spin on every core, and prints each
test's verdict with the CPU and wall seconds it took. Run it from the repository root:

    .venv/bin/python benchmarks/sandbox_under_load.py [--cpu 2.1] [--busy 8] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.sandbox.load import busy_processes  # noqa: E402

PROGRAM = """
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def count(steps):
    total = 0
    for _ in range(steps):
        total += 1
    return total
"""


def _fib(n: int) -> int:
    return n if n < 2 else _fib(n - 1) + _fib(n - 2)


def _count(steps: int) -> int:
    total = 0
    for _ in range(steps):
        total += 1
    return total


def _cpu_of(call) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        call()
        best = min(best, time.process_time() - start)
    return best


def sized_tests(cpu_s: float) -> list[str]:
    """Two tests, each about ``cpu_s`` seconds of CPU on this machine: fib(n) and count(steps)."""
    base_n, golden = 24, (1 + 5**0.5) / 2
    per_fib = _cpu_of(lambda: _fib(base_n))
    n = base_n + max(0, round(__import__("math").log(cpu_s / per_fib, golden)))
    per_step = _cpu_of(lambda: _count(1_000_000)) / 1_000_000
    steps = int(cpu_s / per_step)
    return [f"assert fib({n}) == {_fib(n)}", f"assert count({steps}) == {steps}"]


def grade(tests: list[str]) -> list[str]:
    from magrpo.sandbox import run_tests

    result = run_tests(PROGRAM, tests)
    lines = []
    for outcome in result.outcomes:
        cpu, wall = getattr(outcome, "cpu_s", None), getattr(outcome, "wall_s", None)
        figures = f" (cpu {cpu:.2f} s, wall {wall:.2f} s)" if cpu is not None else ""
        lines.append(f"  {outcome.test.split('==')[0].strip():<28} {outcome.status:<8} {outcome.message}{figures}")
    lines.append(f"  -> {result.passed}/{result.total} passed in {result.duration_s:.1f} s wall")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", type=float, default=2.1, help="CPU seconds each test needs on this machine")
    parser.add_argument("--busy", type=int, default=4 * (os.cpu_count() or 1), help="busy processes under load")
    parser.add_argument("--repeat", type=int, default=2, help="gradings of each kind")
    args = parser.parse_args()

    from magrpo.sandbox import SandboxLimits

    tests = sized_tests(args.cpu)
    print(f"limits: {SandboxLimits()}")
    print(f"tests: {tests}")
    for i in range(args.repeat):
        print(f"quiet #{i + 1}:", *grade(tests), sep="\n")
    with busy_processes(args.busy):
        for i in range(args.repeat):
            print(
                f"under load ({args.busy} busy processes on {os.cpu_count()} cores) #{i + 1}:", *grade(tests), sep="\n"
            )


if __name__ == "__main__":
    main()
