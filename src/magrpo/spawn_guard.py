"""Whether the user's script survives processes started with ``spawn``.

A process started with multiprocessing's ``spawn`` method (as vLLM starts an engine of its own
process: always on CPU, and on CUDA once CUDA is initialised) first runs the parent's ``__main__``
module again, as ``__mp_main__``. A script that trains at module level, not under ``if __name__ ==
"__main__":``, would train again in each child and start engines from there, which Python refuses
half-way with an error that names neither the script nor the fix. :func:`check_main_is_guarded`
says so first, in one message, before any process starts.

Only the standard library: the check runs before anything heavy is imported.
"""

from __future__ import annotations

import ast
import linecache
import os
import sys
import threading
from types import FrameType

from magrpo.errors import ConfigError


def rerun_main_file() -> str | None:
    """The file of ``__main__`` that a spawned child runs again, or None where it runs none:
    an interactive session, ``python -c``, a notebook, a package run with ``python -m package``
    (its ``__main__.py``), IPython's launcher (the rules of ``multiprocessing.spawn``)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not path:
        return None
    spec_name = getattr(getattr(main, "__spec__", None), "name", None)
    if spec_name is not None:  # ``python -m name``: the child runs the module ``name`` again
        if spec_name == "__main__" or spec_name.endswith(".__main__"):
            return None
    elif os.path.splitext(os.path.basename(path))[0] == "ipython":
        return None
    return path


def main_module_line(path: str) -> int | None:
    """The line the module-level code of ``__main__`` (file ``path``) is running in the main
    thread, or None where it runs none (no ``<module>`` frame of that file on the main thread's
    stack: pytest, an interactive prompt after ``python -i``)."""
    main = sys.modules["__main__"]
    frame: FrameType | None = sys._current_frames().get(threading.main_thread().ident)
    target = os.path.realpath(path)
    while frame is not None:
        code = frame.f_code
        if (
            code.co_name == "<module>"
            and frame.f_globals is main.__dict__
            and os.path.realpath(code.co_filename) == target
        ):
            return frame.f_lineno
        frame = frame.f_back
    return None


def _is_name_main(test: ast.expr, op: type) -> bool:
    """``__name__ == "__main__"`` (either way round) with the comparison ``op``."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], op)):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s for s in sides if isinstance(s, ast.Name) and s.id == "__name__"]
    texts = [s for s in sides if isinstance(s, ast.Constant) and s.value == "__main__"]
    return len(names) == 1 and len(texts) == 1


def guarded_lines(source: str) -> list[tuple[int, int]]:
    """The line spans of ``source`` that run only when it is ``__main__``: the body of each
    ``if __name__ == "__main__":`` (the ``else`` of ``if __name__ != "__main__":``)."""
    spans = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.If):
            continue
        if _is_name_main(node.test, ast.Eq):
            body = node.body
        elif _is_name_main(node.test, ast.NotEq):
            body = node.orelse
        else:
            continue
        if body:
            spans.append((body[0].lineno, body[-1].end_lineno or body[-1].lineno))
    return spans


def unguarded_main_line() -> tuple[str, int] | None:
    """``(file, line)`` where the module-level code of the user's script is running outside an
    ``if __name__ == "__main__":`` block, so that a spawned child would run that line again; None
    where no child would (see :func:`rerun_main_file`), where the script is inside a guard, or
    where its source cannot be read."""
    path = rerun_main_file()
    if path is None:
        return None
    line = main_module_line(path)
    if line is None:
        return None
    try:
        with open(path, "rb") as f:
            source = f.read().decode("utf-8", errors="replace")
        spans = guarded_lines(source)
    except (OSError, SyntaxError, ValueError):
        return None
    if any(start <= line <= end for start, end in spans):
        return None
    return path, line


def check_main_is_guarded() -> None:
    """Refuse to start processes with ``spawn`` (vLLM engines of their own process) while the
    user's script runs them from module-level code outside ``if __name__ == "__main__":``: each
    child would run the script again. Raises :class:`~magrpo.errors.ConfigError` naming the
    script, the line and the fix; does nothing in an interactive session, ``python -c``, a
    notebook, under pytest, or for code inside a guard (or a function called from one)."""
    found = unguarded_main_line()
    if found is None:
        return
    path, line = found
    text = linecache.getline(path, line).strip()
    raise ConfigError(
        f"vLLM starts its engines in processes of their own, and each runs {path} again from the top; "
        f'line {line} of it (`{text}`), which starts them, is not under `if __name__ == "__main__":`, '
        f"so each engine's process would start training again. Put the training code of {path} under "
        f'`if __name__ == "__main__":` (line {line} included), or set vllm_engine_process="training"'
    )


__all__ = ["check_main_is_guarded", "guarded_lines", "rerun_main_file", "unguarded_main_line"]
