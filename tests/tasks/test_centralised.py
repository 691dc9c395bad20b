"""Centralised MAGRPO's task: one policy, the single set-up's prompt, its reply cut into the
agents' parts and scored as the team's, with the team's tokens; it trains and evaluates as any
one-agent task, and the CLI names it."""

from __future__ import annotations

import pytest

from magrpo import MAGRPOConfig, MAGRPOTrainer
from magrpo.models import build_agents
from magrpo.tasks import get_task
from tests.conftest import make_tiny_model


def test_the_centralised_task_scores_one_reply_as_the_team_its_parts():
    team, central = get_task("summarize"), get_task("summarize-centralised")
    assert central.name == "summarize-centralised" and central.num_agents == 1
    assert central.config_overrides["max_new_tokens"] == 2 * team.config_overrides.get("max_new_tokens", 128)
    item = team.load_split("eval")[0]
    assert central.formatters[0](item) == team.single_agent_formatter(item)
    # a reply of the reference's first sentence, a blank line, then the whole reference
    reply = item["reference"].split(". ")[0] + ".\n\n" + item["reference"]
    parts = team.split_single_answer(reply, item)
    columns = {k: [v] for k, v in item.items()}
    whole = central.scorer(completions=[reply], prompts=[central.formatters[0](item)], **columns)
    split = team.scorer(completions=[parts], prompts=[central.formatters[0](item)], **columns)
    assert parts[1] == item["reference"] and whole == split
    assert whole[0]["reward"] > 2 and whole[0]["rougeL"] > 0.8
    assert central.execution_feedback is None and central.single_agent_formatter is None


def test_a_task_without_a_single_model_prompt_cannot_be_centralised():
    with pytest.raises(ValueError, match="unknown task 'poetry-centralised'; choose one of coding"):
        get_task("poetry-centralised")


def test_centralised_magrpo_trains_one_policy_and_reports_the_teams_figures(tiny_tokenizer, tmp_path):
    task = get_task("coding-centralised")
    items = task.load_split("train")[:2]
    (agent,) = build_agents([(make_tiny_model(len(tiny_tokenizer), seed=1), tiny_tokenizer)], device="cpu")
    trainer = MAGRPOTrainer(
        agents=[agent],
        scorer=task.scorer,
        formatters=task.formatters,
        train_dataset=items,
        eval_dataset=items[:1],
        args=MAGRPOConfig(
            num_agents=1,
            num_generations=2,
            max_new_tokens=4,
            max_steps=1,
            output_dir=str(tmp_path),
            save_steps=0,
            save_minutes=0,
        ),
    )
    history = trainer.train(progress=False)
    assert "agent_0/loss" in history[0] and "agent_1/loss" not in history[0]
    figures = trainer.evaluate()
    assert {"reward", "pass@1"} <= figures.keys()  # the team's coding figures, from one reply
