"""The coding reward on hand-written helper/main pairs: every level, the bonus and the penalty."""

from __future__ import annotations

import pytest

from magrpo.rewards.coding import (
    CodingRewardConfig,
    combine_program,
    defines_function,
    extract_code,
    helper_usage,
    score_coding_batch,
)

PROBLEM = {
    "prompt": 'from typing import List\n\ndef add_all(xs: List[int]) -> int:\n    """Sum of xs."""\n',
    "entry_point": "add_all",
    "test": "def check(candidate):\n    assert candidate([1, 2]) == 3\n    assert candidate([]) == 0\n"
    "    assert candidate([5]) == 5\n    assert candidate([-1, 1]) == 0\n",
}


HELPER = "```python\ndef aux(xs):\n    total = 0\n    for x in xs:\n        total += x\n    return total\n```"


MAIN_USES = "```python\ndef add_all(xs):\n    return aux(xs)\n```"


MAIN_IGNORES = "def add_all(xs):\n    aux(xs)\n    return sum(xs)\n"


MAIN_IGNORES_VAR = "def add_all(xs):\n    unused = aux(xs)\n    return sum(xs)\n"


MAIN_ALONE = "def add_all(xs):\n    return sum(xs)\n"


MAIN_HALF = "def add_all(xs):\n    return aux(xs) if len(xs) > 1 else 0\n"  # passes [1,2], [], [-1,1]


def score(helper, main, cfg=CodingRewardConfig()):
    return score_coding_batch([(helper, main)], [PROBLEM], cfg)[0]


def test_level_1_needs_both_functions_defined():
    s = score("def helper(x):\n    return x\n", MAIN_USES)
    assert (s.defined, s.reward) == (False, 0.0)
    s = score(HELPER, "def something_else():\n    pass\n")
    assert (s.defined, s.reward) == (False, 0.0)


def test_level_2_needs_a_program_that_parses():
    s = score(HELPER, "def add_all(xs):\n    return aux(xs\n")
    assert (s.defined, s.parses, s.reward) == (True, False, 1.0)


def test_level_3_pays_the_fraction_of_tests_and_level_4_the_bonus():
    s = score(HELPER, MAIN_USES)
    assert (s.tests_passed, s.tests_total, s.helper_usage) == (4, 4, "used")
    assert s.reward == pytest.approx(1.0 + 1.0 + 3.0 + 0.5)
    s = score(HELPER, MAIN_HALF)
    assert (s.tests_passed, s.tests_total) == (3, 4)
    assert s.reward == pytest.approx(1.0 + 1.0 + 3.0 * 0.75 + 0.5)


def test_level_4_penalises_a_call_whose_result_is_thrown_away():
    for main in (MAIN_IGNORES, MAIN_IGNORES_VAR):
        s = score(HELPER, main)
        assert (s.tests_passed, s.helper_usage) == (4, "ignored")
        assert s.reward == pytest.approx(1.0 + 1.0 + 3.0 - 0.5)


def test_no_helper_call_means_no_bonus_and_no_penalty():
    s = score(HELPER, MAIN_ALONE)
    assert s.helper_usage == "absent"
    assert s.reward == pytest.approx(5.0)


def test_no_cooperation_bonus_without_a_passing_test():
    s = score(HELPER, "def add_all(xs):\n    return aux(xs) + 1\n")
    assert (s.tests_passed, s.reward) == (0, 2.0)


def test_figures_for_evaluation():
    figures = score(HELPER, MAIN_HALF).figures()
    assert figures == {
        "reward": pytest.approx(4.75),
        "level_defined": 1.0,
        "level_parses": 1.0,
        "tests_passed": 0.75,
        "pass@1": 0.0,
        "helper_used": 1.0,
        "helper_counterfactual": 1.0,  # a test passed and the helper ran: its tests ran once more without it
    }


def test_the_combined_program_keeps_each_agents_own_function_only():
    helper = "import math\n\ndef aux(x):\n    return x\n\ndef add_all(xs):\n    return -1\n\nprint('side effect')\n"
    main = "def aux(x):\n    return 0\n\ndef add_all(xs):\n    return aux(sum(xs))\n"
    program = combine_program(helper, main, "add_all", PROBLEM["prompt"])
    assert program == (
        "from typing import List\n\nimport math\n\ndef aux(x):\n    return x\n\n"
        "def add_all(xs):\n    return aux(sum(xs))\n"
    )


def test_helper_usage_and_fences():
    assert extract_code("text\n```python\nx = 1\n```\nmore") == "x = 1"
    assert helper_usage("def f(x):\n    y = aux(x)\n    return y\n", "f") == "used"
    assert helper_usage("def f(x):\n    if aux(x):\n        return 1\n", "f") == "used"
    assert helper_usage("def f(x):\n    return 1\n", "f") == "absent"


USELESS_HELPER = "def aux():\n    pass\n"
CORRECT_ALONE = "def add_all(xs):\n    return sum(xs)\n"


