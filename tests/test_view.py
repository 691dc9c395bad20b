"""``magrpo view``: a real (tiny) run's page renders in a headless browser without an error and
shows what the team wrote; the CLI's held-out answers are those behind its figures; the reward
curves carry the held-out points on whole-number steps."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from magrpo.cli import app
from tests.conftest import save_tiny_model

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None)
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (.ci/run installs Debian's)")

#: put into a copy of the page: an error of any script marks the document, which --dump-dom shows
ERROR_MARKER = (
    "<script>var root = document.documentElement;"
    " window.addEventListener('error', function (e) { root.setAttribute('data-page-error', String(e.message)); });"
    " window.addEventListener('load', function () { root.setAttribute('data-page-loaded', 'yes'); });</script>"
)


def cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """Two steps of the coding task by two tiny random-initialised models, held-out items before and after."""
    root = tmp_path_factory.mktemp("view")
    models = [save_tiny_model(root / f"model_{seed}", seed=seed) for seed in (1, 2)]
    run = root / "run"
    printed = cli(
        "train", "--task", "coding", "--model", models[0], "--model", models[1], "--steps", "2", "-G", "2",
        "--batch-size", "2", "--max-new-tokens", "6", "--eval-items", "2", "-o", str(run), "--no-progress",
        "--set", "save_strategy='no'", "--set", "learning_rate=0.01", "--log-completions",
    )  # fmt: skip
    (root / "printed.txt").write_text(printed)
    return run


def test_log_completions_prints_each_steps_samples_from_the_cli(run_dir):
    printed = (run_dir.parent / "printed.txt").read_text()
    assert "step 1: 4 of 4 joint actions" in printed and "step 2: 4 of 4 joint actions" in printed
    for row in rows(run_dir / "samples.jsonl"):
        assert row["item_id"] in printed


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_cli_keeps_the_held_out_answers_behind_its_figures(run_dir):
    from magrpo.samples import as_messages
    from magrpo.tasks import get_task

    task = get_task("coding")
    items = task.load_split("eval")[:2]
    for when in ("before", "after"):
        figures = json.loads((run_dir / f"eval_{when}.json").read_text())
        answers = rows(run_dir / f"eval_{when}_samples.jsonl")
        assert [(r["item"], r["turn"]) for r in answers] == [(0, 1), (1, 1)]
        for row, item in zip(answers, items):
            assert row["item_id"] == item["task_id"]
            assert row["prompts"] == [as_messages(fmt(item)) for fmt in task.formatters]
        assert figures["reward"] == pytest.approx(sum(r["reward"] for r in answers) / 2)
        assert figures["level_defined"] == pytest.approx(sum(r["figures"]["level_defined"] for r in answers) / 2)


def page_in_browser(page: Path, tmp_path: Path) -> tuple[str, str]:
    """The DOM chromium builds from a copy of ``page`` with the error marker, and its log."""
    marked = tmp_path / "marked.html"
    marked.write_text(page.read_text().replace("<head>", "<head>" + ERROR_MARKER, 1))
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0", "--dump-dom"]
        + [marked.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout, out.stderr


@needs_browser
def test_the_error_marker_marks_a_page_whose_script_fails(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><head></head><body><script>undefinedFunction();</script></body></html>")
    dom, log = page_in_browser(page, tmp_path)
    assert re.search(r'<html[^>]*data-page-error="[^"]*undefinedFunction', dom)
    assert "Uncaught" in log or "CONSOLE" in log  # what the check of the log looks for


def element_text(dom: str, element_id: str) -> str:
    match = re.search(rf'<pre class="completion" id="{element_id}">(.*?)</pre>', dom, re.S)
    assert match, element_id
    return html.unescape(match.group(1))


@needs_browser
def test_the_view_page_renders_in_a_headless_browser_and_shows_the_teams_completions(run_dir, tmp_path):
    page = tmp_path / "page.html"
    assert "wrote" in cli("view", str(run_dir), "-o", str(page))
    text = page.read_text()
    # self-contained: nothing to fetch, no script of its own
    assert not re.search(r"<script|<link|<img|src=|https?://(?!www\.w3\.org)", text)
    dom, log = page_in_browser(page, tmp_path)
    opening = re.search(r"<html[^>]*>", dom).group(0)
    assert 'data-page-loaded="yes"' in opening and "data-page-error" not in opening, opening
    assert "Uncaught" not in log and "CONSOLE" not in log, log
    # a known completion: step 2's second joint action of its first node, each agent's
    sample = [r for r in rows(run_dir / "samples.jsonl") if r["step"] == 2 and r["node"] == 0 and r["joint"] == 1]
    for agent, completion in enumerate(sample[0]["completions"]):
        assert element_text(dom, f"r0-s2-t1-n0-j1-a{agent}") == completion
    assert f"advantage {sample[0]['advantages'][0]:+.3f}" in dom
    after = rows(run_dir / "eval_after_samples.jsonl")[1]
    assert element_text(dom, "r0-after-t1-i1-a1") == after["completions"][1]
    assert f"item 1 ({after['item_id']})" in dom
    for panel in ("joint reward per step", "loss", "learning_rate", "tokens_per_second", "completions/mean_length"):
        assert f">{panel}" in dom, panel
    shot = tmp_path / "page.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}", "--window-size=1400,2400"]
        + [page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_several_runs_share_the_curves_each_with_its_samples(run_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    page = tmp_path / "both.html"
    cli("view", str(run_dir), str(other), "-o", str(page))
    text = page.read_text()
    for name in ("run", "other"):
        assert f"{name}: mean" in text and f"{name}: agent_0" in text  # the legends of overlaid curves
        assert f"{name}: what the team wrote" in text
    assert 'id="r1-s2-t1-n0-j1-a0"' in text  # the second run's samples have ids of their own
    cli("view", str(run_dir), "-o", str(page), "--last-steps", "1")  # a long run's page: its last steps
    text = page.read_text()
    assert "Training samples: the last 1 of 2 logged steps" in text
    assert 'id="r0-s2-t1-n0-j1-a0"' in text and 'id="r0-s1-' not in text


def test_a_folder_without_a_run_is_refused_by_name(tmp_path):
    result = CliRunner().invoke(app, ["view", str(tmp_path)], env={"COLUMNS": "400"})
    assert result.exit_code == 2
    assert "is not a run folder: it has neither metrics.jsonl nor samples.jsonl" in " ".join(result.output.split())


def test_the_reward_curve_has_the_held_out_points_on_whole_number_steps():
    from magrpo.plots import draw_reward, pyplot

    plt = pyplot()
    history = [
        {"step": s, "reward_mean": m, "reward_min": m - 1, "reward_max": m + 1}
        for s, m in ((1, 0.5), (2, 1.0), (3, 2.0))
    ]
    fig, ax = plt.subplots()
    draw_reward(ax, history, {"before": {"reward": 0.25}, "after": {"reward": 1.75}})
    fig.canvas.draw()
    points = {line.get_label(): line.get_xydata().tolist() for line in ax.get_lines()}
    assert points["held-out before"] == [[0.0, 0.25]] and points["held-out after"] == [[3.0, 1.75]]
    assert points["mean"] == [[1.0, 0.5], [2.0, 1.0], [3.0, 2.0]]
    assert all(float(tick).is_integer() for tick in ax.get_xticks())
    plt.close(fig)


def test_reward_curve_png_is_drawn_again_with_the_held_out_point_after_training(run_dir):
    assert (run_dir / "reward_curve.png").stat().st_mtime >= (run_dir / "eval_after.json").stat().st_mtime


def test_a_run_logged_before_samples_named_their_items_still_shows(run_dir, tmp_path):
    """Older samples.jsonl rows: the rendered prompt text, no item, no joint index, no advantages."""
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(run_dir / "metrics.jsonl", old)
    rendered = "<|im_start|>user\nwrite aux<|im_end|>"
    with (old / "samples.jsonl").open("w") as f:
        for row in rows(run_dir / "samples.jsonl"):
            kept = {k: row[k] for k in ("step", "turn", "node", "completions", "reward", "return")}
            f.write(json.dumps({**kept, "prompts": [rendered, rendered]}) + "\n")
    page = tmp_path / "old.html"
    cli("view", str(old), "-o", str(page))
    text = page.read_text()
    assert html.escape(rendered) in text and "advantage " not in text
    last = [r for r in rows(run_dir / "samples.jsonl") if r["step"] == 2]
    for place, row in enumerate(last[:2]):  # node 0's joint actions, numbered by their order
        assert f'id="r0-s2-t1-n0-j{place}-a1">{html.escape(row["completions"][1])}</pre>' in text
