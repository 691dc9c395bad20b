"""Execution feedback of the coding task: each agent told what concerns it."""

from __future__ import annotations

from magrpo.feedback import ExecutionFeedback, FeedbackRequest
from magrpo.rewards.coding import score_coding_batch

PROBLEM = {
    "prompt": "def double(x):\n",
    "entry_point": "double",
    "test": "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(0) == 0\n",
}


def execution_feedback(helper, main, **options):
    score = score_coding_batch([(helper, main)], [PROBLEM])[0]
    request = FeedbackRequest(
        PROBLEM, (helper, main), {"reward": score.reward, "details": score}, 1, ("helper", "main")
    )
    return ExecutionFeedback(**options)([request])[0]


def test_execution_feedback_tells_each_agent_what_concerns_it():
    helper, main = execution_feedback(
        "def aux(x):\n    return x + x\n", "def double(x):\n    aux(x)\n    return x + 1\n"
    )
    assert "Tests: 0/2 passed; wrong result: 2." in helper and "Tests: 0/2 passed; wrong result: 2." in main
    assert "`double` calls your `aux` but ignores its result." in helper
    assert "Your `double` calls `aux` but ignores its result." in main


def test_execution_feedback_static_checks():
    helper, main = execution_feedback("def helper(x):\n    return x\n", "def double(x):\n    return 2 * x\n")
    assert helper == "Your code does not define `aux`." and main == ""
    helper, main = execution_feedback("def aux(x):\n    return x\n", "def double(x):\n    return (2 * x\n")
    assert (
        main.startswith("Your code has a syntax error at line 2") and "The combined program does not parse." in helper
    )


def test_a_helper_passed_by_name_is_not_called_never_called():
    helper, main = execution_feedback(
        "def aux(x):\n    return x + x\n", "def double(x):\n    return sum(map(aux, [x]))\n"
    )
    assert "Tests: 2/2 passed." in main
    assert "never calls" not in helper + main and "ignores its result" not in helper + main


def test_the_graded_tests_stay_hidden_unless_asked_for():
    """The second turn is graded on the same tests: feedback that quoted them (and their expected
    values) would let it copy the answers. Counts and error kinds only, by default."""
    helper, main = execution_feedback(
        "def aux(x):\n    return x + x\n", "def double(x):\n    return aux(x) if x else None + 1\n"
    )
    assert main.startswith("Tests: 1/2 passed; error (TypeError): 1.")
    for text in (helper, main):
        assert "candidate" not in text and "== 4" not in text and "== 0" not in text
    _, quoted = execution_feedback(
        "def aux(x):\n    return x + x\n",
        "def double(x):\n    return aux(x) if x else None + 1\n",
        show_failed_tests=True,
    )
    assert "- error: assert candidate(0) == 0 -> TypeError" in quoted
