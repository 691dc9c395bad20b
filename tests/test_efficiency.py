import torch

from magrpo.efficiency import team_vs_single_latency
from magrpo.tasks.writing import summarize_task


def test_team_vs_single_latency_reports_both_and_their_ratio(tiny_agents):
    items = [{"q": "q a"}, {"q": "q b"}]
    threads = torch.get_num_threads()
    figures = team_vs_single_latency(
        tiny_agents, [lambda x: x["q"]] * 2, lambda x: x["q"] + " b", items, max_new_tokens=3
    )
    assert torch.get_num_threads() == threads  # restored
    assert figures["latency/items"] == 2.0
    assert figures["latency/speedup"] == figures["latency/single_agent_seconds"] / figures["latency/team_seconds"]
    assert 2 <= figures["latency/team_tokens_per_answer"] <= 6  # two agents, 1..3 tokens each
    assert 1 <= figures["latency/single_agent_tokens_per_answer"] <= 6  # one model, up to 2 x 3 tokens


def test_writing_tasks_have_a_single_model_baseline_prompt():
    task = summarize_task(items_loader=lambda split: [])
    prompt = task.single_agent_formatter({"source": "Some introduction."})[0]["content"]
    assert prompt.startswith("Write both parts below, in order, separated by a blank line.\nPart 1: Write a TL;DR")
    assert "Part 2: Write a detailed summary" in prompt and "Some introduction." in prompt
