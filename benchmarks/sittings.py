"""Sittings of one study that run beside each other (other seeds or systems, one per core) and
write the same results file: one writes at a time, and each keeps what the others finished."""

from __future__ import annotations

import fcntl
import json
import os
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


def write_whole(path: Path, text: str) -> None:
    """Writes ``path`` whole or not at all (a sibling file, then a rename): a sitting starting beside
    the writer may read it meanwhile."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)
