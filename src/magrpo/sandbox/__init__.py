"""Sandboxed execution of untrusted generated programs against unit tests.

See docs/sandbox.md for what is guaranteed and by which mechanism.
"""

from .runner import run_tests, run_tests_many
from .split import split_check
from .types import SandboxLimits, TestOutcome, TestRunResult

__all__ = ["SandboxLimits", "TestOutcome", "TestRunResult", "run_tests", "run_tests_many", "split_check"]
