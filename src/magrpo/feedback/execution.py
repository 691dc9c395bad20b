"""Execution feedback for the coding task: how many tests passed and how the others went wrong,
plus static checks.

The helper agent hears about ``aux`` (missing, syntax error, never called, result ignored); the
main agent about the entry point (missing, syntax error). Both see the test summary, since a
failure may be either agent's doing.

The tests are the graded ones, so the summary gives counts and error kinds only ("Tests: 1/3
passed; wrong result: 1, error (TypeError): 1"), as the paper's level feedback does: quoting a
failed assertion would hand the agents its expected value, and a second turn graded on the
same assertions would then measure copying. ``ExecutionFeedback(show_failed_tests=True)``
quotes them (up to three), for training runs whose figures are read on other tests.
"""

from __future__ import annotations

import ast
from typing import Sequence

from magrpo.feedback.base import FeedbackRequest
from magrpo.rewards.coding import CodingScore, defines_function, extract_code
from magrpo.sandbox.types import TestOutcome

MAX_FAILURES_SHOWN = 3
MAX_MESSAGE_CHARS = 160


def _syntax_problem(code: str) -> str | None:
    try:
        ast.parse(code)
    except SyntaxError as exc:
        return f"syntax error at line {exc.lineno}: {exc.msg}"
    return None


def _short(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: what each limit that stops a program is called in the feedback
STOP_REASONS = {
    "cpu": "it used more than its CPU time",
    "wall": "it ran past its wall-clock time (it blocked or slept)",
    "memory": "out of memory",
    "output": "too much output",
    "file_size": "a file grew too large",
}


def _error_kind(message: str) -> str:
    """``"ExcType: message"`` -> ``ExcType`` (the message may quote the test's values)."""
    kind = message.split(":", 1)[0].strip()
    return kind if kind.isidentifier() else "an exception"


def failure_kinds(outcomes: Sequence[TestOutcome]) -> str:
    """How the tests that did not pass went wrong, counted by kind, without their contents."""
    counts: dict[str, int] = {}
    for outcome in outcomes:
        if outcome.status == "failed":
            kind = "wrong result"
        elif outcome.status == "error":
            kind = f"error ({_error_kind(outcome.message)})"
        elif outcome.status == "timeout":
            kind = "timed out"
        else:
            kind = f"stopped ({outcome.message or outcome.status})"
        counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{kind}: {n}" for kind, n in counts.items())


def test_summary(score: CodingScore, show_failed_tests: bool = False) -> str:
    """The tests' results: counts and error kinds, or with ``show_failed_tests`` the failed tests
    themselves (the graded assertions, with their expected values)."""
    if score.run is None:
        return "The tests did not run."
    run = score.run
    failures = [o for o in run.outcomes if o.status != "passed"]
    kinds = f"; {failure_kinds(failures)}" if failures and not show_failed_tests else ""
    lines = [f"Tests: {run.passed}/{run.total} passed{kinds}."]
    if run.killed_reason:
        lines.append(f"The program was stopped: {STOP_REASONS.get(run.killed_reason, run.killed_reason)}.")
    if run.setup_error:  # the program's own load error (a SyntaxError, a NameError at import): no test in it
        lines.append(f"The program failed to load: {_short(run.setup_error)}")
    if show_failed_tests:
        for outcome in failures[:MAX_FAILURES_SHOWN]:
            detail = f" -> {_short(outcome.message)}" if outcome.message else ""
            lines.append(f"- {outcome.status}: {_short(outcome.test, 120)}{detail}")
        if len(failures) > MAX_FAILURES_SHOWN:
            lines.append(f"- ... and {len(failures) - MAX_FAILURES_SHOWN} more")
    return "\n".join(lines)


class ExecutionFeedback:
    """Feedback from the sandbox results and static checks of a (helper, main) joint action."""

    def __init__(self, helper_name: str = "aux", show_failed_tests: bool = False) -> None:
        self.helper_name = helper_name
        #: quote the failed (graded) tests: only where the run's figures come from other tests
        self.show_failed_tests = show_failed_tests

    def __call__(self, requests: Sequence[FeedbackRequest]) -> list[tuple[str, ...]]:
        return [self.one(r) for r in requests]

    def one(self, request: FeedbackRequest) -> tuple[str, str]:
        score: CodingScore = request.score["details"]
        entry = request.item["entry_point"]
        helper_code, main_code = (extract_code(c) for c in request.completions)
        helper_notes: list[str] = []
        main_notes: list[str] = []
        if not defines_function(helper_code, self.helper_name):
            helper_notes.append(f"Your code does not define `{self.helper_name}`.")
        elif problem := _syntax_problem(helper_code):
            helper_notes.append(f"Your code has a {problem}.")
        if not defines_function(main_code, entry):
            main_notes.append(f"Your code does not define `{entry}`.")
        elif problem := _syntax_problem(main_code):
            main_notes.append(f"Your code has a {problem}.")
        if score.parses:
            summary = test_summary(score, self.show_failed_tests)
            helper_notes.append(summary)
            main_notes.append(summary)
            if score.helper_usage == "absent":
                helper_notes.append(f"`{entry}` never calls your `{self.helper_name}`.")
                main_notes.append(f"Your `{entry}` never calls `{self.helper_name}`.")
            elif score.helper_usage == "ignored":
                helper_notes.append(f"`{entry}` calls your `{self.helper_name}` but ignores its result.")
                main_notes.append(f"Your `{entry}` calls `{self.helper_name}` but ignores its result.")
        elif score.defined:
            both = "The combined program does not parse."
            helper_notes.append(both)
            main_notes.append(both)
        return "\n".join(helper_notes), "\n".join(main_notes)
