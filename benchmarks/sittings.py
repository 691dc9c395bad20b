"""Sittings of one study that run beside each other (other seeds or systems, one per core) and
write the same results file: one writes at a time, and each keeps what the others finished."""

from __future__ import annotations

import fcntl
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def one_writer(folder: Path) -> Iterator[dict[str, Any] | None]:
    """Holds ``folder``'s lock while the body writes its results.json; yields that file as it is
    now (None: not written yet), so the body can keep the runs another sitting added meanwhile."""
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        path = folder / "results.json"
        yield json.loads(path.read_text()) if path.is_file() else None
