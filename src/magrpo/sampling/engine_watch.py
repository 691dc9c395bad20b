"""No engine process outlives its trainer, however the trainer ends (``kill -9`` included), from
before the engine is built.

vLLM starts an engine of its own process (its engine core, and the core's workers) with
multiprocessing's ``spawn``: each is a new interpreter started with the environment of the
moment. Before building such an engine, the trainer starts a watcher (this file, run as a script
of the standard library only, in a session of its own) and builds the engine with
``MAGRPO_ENGINE_OF=<token>`` in its environment, which every process of the engine inherits. The
watcher waits on the trainer's pidfd; when the trainer has ended it asks each process whose
environment carries the token to shut down (SIGTERM: vLLM's handler stops its executor and
workers), kills what is left after ``SHUTDOWN_GRACE_S``, and looks again until none is left. An
engine let go by the trainer stops its watcher (a line on the watcher's stdin), which then gives
the engine's processes the same grace to end and kills what is left. Either way it then removes
the folders it was given (the engine's copy of the weights, its adapters): a trainer killed with
SIGKILL leaves nothing behind in the temporary folder or in shared memory.

Run as ``python -I -S engine_watch.py TRAINER_PID TOKEN GRACE_S [FOLDER ...]``.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from typing import Sequence

#: the environment variable that marks an engine's processes
MARKER = "MAGRPO_ENGINE_OF"
#: seconds an engine's processes are given to shut down cleanly before they are killed
SHUTDOWN_GRACE_S = 10.0


class EngineWatch:
    """The trainer's side: a watcher process started now, the marker the engine must be built with."""

    def __init__(self, grace_s: float = SHUTDOWN_GRACE_S, remove: Sequence[os.PathLike | str] = ()) -> None:
        """``remove``: folders the engine writes, removed once its processes have ended."""
        import secrets

        if isinstance(remove, (str, os.PathLike)):  # a path is no list of paths: its characters would be removed
            raise TypeError(f"remove takes a list of folders, not one path: {remove!r}")

        self.token = secrets.token_hex(8)
        env = {k: v for k, v in os.environ.items() if k != MARKER}  # the watcher is no engine process
        folders = [os.path.abspath(folder) for folder in remove]
        command = [sys.executable, "-I", "-S", os.path.abspath(__file__), str(os.getpid()), self.token, str(grace_s)]
        self.process = subprocess.Popen(
            [*command, *folders],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a signal to the trainer's process group (Ctrl-C) does not reach it
            env=env,
        )

    @property
    def environment(self) -> dict[str, str]:
        """What the engine is built with: the marker, and processes started the way it can see them."""
        return {MARKER: self.token, "VLLM_WORKER_MULTIPROC_METHOD": "spawn"}

    def release(self) -> None:
        """The engine was let go: the watcher ends its processes (after the grace) and exits."""
        try:
            self.process.stdin.write(b"stop\n")
            self.process.stdin.close()
        except (OSError, ValueError):
            pass


def marked(token: str, me: int) -> list[int]:
    """Processes whose environment carries the engine's marker (not this one)."""
    needle = f"{MARKER}={token}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return [pid for pid in found if not _ended(pid)]


def _ended(pid: int) -> bool:
    """Dead and waiting to be reaped, or gone (a zombie still takes signals)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def end_engine(token: str, grace_s: float, ask: bool, folders: Sequence[str] = ()) -> None:
    """End every process of the engine: asked with SIGTERM (where ``ask``) and given ``grace_s``
    seconds, then killed; looked for again until none is left. Then remove ``folders``, those the
    engine wrote in."""
    me, deadline = os.getpid(), time.monotonic() + grace_s
    if ask:
        _signal(marked(token, me), signal.SIGTERM)
    while time.monotonic() < deadline and marked(token, me):
        time.sleep(0.2)
    quiet = 0
    while quiet < 3:  # a process being started as the others were killed shows up in a later look
        left = marked(token, me)
        _signal(left, signal.SIGKILL)
        quiet = 0 if left else quiet + 1
        time.sleep(0.1)
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str]) -> None:
    trainer, token, grace_s, folders = int(argv[1]), argv[2], float(argv[3]), argv[4:]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C of the terminal is the trainer's to take
    try:
        pidfd = os.pidfd_open(trainer)
    except (OSError, AttributeError):  # an older kernel, or a sandbox that refuses the call
        pidfd = None
    if os.getppid() != trainer:  # it ended before we looked (our parent is then another)
        end_engine(token, grace_s, True, folders)
        return
    # without a pidfd, the trainer's end shows as our parent changing: looked at every second
    watching, poll_s = ([pidfd, 0], None) if pidfd is not None else ([0], 1.0)
    while True:
        ready, _, _ = select.select(watching, [], [], poll_s)
        if (pidfd is not None and pidfd in ready) or (pidfd is None and os.getppid() != trainer):
            end_engine(token, grace_s, True, folders)  # the trainer has ended: its engine goes too
            return
        if 0 not in ready:
            continue
        line = os.read(0, 64)
        if line.startswith(b"stop"):  # let go: vLLM shuts the engine down; what hangs is killed
            end_engine(token, grace_s, False, folders)
            return
        if not line:  # stdin closed without a word: keep watching the trainer
            watching = [w for w in watching if w != 0]


if __name__ == "__main__":
    main(sys.argv)
