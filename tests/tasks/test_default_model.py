"""One real training step of every built-in task on the bundled default model (SmolLM2-135M),
including a two-turn coding run with execution feedback."""

from __future__ import annotations

import json

import pytest

from magrpo import MAGRPOConfig, MAGRPOTrainer
from magrpo.models import build_agents
from magrpo.tasks import get_task

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_agents():
    return build_agents(["default", "default"], device="cpu")


def one_step(agents, task_name, tmp_path, **config):
    task = get_task(task_name)
    args = MAGRPOConfig(num_generations=2, max_new_tokens=12, max_steps=1, output_dir=str(tmp_path), **config)
    feedback = task.execution_feedback() if config.get("num_turns", 1) > 1 else None
    trainer = MAGRPOTrainer(
        agents=agents,
        scorer=task.scorer,
        train_dataset=task.load_split("train")[:2],
        eval_dataset=task.load_split("eval")[:1],
        formatters=task.formatters,
        args=args,
        feedback=feedback,
        is_solved=task.is_solved,
        agent_roles=task.agent_roles,
    )
    history = trainer.train(progress=False)
    return trainer, history


@pytest.mark.parametrize("task_name", ["summarize", "expand"])
def test_one_step_of_each_writing_task(default_agents, task_name, tmp_path):
    trainer, history = one_step(default_agents, task_name, tmp_path)
    assert len(history) == 1 and history[0]["tokens_generated"] > 0
    figures = trainer.evaluate()
    assert {"reward", "level_structure", "rouge1", "rouge2", "rougeL"} <= set(figures)
    assert (tmp_path / "final" / "agent_0" / "model.safetensors").is_file()


def test_two_turn_coding_step_with_execution_feedback(default_agents, tmp_path):
    trainer, history = one_step(default_agents, "coding", tmp_path, num_turns=2)
    assert "turn_2/reward_mean" in history[0]
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [s["turn"] for s in samples] == [1, 1] + [2] * 4  # 2 joint actions, each expanded into 2
    second = samples[2]
    first_turn_answer = samples[0]["completions"][0]
    helper = second["prompts"][0]  # the helper's second observation: its chat so far, as messages
    assert "Feedback on your last answer" in helper[-1]["content"]
    assert any(first_turn_answer in message["content"] for message in helper[:-1])
    figures = trainer.evaluate()
    assert {"turn_1/reward", "turn_2/reward", "turn_1/pass@1", "turn_2/tests_passed", "reward"} <= set(figures)
