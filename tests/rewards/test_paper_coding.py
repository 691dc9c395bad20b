"""The paper's own coding reward (a named option beside ours) on hand-written helper/main pairs:
every level, the use bonus, the anti-wrapper bonus and the discarded-value deduction."""

from __future__ import annotations

import pytest

from magrpo.rewards.paper_coding import score_paper_coding_batch
from magrpo.tasks import get_task
from tests.rewards.test_coding import HELPER, PROBLEM


def reward(helper: str, main: str) -> float:
    return score_paper_coding_batch([(helper, main)], [PROBLEM])[0].reward


@pytest.mark.parametrize(
    "helper, main, expected",
    [
        # both defined 0.4 + 0.6, parses 0.5, 4/4 tests 1.0, uses aux 0.5, not a thin wrapper 1.0
        (HELPER, "def add_all(xs):\n    total = aux(xs)\n    return total\n", 4.0),
        # a thin wrapper: no anti-wrapper bonus
        (HELPER, 'def add_all(xs):\n    """Sum."""\n    return aux(xs)\n', 3.0),
        # a bare call throws its value away: -0.5
        (HELPER, "def add_all(xs):\n    aux(xs)\n    return sum(xs)\n", 3.5),
        # no call of aux: the tests only
        (HELPER, "def add_all(xs):\n    return sum(xs)\n", 2.5),
        # no aux (optional): no 0.4, no bonus
        ("def helper(xs):\n    return 0\n", "def add_all(xs):\n    return sum(xs)\n", 2.1),
        # no test passes: no bonus
        (HELPER, "def add_all(xs):\n    return aux(xs) + 1\n", 1.5),
        # the main function missing, or not parsing: the scoring stops
        (HELPER, "def other(xs):\n    return 1\n", 0.4),
        (HELPER, "def add_all(xs):\n    return (aux(xs)\n", 0.4),
        # the main function right, the helper's part not parsing: the combined program does not
        ("def aux(xs):\n    return (xs\n", "def add_all(xs):\n    return sum(xs)\n", 0.6),
    ],
)
def test_the_papers_levels_on_hand_written_pairs(helper, main, expected):
    assert reward(helper, main) == pytest.approx(expected)


def test_the_paper_task_normalises_by_its_maximum_of_4_and_tells_main_it_may_call_aux():
    task = get_task("coding-paper")
    assert task.max_reward == 4.0
    item = {"entry_point": "add_all", "prompt": PROBLEM["prompt"]}
    assert "You have access to a helper function `aux()` that you can call" in task.formatters[1](item)[0]["content"]
    rows = task.scorer(
        completions=[(HELPER, "def add_all(xs):\n    total = aux(xs)\n    return total\n")],
        prompts=[("", "")],
        **{k: [v] for k, v in PROBLEM.items()},
    )
    assert rows[0]["reward"] == 4.0 and rows[0]["helper_used"] == 1.0 and rows[0]["thin_wrapper"] == 0.0


def test_the_paper_task_reports_the_cooperation_scheme_of_each_answer():
    task = get_task("coding-paper")
    mains = [
        "def add_all(xs):\n    total = aux(xs)\n    return total\n",  # its inputs handed to aux
        "def add_all(xs):\n    return sum(aux(x) for x in xs)\n",  # aux once per item
        "def add_all(xs):\n    return sum(xs)\n",  # no call
        "def add_all(xs):\n    return (aux(xs)\n",  # does not parse
    ]
    rows = task.scorer(
        completions=[(HELPER, m) for m in mains], prompts=[("", "")] * 4, **{k: [v] * 4 for k, v in PROBLEM.items()}
    )
    assert [[k for k, v in r.items() if k.startswith("scheme/") and v == 1.0] for r in rows] == [
        ["scheme/delegation"],
        ["scheme/coordinator"],
        ["scheme/none"],
        ["scheme/none"],
    ]
