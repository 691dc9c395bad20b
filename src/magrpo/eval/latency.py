"""How long a complete joint answer takes: the team (its agents sampling at the same time) against
one model writing the whole answer, on the same prompts.

The team samples through :meth:`magrpo.sampling.Sampler.sample_team` exactly as in training (agents with
their own models in threads, the CPU threads split between them; agents on one LoRA base take
turns); the single model gets every thread and N times the new-token budget of one agent (it
writes every part). Greedy decoding with the default (fast) sampler, one item at a time: the
figure is latency per joint answer, not throughput.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Mapping, Sequence

import torch

from magrpo.models.agent import AgentPolicy
from magrpo.sampling import greedy_sampler
from magrpo.types import Formatter


def team_vs_single_latency(
    agents: Sequence[AgentPolicy],
    formatters: Sequence[Formatter],
    single_formatter: Formatter,
    items: Sequence[Mapping[str, Any]],
    *,
    max_new_tokens: int,
) -> dict[str, float]:
    team_sampler = greedy_sampler(max_new_tokens)
    single_sampler = greedy_sampler(max_new_tokens * len(agents))
    team_times, single_times, team_tokens, single_tokens = [], [], 0, 0
    for item in items:
        started = time.perf_counter()
        rollouts = team_sampler.sample_team(agents, [[fmt(item)] for fmt in formatters])
        team_times.append(time.perf_counter() - started)
        team_tokens += sum(r.num_completion_tokens for r in rollouts)
        started = time.perf_counter()
        single_tokens += single_sampler.sample(agents[0], [single_formatter(item)]).num_completion_tokens
        single_times.append(time.perf_counter() - started)
    team, single = statistics.mean(team_times), statistics.mean(single_times)
    return {
        "latency/items": float(len(items)),
        "latency/team_seconds": team,
        "latency/single_agent_seconds": single,
        "latency/speedup": single / team if team > 0 else float("nan"),
        "latency/team_tokens_per_answer": team_tokens / len(items),
        "latency/single_agent_tokens_per_answer": single_tokens / len(items),
        "latency/cores": float(torch.get_num_threads()),
    }


__all__ = ["team_vs_single_latency"]
