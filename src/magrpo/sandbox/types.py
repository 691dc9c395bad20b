"""Data types of the sandbox: limits in, per-test outcomes out."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

STATUSES = ("passed", "failed", "error", "timeout", "killed")


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one graded program (all have safe defaults).

    Time is graded by the CPU a program spends, which does not depend on what else the machine
    is doing; the wall-clock limits are backstops, several times larger, for programs that block
    or sleep (at four busy processes per core a program gets about a fifth of a core).
    """

    cpu_time_s: float = 10.0  # CPU seconds of the whole program: loading and every test, all their processes
    test_cpu_time_s: float = 3.0  # CPU seconds per test: the test's process and its children
    timeout_s: float = 50.0  # wall clock for the whole program (backstop)
    test_timeout_s: float = 15.0  # wall clock per test (backstop)
    memory_bytes: int = 1 << 30  # RLIMIT_AS
    file_size_bytes: int = 1 << 24  # RLIMIT_FSIZE
    open_files: int = 64  # RLIMIT_NOFILE
    processes: int = 64  # RLIMIT_NPROC, counted for a uid/user namespace private to the run
    output_bytes: int = 1 << 16  # stdout/stderr kept, each; more is a kill ("output")
    network: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class TestOutcome:
    test: str  # the test's source text
    status: str  # "passed" | "failed" | "error" | "timeout" | "killed"
    message: str = ""  # assertion message, "ExcType: msg", or the limit that killed it
    calls: int = 0  # calls of the run's ``count_calls`` function that returned while this test ran (0 if none reported)
    reason: str = ""  # the limit that stopped it: "cpu", "wall", "memory", "output", "file_size"; "" otherwise
    cpu_s: float = 0.0  # CPU seconds the test's processes used (0.0 if it never ran)
    wall_s: float = 0.0  # wall-clock seconds from its start to its end

    __test__ = False  # not a pytest test class despite the name


@dataclass
class TestRunResult:
    outcomes: list[TestOutcome]
    killed_reason: str | None  # "cpu", "wall" (time limits), "memory", "output", "file_size" or None
    stdout: str
    stderr: str
    duration_s: float
    setup_error: str | None = None  # the program failed to load: every test is "error" with this
    isolation: str = ""  # tier actually used: "namespaces", "userns" or "none"
    notes: list[str] = field(default_factory=list)  # isolation that could not be applied
    cpu_s: float = 0.0  # CPU seconds of the whole program (loading, every test, the harness)

    __test__ = False

    @property
    def passed(self) -> int:
        return sum(o.status == "passed" for o in self.outcomes)

    @property
    def total(self) -> int:
        return len(self.outcomes)

    @property
    def calls(self) -> int:
        """Calls of the ``count_calls`` function over all tests."""
        return sum(o.calls for o in self.outcomes)

    @property
    def fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0

    @property
    def all_passed(self) -> bool:
        return self.total > 0 and self.passed == self.total
