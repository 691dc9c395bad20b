"""Programs that try to fake a pass: only tests that really passed earn credit."""

from __future__ import annotations

from magrpo.sandbox import run_tests

from .conftest import FAST

WRONG = "def add(a, b):\n    return a - b\n"  # fails both tests below honestly
TESTS = ["assert add(2, 3) == 5", "assert add(1, 1) == 2, 'one plus one'"]


def grades(r):
    return [(o.status, o.message) for o in r.outcomes]


def test_baseline_wrong_program_fails():
    assert grades(run_tests(WRONG, TESTS, **FAST)) == [("failed", ""), ("failed", "one plus one")]


def test_sys_exit_zero_at_import():
    r = run_tests(WRONG + "import sys\nsys.exit(0)\n", TESTS, **FAST)
    assert grades(r) == [("error", "SystemExit: 0")] * 2
    assert r.setup_error == "SystemExit: 0" and r.passed == 0


def test_os_exit_zero_at_import():
    r = run_tests(WRONG + "import os\nos._exit(0)\n", TESTS, **FAST)
    assert grades(r) == [("error", "program exited (status 0) while loading")] * 2


def test_sys_exit_inside_the_candidate():
    code = "import sys\ndef add(a, b):\n    sys.exit(0)\n"
    assert grades(run_tests(code, TESTS, **FAST)) == [("error", "SystemExit: 0")] * 2


def test_os_exit_inside_the_candidate():
    code = "import os\ndef add(a, b):\n    os._exit(0)\n"
    r = run_tests(code, TESTS, **FAST)
    assert grades(r) == [("error", "test process exited without reporting a result")] * 2


def test_raise_systemexit_and_baseexception():
    code = "class Out(BaseException):\n    pass\ndef add(a, b):\n    raise SystemExit\ndef sub(a, b):\n    raise Out('bye')\n"
    r = run_tests(code, ["assert add(1, 2) == 3", "assert sub(1, 2) == -1"], **FAST)
    assert grades(r) == [("error", "SystemExit"), ("error", "Out: bye")]


def test_overridden_print_and_fake_pass_lines():
    code = WRONG + (
        "import builtins\nprint('All tests passed! 2/2 OK')\n"
        "builtins.print = lambda *a, **k: None\n"
        "import sys\nsys.stdout.write('PASSED\\nok\\n')\n"
    )
    r = run_tests(code, TESTS, **FAST)
    assert grades(r) == [("failed", ""), ("failed", "one plus one")]
    assert "All tests passed" in r.stdout


def test_fake_report_lines_on_every_descriptor():
    code = WRONG + (
        "import os\n"
        "for fd in range(3, 64):\n"
        "    for status in (b'passed', b'setup', b'loaded'):\n"
        "        try:\n"
        "            os.write(fd, b'0' * 32 + b' ' + status + b' - \\n')\n"
        "        except OSError:\n"
        "            pass\n"
        "def add(a, b):\n"
        "    for fd in range(3, 64):\n"
        "        try:\n"
        "            os.write(fd, b'x passed - \\n')\n"
        "        except OSError:\n"
        "            pass\n"
        "    return 0\n"
    )
    r = run_tests(code, TESTS, **FAST)
    assert grades(r) == [("failed", ""), ("failed", "one plus one")]


def test_patched_builtins_do_not_change_the_tests_meaning():
    code = (
        "import builtins\nbuiltins.abs = lambda x: 0\nbuiltins.len = lambda x: 3\n"
        "def sqrt(x):\n    builtins.round = lambda *a: 2.0\n    return 7.0\n"
    )
    tests = ["assert abs(sqrt(4) - 2.0) < 1e-9", "assert round(sqrt(4)) == 2", "assert len([1, 2, 3]) == 3"]
    r = run_tests(code, tests, **FAST)
    assert [o.status for o in r.outcomes] == ["failed", "failed", "passed"]


def test_program_globals_shadowing_builtins_are_ignored_by_tests():
    code = "def abs(x):\n    return 0\ndef f(x):\n    return x * 10\n"
    r = run_tests(code, ["assert abs(f(1) - 1) < 1e-9"], **FAST)
    assert [o.status for o in r.outcomes] == ["failed"]


def test_monkeypatched_assertion_error():
    code = WRONG + "import builtins\nbuiltins.AssertionError = ZeroDivisionError\nAssertionError = KeyError\n"
    assert grades(run_tests(code, TESTS, **FAST)) == [("failed", ""), ("failed", "one plus one")]


def test_fork_hook_that_exits_every_test_process():
    code = WRONG + "import os\nos.register_at_fork(after_in_child=lambda: os._exit(0))\n"
    r = run_tests(code, TESTS, **FAST)
    assert grades(r) == [("error", "test process exited without reporting a result")] * 2


def test_trace_hook_installed_at_import_is_removed():
    code = WRONG + ("import sys\ndef tracer(frame, event, arg):\n    raise SystemExit(0)\nsys.settrace(tracer)\n")
    assert grades(run_tests(code, TESTS, **FAST)) == [("failed", ""), ("failed", "one plus one")]