@pytest.mark.parametrize(
    "helper, main, reward, usage",
    [
        # the main agent's own nested aux is not the helper: no bonus
        (
            USELESS_HELPER,
            "def add_all(xs):\n    def aux(v):\n        return sum(v)\n    return aux(xs)\n",
            5.0,
            "absent",
        ),
        # a call in dead code never runs: no bonus
        (USELESS_HELPER, "def add_all(xs):\n    if False:\n        return aux()\n    return sum(xs)\n", 5.0, "absent"),
        # called inside a try where it raises: it did no work, so no bonus, whatever the main does
        # with the result (thrown away, read to decide nothing, returned with a fallback)
        (
            USELESS_HELPER,
            "def add_all(xs):\n    try:\n        aux(xs)\n    except Exception:\n        pass\n    return sum(xs)\n",
            5.0,
            "absent",
        ),
        (
            USELESS_HELPER,
            "def add_all(xs):\n    try:\n        r = aux(xs)\n    except Exception:\n        r = None\n    if r:\n        pass\n    return sum(xs)\n",
            5.0,
            "absent",
        ),
        (
            USELESS_HELPER,
            "def add_all(xs):\n    try:\n        return aux(xs)\n    except Exception:\n        return sum(xs)\n",
            5.0,
            "absent",
        ),
        # a helper that returns, called in a try, its result thrown away: the penalty
        (
            HELPER,
            "def add_all(xs):\n    try:\n        aux(xs)\n    except Exception:\n        pass\n    return sum(xs)\n",
            4.5,
            "ignored",
        ),
        # a parameter named aux shadows the helper
        (USELESS_HELPER, "def add_all(xs, aux=sum):\n    return aux(xs)\n", 5.0, "absent"),
        # the helper runs but its result never reaches the return value
        (HELPER, "def add_all(xs):\n    total = aux(xs)\n    print(total)\n    return sum(xs)\n", 4.5, "ignored"),
        # its value discarded on the way, which no syntax rule sees: the tests without it pass as well
        (USELESS_HELPER, "def add_all(xs):\n    return sum(xs) + (aux() or 0)\n", 4.5, "ignored"),
        # real cooperation: by value, through a variable, through a condition, by name
        (HELPER, MAIN_USES, 5.5, "used"),
        ("def aux(x):\n    return x\n", "def add_all(xs):\n    return sum(map(aux, xs))\n", 5.5, "used"),
        (
            "def aux(x):\n    return x == x\n",
            "def add_all(xs):\n    return sum(filter(aux, xs))\n",
            5.5,
            "used",
        ),
        (HELPER, "def add_all(xs):\n    out = []\n    out.append(aux(xs))\n    return out[0]\n", 5.5, "used"),
        (
            HELPER,
            "def add_all(xs):\n    if aux(xs) == sum(xs):\n        return sum(xs)\n    raise ValueError\n",
            5.5,
            "used",
        ),
    ],
)
def test_the_cooperation_bonus_pays_only_for_a_helper_that_runs_and_matters(helper, main, reward, usage):
    s = score(helper, main)
    assert (s.tests_passed, s.helper_usage, s.reward) == (4, usage, reward)


def test_a_def_inside_a_string_or_comment_defines_nothing():
    fake = 'NOTE = "def aux(xs): return sum(xs)"\n# def aux(xs):\n'
    s = score(fake, CORRECT_ALONE)
    assert (s.defined, s.reward) == (False, 0.0)
    assert defines_function("def aux(x):\n    return (x", "aux")  # unparseable code: read token by token
    assert not defines_function("s = '''\ndef aux(x):\n", "aux")
    assert not defines_function(
        "class A:\n    def aux(self):\n        pass\n", "aux"
    )  # not top-level: not in the program


@pytest.mark.parametrize("helper", ["", "   \n", "```python\n```"])
def test_a_helper_that_passes_is_scored_by_the_pass_rule_only_where_the_task_allows_it(helper):
    """An empty helper part: nothing (level 1 unmet) by default; with helper_may_pass the main
    function alone is scored, with no cooperation level: at most 5.0 of 5.5."""
    assert score(helper, MAIN_ALONE).reward == 0.0
    passing = CodingRewardConfig(helper_may_pass=True)
    s = score(helper, MAIN_ALONE, passing)
    assert (s.defined, s.parses, s.tests_passed, s.helper_usage) == (True, True, 4, "absent")
    assert s.reward == 1.0 + 1.0 + 3.0
    assert score(helper, MAIN_USES, passing).reward == 1.0 + 1.0  # it calls a helper nobody wrote: no test passes
    assert score(HELPER, MAIN_USES, passing).reward == score(HELPER, MAIN_USES).reward == 5.5  # no pass: as before
    assert score("def helper(x):\n    return x\n", MAIN_ALONE, passing).reward == 0.0  # a wrong helper is no pass
