"""Parent side of the sandbox: start the child, watch it, kill it, grade it.

Nothing here runs generated code; the parent only reads pipes.  Per program:
one interpreter start, one temp directory, one select loop, which also keeps the whole
program's limits: the CPU its process tree spends (read from /proc, only as often as the limit
could be reached with every core busy) and the wall-clock backstop.
"""

from __future__ import annotations

import ast
import binascii
import dataclasses
import marshal
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from ._proctree import process_cpu_s, tree_cpu_s
from .split import split_tests
from .types import SandboxLimits, TestOutcome, TestRunResult

_CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_child.py")
_REPORT_CAP = 1 << 20  # bytes of report channel accepted before the run counts as flooding
_ENV_KEEP = ("LANG", "LC_ALL", "TZ")  # harmless locale settings; everything else is dropped
_ISOLATION_ENV = "MAGRPO_SANDBOX_ISOLATION"  # "auto" (default), "userns" or "none": cap the tier, for CI/tests
_MARKER_ENV = "MAGRPO_SANDBOX_RUN"

_warned: set[str] = set()
_warn_lock = threading.Lock()


def _warn_once(text: str) -> None:
    with _warn_lock:
        if text in _warned:
            return
        _warned.add(text)
    warnings.warn(text, RuntimeWarning, stacklevel=4)  # point at the caller of run_tests


