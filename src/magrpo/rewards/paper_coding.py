"""The paper's own coding reward (the authors' published code), for reproducing their set-up
beside ours (:mod:`magrpo.rewards.coding`, the default). Maximum 4.0; the paper's normalised
return is the reward / 4.

1. defined: +0.4 when agent 1's code defines ``aux`` with a ``return`` (optional: without it the
   scoring goes on), +0.6 when agent 2's defines the entry point with a ``return`` (required: the
   scoring stops here without it).
2. syntax: +0.5 when the combined program parses (required).
3. tests: +1.0 x the fraction of the unit tests passed (in magrpo's sandbox, strict results).
   When at least one test passes and ``aux`` is defined: +0.5 when the entry point calls ``aux``
   (read from the syntax), then +1.0 more when it is not a thin wrapper (its body only ``return
   aux(...)``), and -0.5 when a call's value is thrown away (a bare ``aux(...)`` statement).

What differs from magrpo's reward (README, "coding"): the level weights (ours: 1, 1, 3 x tests,
+0.5 / -0.5, maximum 5.5), the anti-wrapper bonus (ours has none), and how the helper's use is
read (here from the syntax alone; ours from what the sandbox saw run, with a counterfactual run).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any, Sequence

from magrpo.rewards.coding import _parse, calls_of, combine_program, extract_code, is_call_of, top_level_function
from magrpo.sandbox import SandboxLimits, TestRunResult, run_tests_many

MAXIMUM = 4.0


@dataclass
class PaperCodingScore:
    helper_defined: bool
    main_defined: bool
    parses: bool
    tests_passed: int = 0
    tests_total: int = 0
    uses_helper: bool = False
    thin_wrapper: bool = False
    discards_helper_value: bool = False
    reward: float = 0.0
    run: TestRunResult | None = None

    def figures(self) -> dict[str, float]:
        fraction = self.tests_passed / self.tests_total if self.tests_total else 0.0
        return {
            "reward": self.reward,
            "level_defined": float(self.helper_defined and self.main_defined),
            "level_parses": float(self.parses),
            "tests_passed": fraction,
            "pass@1": float(self.tests_total > 0 and self.tests_passed == self.tests_total),
            "helper_used": float(self.uses_helper),
            "thin_wrapper": float(self.thin_wrapper),
        }


def _returns(func: ast.AST | None) -> bool:
    return func is not None and any(isinstance(n, ast.Return) and n.value is not None for n in ast.walk(func))


def is_thin_wrapper(func: ast.AST, helper_name: str = "aux") -> bool:
    """The entry point's body (its docstring aside) is one ``return aux(...)``."""
    body = [s for s in func.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    return len(body) == 1 and isinstance(body[0], ast.Return) and is_call_of(body[0].value, helper_name)


def score_paper_coding_batch(
    completions: Sequence[tuple[str, str]],
    problems: Sequence[dict[str, Any]],
    limits: SandboxLimits | None = None,
    helper_name: str = "aux",
) -> list[PaperCodingScore]:
    """Score (helper, main) pairs as the paper does; ``problems[k]`` has ``prompt``, ``test`` and
    ``entry_point``. The programs that reach the tests run concurrently in the sandbox pool."""
    scores, jobs, job_of = [], [], {}
    for k, ((helper_text, main_text), problem) in enumerate(zip(completions, problems)):
        entry = problem["entry_point"]
        helper_code, main_code = extract_code(helper_text), extract_code(main_text)
        helper = top_level_function(_parse(helper_code), helper_name)
        main = top_level_function(_parse(main_code), entry)
        program = combine_program(helper_code, main_code, entry, problem.get("prompt", ""), helper_name)
        # combine_program is None where a part does not parse
        score = PaperCodingScore(_returns(helper), _returns(main), _returns(main) and program is not None)
        if score.parses:
            calls = calls_of(main, helper_name)
            score.uses_helper = bool(calls)
            score.thin_wrapper = is_thin_wrapper(main, helper_name)
            bare = {id(s.value) for s in ast.walk(main) if isinstance(s, ast.Expr)}
            score.discards_helper_value = any(id(call) in bare for call in calls)
            job_of[k] = len(jobs)
            jobs.append({"code": program, "tests": problem["test"], "entry_point": entry})
        scores.append(score)
    runs = run_tests_many(jobs, limits=limits) if jobs else []
    for k, score in enumerate(scores):
        if k in job_of:
            score.run = runs[job_of[k]]
            score.tests_passed, score.tests_total = score.run.passed, score.run.total
        score.reward = paper_reward(score)
    return scores


def paper_reward(score: PaperCodingScore) -> float:
    reward = 0.4 * score.helper_defined
    if not score.main_defined:
        return reward
    reward += 0.6
    if not score.parses:
        return reward
    reward += 0.5
    if score.tests_total:
        reward += score.tests_passed / score.tests_total
    if score.tests_passed > 0 and score.helper_defined and score.uses_helper:
        reward += 0.5
        if not score.thin_wrapper:
            reward += 1.0
        if score.discards_helper_value:
            reward -= 0.5
    return reward


__all__ = ["MAXIMUM", "PaperCodingScore", "is_thin_wrapper", "paper_reward", "score_paper_coding_batch"]
