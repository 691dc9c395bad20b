"""Every script under examples/ runs, on the bundled model with tiny settings, so none can rot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

pytestmark = pytest.mark.slow


def run_example(name: str, *args: str, env: dict | None = None) -> str:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_every_example_has_a_test():
    tested = {"custom_reward.py", "custom_env.py", "heterogeneous_team.py", "eval_checkpoint.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


def test_custom_reward_on_own_jsonl(tmp_path):
    out = run_example(
        "custom_reward.py",
        "--steps",
        "1",
        "--num-generations",
        "2",
        "--max-new-tokens",
        "12",
        "--output-dir",
        str(tmp_path / "run"),
    )
    assert "held-out mean joint reward:" in out and "(max 3.0)" in out
    assert (tmp_path / "run" / "final" / "agent_1").is_dir() and (tmp_path / "run" / "metrics.jsonl").is_file()


def test_custom_multi_turn_env(tmp_path):
    out = run_example("custom_env.py", "--steps", "1", "--max-new-tokens", "8", "--output-dir", str(tmp_path / "run"))
    assert "2 turn(s)" in out
    for key in ("turn_1/reward", "turn_2/reward", "packs_it"):
        assert f"held-out {key}:" in out


def test_heterogeneous_team_then_its_checkpoint_against_the_single_model(tmp_path):
    from magrpo.models import bundled_model_dir
    from magrpo.models.presets import BUNDLED_CACHE_NAME, bundled_gguf_path
    from tests.models.gguf_files import tiny_llama, write_gguf

    # a second, different model: a GGUF file of a tiny Llama, converted into this test's own cache
    other = write_gguf(tiny_llama(49152, seed=3), tmp_path / "other.gguf", bundled_gguf_path())
    cache = tmp_path / "cache"
    (cache / "models").mkdir(parents=True)
    (cache / "models" / BUNDLED_CACHE_NAME).symlink_to(bundled_model_dir())  # the bundled model, converted once
    env = {"MAGRPO_CACHE": str(cache)}
    run_dir = tmp_path / "run"
    out = run_example(
        "heterogeneous_team.py",
        "--models",
        "default",
        str(other),
        "--steps",
        "1",
        "--num-generations",
        "2",
        "--max-new-tokens",
        "8",
        "--eval-items",
        "1",
        "--output-dir",
        str(run_dir),
        env=env,
    )
    assert "agent_0: LlamaForCausalLM" in out and "agent_1: PeftModelForCausalLM" in out
    assert "held-out reward:" in out and "held-out rougeL:" in out
    assert (run_dir / "final" / "agent_1" / "adapter_config.json").is_file()
    assert (run_dir / "final" / "agent_0" / "config.json").is_file()

    out = run_example("eval_checkpoint.py", str(run_dir / "final"), "--items", "1", "--max-new-tokens", "8", env=env)
    lines = [line.split() for line in out.strip().splitlines()]
    rows = lines[lines.index(["figure", "team", "single"]) + 1 :]
    assert all(len(row) == 3 for row in rows)
    assert {"reward", "reward_normalised", "rougeL"} <= {row[0] for row in rows}