def _environment(workdir: str, marker: str) -> dict[str, str]:
    env = {k: os.environ[k] for k in _ENV_KEEP if k in os.environ}
    env.update(
        PATH="/usr/local/bin:/usr/bin:/bin",
        HOME=workdir,
        TMPDIR=workdir,
        LANG=env.get("LANG", "C.UTF-8"),
        PYTHONIOENCODING="utf-8",
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    env[_MARKER_ENV] = marker  # lets the parent find stray processes in the weakest tier
    return env


def _needed_paths() -> list[str]:
    """Directories the child interpreter must still read after dropping privileges."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    return sorted({p for r in roots for p in (r, os.path.realpath(r)) if os.path.isdir(p)})


def _site_paths() -> list[str]:
    """site-packages of this interpreter (the child starts with -S, so it adds them itself)."""
    import site

    return [p for p in site.getsitepackages() if os.path.isdir(p)]


def _normalise_tests(tests: Sequence[str] | str, entry_point: str | None) -> list[tuple[str, str]]:
    """(text shown in outcomes, source run) per test."""
    if isinstance(tests, str):
        if not entry_point:
            raise ValueError("a check(candidate) source needs entry_point")
        return [(t.assertion, t.source) for t in split_tests(tests, entry_point)]
    return [(t, t) for t in tests]


@dataclasses.dataclass
class _Run:
    """Mutable state of one program while it runs."""

    limits: SandboxLimits
    tokens: dict[str, int]
    setup_token: str
    reports: dict[int, tuple[str, str, str, int]] = dataclasses.field(default_factory=dict)
    usage: dict[int, tuple[float, float]] = dataclasses.field(default_factory=dict)  # per test: CPU s, wall s
    setup: tuple[str, str] | None = None  # (reason, message)
    info: dict = dataclasses.field(default_factory=dict)
    loader_fd: int | None = None
    killed: str | None = None
    buffers: dict[str, bytearray] = dataclasses.field(default_factory=dict)
    seen: dict[str, int] = dataclasses.field(default_factory=dict)
    loaded: bool = False  # the program finished loading (tests were started)
    loader_exit: int | None = None  # exit code (negative: signal) of the loader, from the supervisor
    cpu_s: float = 0.0  # CPU seconds of the whole process tree, last measured

    def on_report_line(self, line: bytes) -> None:
        parts = line.split(b" ")
        if len(parts) != 5:
            return  # not ours: the program wrote to the channel; it earns nothing
        token, status, reason, calls, msg = (p.decode("ascii", "replace") for p in parts)
        try:
            message = binascii.a2b_base64(msg.encode("ascii", "replace"), strict_mode=True).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            return
        reason = "" if reason == "-" else reason
        if token == self.setup_token and status == "setup" and self.setup is None:
            self.setup = (reason, message)
        elif token == self.setup_token and status == "loaded":
            self.loaded = True
        elif token in self.tokens and status in ("passed", "failed", "error", "timeout", "killed"):
            count = int(calls) if calls.isdigit() else 0
            self.reports.setdefault(self.tokens[token], (status, reason, message, count))  # first report wins
        elif token in self.tokens and status == "usage":
            try:
                cpu, wall = (float(x) for x in message.split())
            except ValueError:
                return
            self.usage.setdefault(self.tokens[token], (cpu, wall))

    def on_ctl_line(self, line: bytes) -> None:
        msg = ast.literal_eval(line.decode())
        if "loader_exit" in msg:
            self.loader_exit = msg["loader_exit"]
            return
        if self.info:
            return
        self.info = msg
        try:  # a pidfd cannot be confused by pid reuse when we kill later
            self.loader_fd = os.pidfd_open(self.info["loader"])
        except (AttributeError, OSError):
            self.loader_fd = None


def _kill_message(reason: str, lim: SandboxLimits) -> str:
    return {
        "cpu": f"program used more than {lim.cpu_time_s} s of CPU time",
        "wall": f"program exceeded {lim.timeout_s} s wall clock",
        "output": f"output limit exceeded ({lim.output_bytes} bytes)",
    }.get(reason, reason)


#: the CPU of the program's tree is read at least this many seconds apart
_MIN_CPU_CHECK_S = 0.01


def _pump(proc: subprocess.Popen, run: _Run, res_r: int, ctl_r: int, job: bytes, start: float) -> None:
    """Move bytes until the child exits, a time limit is reached (the program's CPU, or the wall
    clock) or output overflows."""
    sel = selectors.DefaultSelector()
    names = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr", res_r: "res", ctl_r: "ctl"}
    for fd, name in names.items():
        os.set_blocking(fd, False)
        run.buffers[name], run.seen[name] = bytearray(), 0
        sel.register(fd, selectors.EVENT_READ, name)
    exit_fd = os.pidfd_open(proc.pid)
    sel.register(exit_fd, selectors.EVENT_READ, "exit")
    stdin = proc.stdin.fileno()
    os.set_blocking(stdin, False)
    sel.register(stdin, selectors.EVENT_WRITE, "stdin")
    view, exited = memoryview(job), False
    lim, cores = run.limits, max(1, os.cpu_count() or 1)
    wall_deadline, checked = start + lim.timeout_s, start
    try:
        while not exited:
            now = time.monotonic()
            if now >= wall_deadline:
                run.killed = "wall"
                return
            if run.cpu_s + (now - checked) * cores >= lim.cpu_time_s:  # it may have reached the limit: measure
                run.cpu_s, checked = tree_cpu_s(proc.pid), now
                if run.cpu_s >= lim.cpu_time_s:
                    run.killed = "cpu"
                    return
            # the earliest the CPU limit can be reached, with every core busy
            next_check = checked + max(_MIN_CPU_CHECK_S, (lim.cpu_time_s - run.cpu_s) / cores)
            for key, _ in sel.select(max(0.0, min(wall_deadline, next_check) - now)):
                name = key.data
                if name == "exit":
                    exited = True
                elif name == "stdin":
                    try:
                        view = view[os.write(stdin, view[: 1 << 16]) :]
                    except BrokenPipeError:
                        view = view[:0]
                    if not view:
                        sel.unregister(stdin)
                        proc.stdin.close()
                elif not _read(key.fd, name, run, sel):
                    return
        run.cpu_s = process_cpu_s(proc.pid)  # exited, not yet reaped: its own CPU and its reaped tree's
        for fd, name in names.items():  # drain what the dead tree left in the pipes
            if fd in sel.get_map() and not _read(fd, name, run, sel, drain=True):
                return
    finally:
        sel.close()
        os.close(exit_fd)


def _read(fd: int, name: str, run: _Run, sel: selectors.BaseSelector, drain: bool = False) -> bool:
    """Read what is available from one pipe; False when a limit kills the run."""
    lim, buf = run.limits, run.buffers[name]
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return True
        if not chunk:
            sel.unregister(fd)
            return True
        run.seen[name] += len(chunk)
        if name in ("stdout", "stderr"):
            buf += chunk[: max(0, lim.output_bytes - len(buf))]
            if run.seen[name] > lim.output_bytes:  # capped at read time; excess is a kill
                run.killed = "output"
                return False
        else:
            if run.seen[name] > _REPORT_CAP:
                run.killed = "output"
                return False
            buf += chunk
            *lines, rest = bytes(buf).split(b"\n")
            buf[:] = rest
            for line in lines:
                (run.on_report_line if name == "res" else run.on_ctl_line)(line)
        if not drain:
            return True


def _survivors(run: _Run, marker: str) -> list[int]:
    """Processes of this run still alive: same sandbox uid, pid namespace or marker."""
    info, me = run.info, os.getpid()
    uid = info.get("uid") if info.get("uid") not in (None, os.geteuid()) else None
    pidns, weak = info.get("pidns") or None, info.get("tier") == "none"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            if uid is not None and os.stat(f"/proc/{entry}").st_uid == uid:
                found.append(int(entry))
            elif pidns and os.stat(f"/proc/{entry}/ns/pid").st_ino == pidns:
                found.append(int(entry))
            elif weak:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if f"{_MARKER_ENV}={marker}".encode() in f.read():
                        found.append(int(entry))
        except OSError:
            continue
    return [pid for pid in found if not has_ended(pid)]


def has_ended(pid: int) -> bool:
    """Dead and waiting to be reaped, or already gone: nothing left to kill (a zombie still takes
    signals, so a kill's success says nothing)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def _terminate(proc: subprocess.Popen, run: _Run, marker: str) -> None:
    """Kill the whole tree and verify that nothing of the run survives."""
    if run.loader_fd is not None and run.info.get("tier") != "none":
        try:  # killing pid 1 of the namespace makes the kernel kill everything in it
            signal.pidfd_send_signal(run.loader_fd, signal.SIGKILL)
        except OSError:
            pass
        try:  # the supervisor reaps the loader and exits by itself; killing it first would orphan a zombie
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    if run.loader_fd is not None:
        os.close(run.loader_fd)
    for _ in range(50):
        alive = _survivors(run, marker)
        if not alive:
            return
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.01)
    _warn_once(f"sandbox: processes {alive} of a finished run could not be killed")


def _outcomes(run: _Run, tests: list[tuple[str, str]], exit_code: int | None) -> list[TestOutcome]:
    out = []
    for i, (shown, _) in enumerate(tests):
        calls, reason = 0, ""
        if i in run.reports:
            status, reason, message, calls = run.reports[i]
        elif run.killed:
            status, reason = ("timeout" if run.killed in ("cpu", "wall") else "killed"), run.killed
            message = _kill_message(run.killed, run.limits)
        elif run.setup is not None:
            status, reason = ("killed" if run.setup[0] else "error"), run.setup[0]
            message = run.setup[1]
        elif run.loader_exit == -signal.SIGXCPU:
            status, reason = "timeout", "cpu"
            message = f"a process used more than the program's {run.limits.cpu_time_s} s of CPU time"
        elif not run.loaded:
            code = run.loader_exit if run.loader_exit is not None else exit_code
            status, message = "error", f"program exited (status {code}) while loading"
        else:
            status, message = "error", "test process exited without reporting a result"
        cpu, wall = run.usage.get(i, (0.0, 0.0))
        out.append(
            TestOutcome(test=shown, status=status, message=message, calls=calls, reason=reason, cpu_s=cpu, wall_s=wall)
        )
    return out


def _killed_reason(run: _Run) -> str | None:
    if run.killed:
        return run.killed
    if run.setup and run.setup[0]:
        return run.setup[0]
    if run.loader_exit == -signal.SIGXCPU:
        return "cpu"
    for i in sorted(run.reports):
        if run.reports[i][1]:
            return run.reports[i][1]
    return None


def run_tests(
    code: str,
    tests: Sequence[str] | str,
    *,
    entry_point: str | None = None,
    limits: SandboxLimits | None = None,
    strict_results: bool = True,
    count_calls: str | None = None,
    **limit_overrides,
) -> TestRunResult:
    """Run ``code`` in a fresh sandbox, then each test in its own process; grade them.

    ``strict_results`` (the default): a test's call of the ``entry_point`` (as ``candidate`` or by
    name), or without one of any function the program defines, that returns anything but a plain
    value (numbers, strings, bytes, None, and lists/tuples/dicts/sets of them, exact types) fails
    that test, so an object whose ``__eq__`` or ``__bool__`` always says yes earns nothing (calls
    between the program's own functions are not checked). ``strict_results=False`` compares
    whatever the functions return with Python's own ``==``: only for programs you trust.
    ``count_calls``: the name of a function of the program whose calls are counted while each test
    runs (:attr:`TestOutcome.calls`).
    """
    lim = dataclasses.replace(limits or SandboxLimits(), **limit_overrides)
    cases = _normalise_tests(tests, entry_point)
    start = time.monotonic()
    tokens = [secrets.token_hex(16) for _ in cases]
    run = _Run(limits=lim, tokens={t: i for i, t in enumerate(tokens)}, setup_token=secrets.token_hex(16))
    marker = secrets.token_hex(8)
    workdir = tempfile.mkdtemp(prefix="magrpo-sandbox-")
    res_r, res_w = os.pipe()
    ctl_r, ctl_w = os.pipe()
    job = {
        "code": code,
        "tests": [src for _, src in cases],
        "entry_point": entry_point,
        "tokens": tokens,
        "strict_results": bool(strict_results),
        "count_calls": count_calls,
        "setup_token": run.setup_token,
        "limits": lim.as_dict(),
        "workdir": workdir,
        "res_fd": res_w,
        "ctl_fd": ctl_w,
        "isolation": os.environ.get(_ISOLATION_ENV, "auto"),
        "needed_paths": _needed_paths(),
        "site_paths": _site_paths(),
    }
    proc = None
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", "-u", _CHILD, marker],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(res_w, ctl_w),
            start_new_session=True,
            cwd=workdir,
            env=_environment(workdir, marker),
        )
        os.close(res_w)
        os.close(ctl_w)
        res_w = ctl_w = -1
        _pump(proc, run, res_r, ctl_r, marshal.dumps(job), start)
    finally:
        for fd in (res_r, ctl_r, res_w, ctl_w):
            if fd >= 0:
                os.close(fd)
        if proc is not None:
            _terminate(proc, run, marker)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream and not stream.closed:
                    stream.close()
        shutil.rmtree(workdir, ignore_errors=True)
    _report_isolation(run)
    exit_code = proc.returncode if proc is not None else None
    return TestRunResult(
        outcomes=_outcomes(run, cases, exit_code),
        killed_reason=_killed_reason(run),
        stdout=bytes(run.buffers.get("stdout", b"")).decode("utf-8", "replace"),
        stderr=bytes(run.buffers.get("stderr", b"")).decode("utf-8", "replace"),
        duration_s=time.monotonic() - start,
        setup_error=run.setup[1] if run.setup else None,
        isolation=run.info.get("tier", ""),
        notes=list(run.info.get("notes", [])),
        cpu_s=run.cpu_s,
    )