def test_missing_module():
    r = run_tests("import no_such_module_magrpo\n", TESTS, **FAST)
    assert grades(r) == [("error", "ModuleNotFoundError: No module named 'no_such_module_magrpo'")] * 2


def test_syntax_error():
    r = run_tests("def add(a, b)\n    return a + b\n", TESTS, **FAST)
    assert grades(r) == [("error", "SyntaxError: expected ':' (<program>, line 1)")] * 2


def test_missing_entry_point():
    check = "def check(candidate):\n    assert candidate(1) == 1\n"
    r = run_tests("def other(x):\n    return x\n", check, entry_point="ident", **FAST)
    assert grades(r) == [("error", "NameError: entry point 'ident' is not defined by the program")]


def test_state_does_not_leak_between_tests():
    code = "calls = []\ndef f():\n    calls.append(1)\n    return len(calls)\n"
    r = run_tests(code, ["assert f() == 1", "assert f() == 1"], **FAST)
    assert [o.status for o in r.outcomes] == ["passed", "passed"]


def test_result_fields():
    r = run_tests(WRONG.replace("-", "+"), TESTS + ["assert add(0, 0) == 1"], **FAST)
    assert (r.passed, r.total, r.all_passed) == (2, 3, False)
    assert abs(r.fraction - 2 / 3) < 1e-9 and r.killed_reason is None and r.duration_s > 0
    empty = run_tests("", [], **FAST)
    assert (empty.total, empty.fraction, empty.all_passed) == (0, 0.0, False)


LIAR = """
class Yes:
    def __eq__(self, other): return True
    def __ne__(self, other): return True
    def __bool__(self): return True
    def __len__(self): return 1
    def __contains__(self, item): return True
    def __lt__(self, other): return True
    def __abs__(self): return 0
    def __sub__(self, other): return self
"""
CHECK = (
    "def check(candidate):\n"
    "    assert candidate(1) == 2\n"  # __eq__
    "    assert not (candidate(1) != 2)\n"  # __ne__
    "    assert 3 in candidate(1)\n"  # __contains__
    "    assert candidate(1)\n"  # __bool__ / __len__
    "    assert abs(candidate(1) - 2.5) < 1e-6\n"  # a float tolerance
)


def test_an_object_that_claims_every_comparison_passes_no_test():
    r = run_tests(LIAR + "def f(x):\n    return Yes()\n", CHECK, entry_point="f", **FAST)
    assert [o.status for o in r.outcomes] == ["failed"] * 5
    assert r.outcomes[0].message.startswith("f returned a Yes object; only plain values")


def test_subclasses_of_plain_types_and_liars_inside_containers_pass_nothing():
    code = (
        LIAR
        + "class I(int):\n    def __eq__(self, o): return True\ndef f(x):\n    return I(2) if x == 1 else [1, Yes()]\n"
    )
    r = run_tests(
        code,
        "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(0) == [1, 2]\n",
        entry_point="f",
        **FAST,
    )
    assert [o.status for o in r.outcomes] == ["failed", "failed"]
    assert "returned a I object" in r.outcomes[0].message and "returned a list object" in r.outcomes[1].message


def test_plain_results_are_graded_as_the_test_means_them():
    code = "def f(x):\n    return {'k': [1.0000001, (None, b'x')], 's': {1, 2}}\n"
    check = (
        "def check(candidate):\n    assert abs(candidate(1)['k'][0] - 1.0) < 1e-6\n"
        "    assert candidate(1)['s'] == {2, 1}\n    assert candidate(1)['k'][1] == (None, b'x')\n"
    )
    assert run_tests(code, check, entry_point="f", **FAST).passed == 3


def test_without_an_entry_point_every_function_the_program_defines_is_graded_strictly():
    code = LIAR + "def helper(x):\n    return Yes()\ndef f(x):\n    return helper(x) is not None and 2\n"
    tests = ["assert f(1) == 2", "assert helper(1) == 3", "assert Yes() == 3"]
    r = run_tests(code, tests, **FAST)
    # f's own call of helper is not checked (f returns a plain 2); the test's call of helper is;
    # a class is not a function: what a test builds from it is the test's own business
    assert [o.status for o in r.outcomes] == ["passed", "failed", "passed"]
    assert r.outcomes[1].message.startswith("helper returned a Yes object; only plain values")
    assert run_tests(code, tests, strict_results=False, **FAST).passed == 3  # the lenient mode, opted into


def test_strict_results_can_be_switched_off_for_your_own_types():
    r = run_tests(
        LIAR + "def f(x):\n    return Yes()\n",
        "def check(candidate):\n    assert candidate(1) == 2\n",
        entry_point="f",
        strict_results=False,
        **FAST,
    )
    assert r.passed == 1


def test_calls_of_a_named_function_are_counted_per_test():
    code = "def aux(x):\n    return x + 1\ndef f(x):\n    if x > 0:\n        return aux(aux(x))\n    return 0\n"
    r = run_tests(
        code,
        "def check(candidate):\n    assert candidate(1) == 3\n    assert candidate(0) == 0\n",
        entry_point="f",
        count_calls="aux",
        **FAST,
    )
    assert [(o.status, o.calls) for o in r.outcomes] == [("passed", 2), ("passed", 0)] and r.calls == 2
