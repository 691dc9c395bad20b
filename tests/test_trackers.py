"""Experiment trackers get every step's metrics; the step metrics carry the learning rate, the
advantage figures per agent and the share of groups without signal."""

from __future__ import annotations

import importlib.util
import mmap
from pathlib import Path

import pytest
import torch

from magrpo import ConfigError, MAGRPOConfig, MAGRPOTrainer
from tests.conftest import letter_count_reward


def test_tensorboard_event_files_hold_the_metrics_of_every_step(tiny_agents, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = MAGRPOConfig(
        num_generations=4,
        max_new_tokens=4,
        max_steps=3,
        learning_rate=3e-3,
        output_dir=str(tmp_path),
        report_to="tensorboard",
        log_samples_steps=0,
    )
    trainer = MAGRPOTrainer(
        agents=tiny_agents,
        reward_func=letter_count_reward,
        train_dataset=[{"q": "q a"}],
        formatters=[lambda x: x["q"]] * 2,
        args=args,
    )
    history = trainer.train(progress=False)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    for key in ("reward_mean", "agent_0/loss", "agent_1/advantage_std", "agent_0/learning_rate"):
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [1, 2, 3]
        assert [s.value for s in scalars] == pytest.approx([h[key] for h in history], rel=1e-6)  # stored as float32


def test_advantage_figures_and_groups_without_signal(tiny_agents, tmp_path):
    args = MAGRPOConfig(
        num_generations=4,
        batch_size=2,
        max_new_tokens=3,
        max_steps=1,
        learning_rate=2e-3,
        output_dir=str(tmp_path),
        log_samples_steps=0,
    )
    flat = MAGRPOTrainer(
        agents=tiny_agents,
        reward_func=lambda completions, **_: [1.0] * len(completions),
        train_dataset=[{"q": "q"}],
        formatters=[lambda x: x["q"]] * 2,
        args=args,
    )
    metrics, _ = flat.train_step(flat.next_batch())
    assert metrics["agent_0/zero_advantage_groups"] == 1.0 and metrics["agent_0/advantage_std"] == 0.0
    assert metrics["agent_1/learning_rate"] == 2e-3
    assert metrics["peak_rss_mib"] > 0 and ("cuda_peak_mib" in metrics) == torch.cuda.is_initialized()
    varied = MAGRPOTrainer(
        agents=tiny_agents,
        reward_func=letter_count_reward,
        train_dataset=[{"q": "q"}],
        formatters=[lambda x: x["q"]] * 2,
        args=args,
    )
    metrics, samples = varied.train_step(varied.next_batch())
    assert abs(metrics["agent_0/advantage_mean"]) < 1e-12  # centred on every group's mean
    rewards = [s["reward"] for s in samples]
    groups = [rewards[:4], rewards[4:]]
    assert metrics["agent_0/zero_advantage_groups"] == sum(len(set(g)) == 1 for g in groups) / 2


MISSING = [name for name in ("wandb", "mlflow") if importlib.util.find_spec(name) is None]


@pytest.mark.skipif(not MISSING, reason="wandb and mlflow are both installed here")
def test_a_tracker_that_is_not_installed_is_named_with_its_pip_command_before_any_model_loads(tmp_path):
    name = MISSING[0]
    args = MAGRPOConfig(max_steps=1, output_dir=str(tmp_path), report_to=[name])
    with pytest.raises(ConfigError, match=rf"report_to=\['{name}'\]: {name} is not installed; run: pip install {name}"):
        # agents that could never load: the tracker is refused first
        MAGRPOTrainer(
            agents=["/no/such/model", "/no/such/model"],
            reward_func=letter_count_reward,
            train_dataset=[{"q": "q"}],
            formatters=[lambda x: x["q"]] * 2,
            args=args,
        )
    with pytest.raises(
        ConfigError, match="report_to='comet' is not valid; choose one of 'tensorboard', 'wandb', 'mlflow'"
    ):
        MAGRPOConfig(report_to="comet")


@pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="the per-step host peak needs Linux's VmHWM reset"
)
def test_the_host_memory_peak_is_that_of_each_step(tiny_agents, tmp_path):
    """A step whose reward holds 400 MiB more resident memory reports that peak; the next step,
    holding nothing, does not.

    The 400 MiB are a fresh anonymous mapping, each page written: a ``bytearray`` could be served
    by malloc from heap memory freed earlier in the process but still resident (after the tests
    before this one in a full run), which raises no peak, and both steps would report the same."""
    hungry = iter([True, False])

    def reward(completions, **_):
        if next(hungry):
            with mmap.mmap(-1, 400 * 2**20) as block:  # new pages of the process's own
                page = b"\1" * mmap.PAGESIZE
                for _ in range(len(block) // mmap.PAGESIZE):
                    block.write(page)
        return [float(len(c[0]) + len(c[1])) for c in completions]

    args = MAGRPOConfig(num_generations=2, max_new_tokens=2, max_steps=2, output_dir=str(tmp_path), log_samples_steps=0)
    trainer = MAGRPOTrainer(
        agents=tiny_agents, reward_func=reward, train_dataset=[{"q": "q"}], formatters=[lambda x: x["q"]] * 2, args=args
    )
    first, _ = trainer.train_step(trainer.next_batch())
    second, _ = trainer.train_step(trainer.next_batch())
    assert first["peak_rss_mib"] - second["peak_rss_mib"] > 300, (first["peak_rss_mib"], second["peak_rss_mib"])