def _report_isolation(run: _Run) -> None:
    info = run.info
    if not info:
        return
    tier = info.get("tier")
    if tier == "userns":
        _warn_once(
            "sandbox: not root; using an unprivileged user namespace (programs keep the caller's uid "
            "outside it, interpreter paths stay as they are)"
        )
    elif tier == "none":
        _warn_once(
            "sandbox: no Linux namespaces available; programs run with rlimits and a process group only, "
            "network blocked by a Python audit hook (bypassable by exec), the filesystem NOT read-only"
            + ("" if info.get("uid") != os.geteuid() else ", and with the caller's uid")
        )
    for note in info.get("notes", []):
        _warn_once(f"sandbox: {note}")


def run_tests_many(
    jobs: Sequence[dict], *, limits: SandboxLimits | None = None, max_workers: int | None = None
) -> list[TestRunResult]:
    """Grade many programs concurrently on a bounded pool; results in job order.

    Each job: ``{"code": ..., "tests": ..., "entry_point": ...}`` (optionally ``"limits"``,
    ``"strict_results"`` and ``"count_calls"``, as :func:`run_tests` takes them).
    Threads only wait on pipes; the work happens in the sandbox processes.
    """
    if not jobs:
        return []
    workers = max_workers or len(os.sched_getaffinity(0)) or os.cpu_count() or 1

    def one(job: dict) -> TestRunResult:
        return run_tests(
            job["code"],
            job["tests"],
            entry_point=job.get("entry_point"),
            limits=job.get("limits", limits),
            strict_results=job.get("strict_results", True),
            count_calls=job.get("count_calls"),
        )

    with ThreadPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        return list(pool.map(one, jobs))
