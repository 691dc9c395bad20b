"""What a run writes to disk: save_strategy ("steps" or "no"), save_only_model and
save_final_checkpoint, TRL's storage options."""

import json

import pytest

from magrpo import CheckpointError, ConfigError, MAGRPOConfig, MAGRPOTrainer
from magrpo.checkpoint import OPTIMIZER_FILE, STATE_FILE, verify_checkpoint
from magrpo.disk import folder_bytes


def a_reward(*, completions, **_):
    return [float(len(c0) + 2 * len(c1)) for c0, c1 in completions]


def train(agents, folder, resume=None, **config):
    args = MAGRPOConfig(
        num_generations=2, max_new_tokens=2, max_steps=3, seed=0, output_dir=str(folder), log_samples_steps=1, **config
    )
    trainer = MAGRPOTrainer(
        agents=agents,
        reward_func=a_reward,
        train_dataset=[{"question": "q"}] * 4,
        formatters=[lambda item: item["question"]] * 2,
        args=args,
    )
    trainer.train(progress=False, resume_from_checkpoint=resume)
    return trainer


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_by_default_the_end_writes_the_final_weights_and_no_checkpoint(cpu_agents, tmp_path, capsys):
    train(cpu_agents, tmp_path / "run", save_steps=2)
    run = tmp_path / "run"
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-2"]  # by save_steps, not at the end
    assert (run / "final" / "agent_0" / "model.safetensors").is_file()
    size = folder_bytes(run)
    assert f"the run folder {str(run)!r} holds " in capsys.readouterr().out
    assert size == sum(p.stat().st_size for p in run.rglob("*") if p.is_file())


def test_save_final_checkpoint_makes_the_end_resumable(cpu_agents, tmp_path):
    train(cpu_agents, tmp_path / "run", save_steps=2, save_final_checkpoint=True)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-2", "step-3"]
    assert json.loads((tmp_path / "run" / "checkpoints" / "step-3" / "manifest.json").read_text())["step"] == 3


def test_save_strategy_no_writes_the_logs_and_nothing_else(cpu_agents, tmp_path):
    train(cpu_agents, tmp_path / "run", save_strategy="no", save_steps=1, save_minutes=0.0)
    run = tmp_path / "run"
    assert not (run / "checkpoints").exists() and not (run / "final").exists()
    written = files_under(run)
    assert "metrics.jsonl" in written and "samples.jsonl" in written
    assert not any(name.endswith((".safetensors", ".pt", ".bin")) for name in written), written
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3


def test_a_model_only_checkpoint_has_the_weights_and_refuses_to_resume(cpu_agents, tmp_path):
    trainer = train(cpu_agents, tmp_path / "run", save_steps=1, save_only_model=True, save_total_limit=None)
    checkpoint = tmp_path / "run" / "checkpoints" / "step-3"
    manifest = verify_checkpoint(checkpoint)
    assert manifest["model_only"] is True
    names = files_under(checkpoint)
    assert "agent_0/model.safetensors" in names and "agent_1/model.safetensors" in names
    assert not any(name.endswith(OPTIMIZER_FILE) or name == STATE_FILE for name in names), names
    # the very weights the run ended with
    from safetensors.torch import load_file

    saved = load_file(checkpoint / "agent_1" / "model.safetensors")
    live = trainer.agents[1].model.state_dict()
    assert all(saved[name].equal(live[name]) for name in saved)
    with pytest.raises(CheckpointError, match="holds the agents' weights only .*save_only_model=True.* cannot resume"):
        train(cpu_agents, tmp_path / "again", resume=str(tmp_path / "run"), save_steps=1)


def test_the_storage_options_are_checked_before_any_compute():
    assert MAGRPOConfig.from_dict({"save_strategy": False}).save_strategy == "no"  # --set save_strategy=no in YAML
    with pytest.raises(ConfigError, match=r"save_strategy='epoch' is not valid; choose one of 'steps', 'no'"):
        MAGRPOConfig(save_strategy="epoch")
    with pytest.raises(ConfigError, match=r"save_final_checkpoint=True with save_strategy='no'"):
        MAGRPOConfig(save_strategy="no", save_final_checkpoint=True)
    with pytest.raises(ConfigError, match=r"save_only_model=True with save_strategy='no'"):
        MAGRPOConfig(save_strategy="no", save_only_model=True)
