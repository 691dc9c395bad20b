"""A user's script that would start vLLM engines of their own process from module-level code,
outside ``if __name__ == "__main__":``, is refused in one message naming the script, the line and
the fix, before any engine starts; everything a spawned child does not run again passes. Each
case is a real script run by a real interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from magrpo.spawn_guard import check_main_is_guarded

SRC = str(Path(__file__).resolve().parents[1] / "src")

#: what every script starts with: the check as the engines' start calls it
HEADER = """\
from magrpo.spawn_guard import check_main_is_guarded


def start_engines():
    check_main_is_guarded()
    print("engines started")
"""


def run(args: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=60
    )


def write(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + textwrap.dedent(body))
    return path


def refusal(path: Path, line: int, text: str) -> str:
    return (
        f"magrpo.errors.ConfigError: vLLM starts its engines in processes of their own, and each runs {path} "
        f"again from the top; line {line} of it (`{text}`), which starts them, is not under "
        f'`if __name__ == "__main__":`, so each engine\'s process would start training again. Put the training '
        f'code of {path} under `if __name__ == "__main__":` (line {line} included), or set '
        f'vllm_engine_process="training"'
    )


def assert_refused(result: subprocess.CompletedProcess, path: Path, line: int, text: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "engines started" not in result.stdout
    assert result.stderr.strip().splitlines()[-1] == refusal(path, line, text)


def assert_allowed(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "engines started"


def test_module_level_code_outside_a_guard_is_refused_naming_script_line_and_fix(tmp_path):
    script = write(tmp_path / "train.py", "\nprint('training')\nstart_engines()\n")
    assert_refused(run([str(script)], tmp_path), script, 9, "start_engines()")
    # the same by a relative path: the message names the file the child would run
    assert_refused(run(["train.py"], tmp_path), script, 9, "start_engines()")


def test_a_function_called_from_unguarded_module_level_code_is_refused_at_the_calling_line(tmp_path):
    script = write(
        tmp_path / "train.py",
        """
        def main():
            start_engines()


        if True:  # a block that is no guard
            main()
        """,
    )
    assert_refused(run([str(script)], tmp_path), script, 13, "main()")


def test_an_unguarded_module_run_with_dash_m_is_refused_a_package_main_is_not(tmp_path):
    """``python -m pkg.train`` runs pkg/train.py again in a spawned child, as ``__mp_main__``;
    ``python -m pkg`` runs pkg/__main__.py, which a child never runs again."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    module = write(tmp_path / "pkg" / "train.py", "start_engines()\n")
    write(tmp_path / "pkg" / "__main__.py", "start_engines()\n")
    assert_refused(run(["-m", "pkg.train"], tmp_path), module, 7, "start_engines()")
    assert_allowed(run(["-m", "pkg"], tmp_path))


def test_a_thread_started_by_unguarded_module_level_code_is_refused(tmp_path):
    script = write(
        tmp_path / "train.py",
        """
        from concurrent.futures import ThreadPoolExecutor

        ThreadPoolExecutor(1).submit(start_engines).result()
        """,
    )
    # one statement starts the thread and waits for it: the main thread is on that line throughout
    result = run([str(script)], tmp_path)
    assert "engines started" not in result.stdout
    line = "ThreadPoolExecutor(1).submit(start_engines).result()"
    assert refusal(script, 10, line).removeprefix("magrpo.errors.") in result.stderr


@pytest.mark.parametrize(
    "body",
    [
        """
        if __name__ == "__main__":
            start_engines()
        """,
        """
        def main():
            print("training")
            start_engines()


        if '__main__' == __name__:
            try:
                main()
            finally:
                print("done")
        """,
        """
        if __name__ != "__main__":
            pass
        else:
            start_engines()
        """,
    ],
    ids=["in-a-guard", "in-a-function-called-from-a-guard", "in-the-else-of-a-negated-guard"],
)
def test_code_under_a_guard_is_allowed(tmp_path, body):
    script = write(tmp_path / "train.py", body)
    result = run([str(script)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "engines started" in result.stdout
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    write(tmp_path / "pkg" / "train.py", body)
    assert "engines started" in run(["-m", "pkg.train"], tmp_path).stdout


def test_code_that_no_child_runs_again_is_allowed(tmp_path):
    """``python -c``, a script on standard input, and this test itself (pytest's own main)."""
    code = HEADER + "start_engines()\n"
    assert_allowed(run(["-c", code], tmp_path))
    assert_allowed(run(["-"], tmp_path, stdin=code))
    check_main_is_guarded()
