"""Team against single-model latency to a complete joint answer."""

from __future__ import annotations

import torch

from magrpo.eval.latency import team_vs_single_latency


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
