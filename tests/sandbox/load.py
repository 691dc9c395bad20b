"""A busy machine on demand: processes that spin on the CPU, each in a session of its own (so a
kernel that schedules by session, autogroup, gives each its own share), started and stopped by
the code that needs them and bounded in time even if that code dies."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from typing import Iterator

#: a spinning loop that ends by itself after argv[1] seconds of wall clock
_SPIN = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process ``pid`` has used so far, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def busy_processes(count: int, seconds: float = 120.0) -> Iterator[list[subprocess.Popen]]:
    """``count`` processes spinning on the CPU for the block (each ends by itself after
    ``seconds`` at the latest), each the leader of a session of its own; killed and reaped on exit."""
    procs: list[subprocess.Popen] = []
    try:
        for _ in range(count):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _SPIN, str(seconds)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        yield procs
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        for proc in procs:
            proc.wait()
