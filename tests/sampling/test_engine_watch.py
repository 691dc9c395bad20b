"""No engine process outlives its trainer: a trainer killed with SIGKILL while vLLM builds an
engine of its own process, or after, leaves nothing behind; the watcher that sees to it is in
place before the engine's first process starts."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from magrpo.sampling.engine_watch import marked

ROOT = Path(__file__).resolve().parents[2]


def _stat(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None


def descendants(root: int) -> dict[int, bytes]:
    """Every live process below ``root`` -> its start time (which tells it from a later process given its pid)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, bytes] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None and fields[0] not in (b"Z", b"X"):
            children.setdefault(int(fields[1]), []).append(int(entry))
            starts[int(entry)] = fields[19]
    found, pending = {}, list(children.get(root, ()))
    while pending:
        pid = pending.pop()
        found[pid] = starts[pid]
        pending += children.get(pid, ())
    return found


def running(pid: int, start: bytes) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[19] == start and fields[0] not in (b"Z", b"X")


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def is_engine(pid: int) -> bool:
    """vLLM's engine core, as spawned (then as it renames itself)."""
    line = cmdline(pid)
    return b"spawn_main" in line or line.startswith(b"VLLM::")


def start(script: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"},
    )


def kill_and_check_nothing_is_left(proc: subprocess.Popen, seen: dict[int, bytes], timeout: float = 60) -> None:
    """kill -9 the trainer; then every process it had started must end (the watcher's grace is
    10 s), and every process its engine started, seen or not (they carry the watcher's token)."""
    watchers = [cmdline(p).split(b"\0") for p in seen if b"engine_watch.py" in cmdline(p)]
    assert len(watchers) == 1, "the watcher was not running"
    token = watchers[0][watchers[0].index(next(a for a in watchers[0] if a.endswith(b"engine_watch.py"))) + 2]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + timeout
    while (
        left := [p for p, s in seen.items() if running(p, s)] + marked(token.decode(), os.getpid())
    ) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"processes of the killed trainer still running: {[cmdline(p)[:120] for p in left]}"


def test_the_watcher_ends_every_process_that_carries_its_marker_when_the_trainer_is_killed(tmp_path):
    """No vLLM needed: a 'trainer' starts the watcher, then two processes with its marker that
    ignore SIGTERM (the watcher's grace passes, then it kills them), and is killed with SIGKILL;
    the engine's folder goes once they have ended."""
    folder = tmp_path / "engine-folder"
    (folder / "base").mkdir(parents=True)
    (folder / "base" / "model.safetensors").write_bytes(b"weights")
    proc = start(
        """
        import os, subprocess, sys, time
        from magrpo.sampling.engine_watch import EngineWatch
        watch = EngineWatch(grace_s=1.0, remove=[FOLDER])
        stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
        for _ in range(2):  # in sessions of their own: a kill of the trainer's group does not reach them
            subprocess.Popen([sys.executable, "-c", stubborn], env={**os.environ, **watch.environment},
                             start_new_session=True)
        print("started", flush=True)
        time.sleep(600)
        """.replace("FOLDER", repr(str(folder)))
    )
    assert proc.stdout.readline() == b"started\n"
    deadline = time.monotonic() + 30
    while len(seen := descendants(proc.pid)) < 3 and time.monotonic() < deadline:  # the watcher and the two
        time.sleep(0.05)
    assert len(seen) == 3, seen
    assert folder.is_dir()
    kill_and_check_nothing_is_left(proc, seen, timeout=20)
    deadline = time.monotonic() + 20
    while folder.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not folder.exists()


def test_an_engine_let_go_has_its_folders_removed_once_its_processes_have_ended(tmp_path):
    from magrpo.sampling.engine_watch import EngineWatch

    folders = [tmp_path / "workdir", tmp_path / "shared"]
    for folder in folders:
        folder.mkdir()
        (folder / "weights.safetensors").write_bytes(b"weights")
    kept = tmp_path / "kept"
    kept.mkdir()
    watch = EngineWatch(grace_s=0.5, remove=folders)
    watch.release()
    assert watch.process.wait(timeout=30) == 0
    assert not any(folder.exists() for folder in folders) and kept.is_dir()  # its own folders, no other


NO_VLLM = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")

ENGINE_OF_ITS_OWN = """
    import time
    from magrpo.models import build_agents
    from magrpo.sampling.vllm_engine import attach_vllm_engines
    from tests.conftest import make_tiny_model, make_tiny_tokenizer
    tok = make_tiny_tokenizer()
    agents = build_agents([(make_tiny_model(len(tok), seed=1, hidden=64), tok)], device="cpu")
    print("building", flush=True)
    attach_vllm_engines(agents, dtype=None, max_model_len=128, max_new_tokens=4, seed=0, kv_cache_gib=0.25,
                        gpu_memory_utilization=None, sleep_mode=False, engine_process="own")
    print("built", flush=True)
    time.sleep(600)
"""


@NO_VLLM
@pytest.mark.parametrize("when", ["while vLLM builds its engine", "after the engine was built"])
def test_a_trainer_killed_with_sigkill_leaves_no_engine_process_behind(when):
    proc = start(ENGINE_OF_ITS_OWN)
    assert b"building\n" in iter(proc.stdout.readline, b"")
    seen: dict[int, bytes] = {}
    deadline = time.monotonic() + 300
    if when == "while vLLM builds its engine":  # the moment the engine core's process exists
        while not any(is_engine(p) for p in seen) and time.monotonic() < deadline:
            assert proc.poll() is None
            seen.update(descendants(proc.pid))
            time.sleep(0.02)
        assert any(is_engine(p) for p in seen), "no engine process started"
    else:
        lines = iter(proc.stdout.readline, b"")  # the script's lines among vLLM's log's
        assert b"built\n" in lines, "the engine was never built"
        seen = descendants(proc.pid)
    kill_and_check_nothing_is_left(proc, seen)
    if when == "while vLLM builds its engine":
        assert b"built" not in proc.stdout.read()  # it was killed before LLM() returned


def test_without_pidfd_the_watcher_waits_for_the_trainer_and_then_removes_its_folders(tmp_path):
    """Where the kernel or a sandbox refuses pidfd_open, the watcher sees the trainer end as its
    parent changing: the folders stay while the trainer lives and go once it is killed."""
    folder = tmp_path / "engine-folder"
    folder.mkdir()
    proc = start(
        """
        import os, time
        from magrpo.sampling import engine_watch

        def refused(pid):
            raise OSError(38, "Function not implemented")

        engine_watch.os.pidfd_open = refused
        if os.fork() == 0:  # the watcher, a child of this 'trainer' as EngineWatch starts it
            engine_watch.main(["engine_watch.py", str(os.getppid()), "token", "0.2", FOLDER])
            os._exit(0)
        print("started", flush=True)
        time.sleep(600)
        """.replace("FOLDER", repr(str(folder)))
    )
    assert proc.stdout.readline() == b"started\n"
    time.sleep(3)  # three of its looks
    assert folder.is_dir()  # the trainer lives: nothing removed
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 20
    while folder.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not folder.exists()
    with pytest.raises(TypeError, match="not one path"):
        __import__("magrpo.sampling.engine_watch", fromlist=["EngineWatch"]).EngineWatch(remove=str(folder))
