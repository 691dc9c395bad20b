"""Hostile programs: each asserts the exact grade and (via conftest) an unharmed machine."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time

import pytest

from magrpo.sandbox import TestRunResult, run_tests

from .conftest import FAST, SHORT_WALL, processes_matching


def grades(r: TestRunResult) -> list[tuple[str, str]]:
    return [(o.status, o.message) for o in r.outcomes]


def statuses(r: TestRunResult) -> list[str]:
    return [o.status for o in r.outcomes]


# --- runaway time -----------------------------------------------------------------------


def test_infinite_loop_in_a_test_times_out_and_later_tests_still_run():
    r = run_tests("def f():\n    while True:\n        pass\n", ["f()", "assert 1 + 1 == 2"], **FAST)
    assert grades(r) == [("timeout", "test used more than 1.0 s of CPU time"), ("passed", "")]
    assert r.killed_reason == "cpu" and r.outcomes[0].reason == "cpu"


def test_infinite_loop_at_import_hits_the_programs_cpu_limit():
    r = run_tests("while True:\n    pass\n", ["assert True", "assert True"], **{**FAST, "cpu_time_s": 1.5})
    assert grades(r) == [("timeout", "program used more than 1.5 s of CPU time")] * 2
    assert r.killed_reason == "cpu"
    assert 1.5 <= r.cpu_s < 2.0  # stopped as it reached the limit, not a wall-clock time later


def test_loop_that_catches_every_exception_still_dies():
    code = (
        "import time\ndef f():\n    while True:\n        try:\n            time.sleep(10)\n"
        "        except BaseException:\n            pass\n"
    )
    r = run_tests(code, ["f()"], **SHORT_WALL)
    assert [(o.status, o.reason) for o in r.outcomes] == [("timeout", "wall")]
    assert r.outcomes[0].message.startswith("test exceeded 1.0 s wall clock, using 0.0")


def test_sleeping_past_the_wall_clock_backstop():
    r = run_tests("import time\n", ["time.sleep(30)", "assert True"], **SHORT_WALL)
    assert statuses(r) == ["timeout", "passed"]
    assert r.killed_reason == "wall"


def test_ignoring_sigterm_does_not_help():
    code = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    r = run_tests(code, ["time.sleep(30)"], **SHORT_WALL)
    assert [(o.status, o.reason) for o in r.outcomes] == [("timeout", "wall")]


# --- runaway processes, threads, memory, output, files -----------------------------------


def test_fork_bomb_at_import():
    r = run_tests("import os\nwhile True:\n    os.fork()\n", ["assert True", "assert True"], **FAST)
    assert statuses(r) == ["error", "error"]
    assert all(o.message == "BlockingIOError: [Errno 11] Resource temporarily unavailable" for o in r.outcomes)
    assert r.setup_error == r.outcomes[0].message and r.killed_reason is None


def test_fork_bomb_inside_a_test_is_contained_to_that_test():
    r = run_tests("import os\n", ["while True:\n    os.fork()", "assert True"], **FAST)
    assert grades(r) == [("error", "BlockingIOError: [Errno 11] Resource temporarily unavailable"), ("passed", "")]


def test_thread_bomb():
    code = "import threading, time\n"
    bomb = "while True:\n    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()"
    r = run_tests(code, [bomb, "assert True"], **FAST)
    assert grades(r) == [("error", "RuntimeError: can't start new thread"), ("passed", "")]


def test_memory_bomb_single_allocation():
    r = run_tests("", ["x = bytearray(1 << 34)", "assert True"], **FAST)
    assert grades(r) == [("killed", f"memory limit exceeded ({512 << 20} bytes of address space)"), ("passed", "")]
    assert r.killed_reason == "memory"


def test_memory_bomb_growing_at_import():
    # 8 MiB a step: the limit is reached in 64 steps, within the wall clock even on a loaded machine
    r = run_tests("hog = []\nwhile True:\n    hog.append(bytearray(8 << 20))\n", ["assert True"], **FAST)
    assert grades(r) == [("killed", f"memory limit exceeded ({512 << 20} bytes of address space)")]
    assert r.killed_reason == "memory"


def test_deep_recursion():
    r = run_tests("def f(n):\n    return f(n + 1)\n", ["f(0)"], **FAST)
    assert grades(r) == [("error", "RecursionError: maximum recursion depth exceeded")]


def test_gigabytes_of_output_are_capped_and_killed():
    code = "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n"
    t = time.monotonic()
    r = run_tests(code, ["assert True"], **FAST, output_bytes=1 << 16)
    assert time.monotonic() - t < 3
    assert grades(r) == [("killed", "output limit exceeded (65536 bytes)")]
    assert r.killed_reason == "output" and r.stdout == "x" * 65536


def test_file_size_limit():
    r = run_tests("", ["open('big', 'wb').write(b'x' * (2 << 20))"], **FAST, file_size_bytes=1 << 20)
    assert grades(r) == [("killed", "file size limit exceeded (1048576 bytes)")]  # EFBIG: Python ignores SIGXFSZ
    assert r.killed_reason == "file_size"


def test_open_file_limit():
    r = run_tests("", ["fs = [open('f%d' % i, 'w') for i in range(200)]"], **FAST, open_files=32)
    assert statuses(r) == ["error"]
    assert r.outcomes[0].message.startswith("OSError: [Errno 24] Too many open files: 'f")


def test_write_to_home_directory_fails(strong):
    home = os.path.expanduser("~")  # the caller's real home, not the sandbox's $HOME
    target = os.path.join(home, "magrpo_sandbox_pwned")
    r = run_tests("", [f"open({target!r}, 'w').write('x')"], **FAST)
    assert statuses(r) == ["error"]
    assert r.outcomes[0].message in (
        f"OSError: [Errno 30] Read-only file system: {target!r}",
        f"PermissionError: [Errno 13] Permission denied: {target!r}",
    )
    assert not os.path.exists(target)


def test_write_to_tmp_outside_its_dir_fails(strong):
    r = run_tests(
        "",
        [
            "open('/tmp/magrpo_sandbox_pwned', 'w').write('x')",
            "import os\nopen(os.path.join(os.environ['HOME'], 'own'), 'w').write('ok')",
        ],
        **FAST,
    )
    assert grades(r) == [
        ("error", "OSError: [Errno 30] Read-only file system: '/tmp/magrpo_sandbox_pwned'"),
        ("passed", ""),
    ]
    assert not os.path.exists("/tmp/magrpo_sandbox_pwned")


def test_deleting_files_it_can_see_fails(strong):
    where = tempfile.mkdtemp(prefix="magrpo-victim-")  # world-traversable, so only the read-only mount protects it
    victim = os.path.join(where, "precious.txt")
    try:
        with open(victim, "w") as f:
            f.write("keep me")
        os.chmod(where, 0o777)
        os.chmod(victim, 0o666)
        r = run_tests("import os, shutil\n", [f"os.remove({victim!r})", f"shutil.rmtree({where!r})"], **FAST)
        assert grades(r) == [
            ("error", f"OSError: [Errno 30] Read-only file system: {victim!r}"),
            ("error", "OSError: [Errno 30] Read-only file system: 'precious.txt'"),
        ]
        with open(victim) as f:
            assert f.read() == "keep me"
    finally:
        shutil.rmtree(where)


# --- secrets and network ---------------------------------------------------------------


def test_environment_secrets_are_not_visible(strong, monkeypatch):
    monkeypatch.setenv("MAGRPO_FAKE_API_TOKEN", "hunter2-secret")
    parent = os.getpid()
    tests = [
        "import os\nassert 'MAGRPO_FAKE_API_TOKEN' not in os.environ",
        "import os\nassert not any('hunter2' in v for v in os.environ.values())",
        f"open('/proc/{parent}/environ', 'rb').read()",
    ]
    r = run_tests("", tests, **FAST)
    assert grades(r)[:2] == [("passed", ""), ("passed", "")]
    assert r.outcomes[2].status == "error" and r.outcomes[2].message.startswith("FileNotFoundError")


def test_socket_to_localhost_listener_fails(strong):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        r = run_tests("import socket\n", [f"socket.create_connection(('127.0.0.1', {port}), timeout=2)"], **FAST)
        assert grades(r) == [("error", "OSError: [Errno 101] Network is unreachable")]
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever connected
    finally:
        listener.close()


def test_socket_to_external_address_fails_immediately(strong):
    t = time.monotonic()
    r = run_tests("import socket\n", ["socket.create_connection(('203.0.113.1', 80), timeout=5)"], **FAST)
    assert time.monotonic() - t < 1.0
    assert grades(r) == [("error", "OSError: [Errno 101] Network is unreachable")]


# --- attacks on the parent and other processes ------------------------------------------


def test_killing_the_parent_and_its_group_is_harmless(strong):
    tests = [
        "import os\nos.kill(os.getppid(), 9)\nassert True",
        "import os\nos.kill(-1, 9)",
        "import os\nos.killpg(os.getpgrp(), 9)",
        "assert True",
    ]
    r = run_tests("", tests, **FAST)
    assert grades(r) == [
        ("passed", ""),
        ("error", "ProcessLookupError: [Errno 3] No such process"),
        ("error", "test process died from signal SIGKILL"),
        ("passed", ""),
    ]


def test_kill_everything_at_import_harms_nothing(strong):
    # The loader is pid 1 of its own namespace: signals from inside cannot kill it, nor reach outside.
    code = "import os, signal\nos.killpg(0, signal.SIGKILL)\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n    pass\n"
    r = run_tests(code, ["assert True"], **FAST)
    assert grades(r) == [("passed", "")]


def test_detached_double_forked_child_is_killed():
    code = (
        "import os, sys\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)',"
        " 'MAGRPO_HOSTILE_MARKER'])\n"
        "    os._exit(0)\n"
        "import time\ntime.sleep(0.3)\n"
        "def f():\n    return 1\n"
    )
    r = run_tests(code, ["assert f() == 1"], **FAST)
    assert grades(r) == [("passed", "")]
    assert processes_matching("MAGRPO_HOSTILE_MARKER") == []


def test_runs_unprivileged(strong):
    r = run_tests(
        "import os\n",
        [
            "assert os.getuid() != 0 and os.geteuid() != 0",
            "assert len([p for p in os.listdir('/proc') if p.isdigit()]) < 10",
        ],
        **FAST,
    )
    assert statuses(r) == ["passed", "passed"]
