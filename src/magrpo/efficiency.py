"""How long a complete joint answer takes: the team (agents generating concurrently) against one
model writing the whole answer, on the same prompts.

Each agent of the team generates in its own thread with ``cores // num_agents`` intra-op threads
(agents on separate cores); the single model gets every core and N times the new-token budget of one
agent (it writes every part). Greedy decoding, one item at a time: the figure is latency per joint
answer, not throughput.
"""

from __future__ import annotations


import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping, Sequence

import torch

from magrpo.models import AgentPolicy
from magrpo.rollout import sample_completions
from magrpo.types import Formatter


def _generate(agent: AgentPolicy, observation: Any, max_new_tokens: int) -> int:
    rollout = sample_completions(agent, [observation], num_generations=1, max_new_tokens=max_new_tokens, temperature=0.0)
    return rollout.num_completion_tokens


def team_vs_single_latency(
    agents: Sequence[AgentPolicy],
    formatters: Sequence[Formatter],
    single_formatter: Formatter,
    items: Sequence[Mapping[str, Any]],
    *,
    max_new_tokens: int,
) -> dict[str, float]:
    cores = torch.get_num_threads()
    per_agent_threads = max(1, cores // len(agents))
    team_times, single_times, team_tokens, single_tokens = [], [], 0, 0
    for item in items:
        torch.set_num_threads(per_agent_threads)
        started = time.perf_counter()
        # agents sharing one model (LoRA) would switch each other's adapter mid-generation
        shared = len({id(a.model) for a in agents}) < len(agents)
        with ThreadPoolExecutor(1 if shared else len(agents)) as pool:
            counts = list(pool.map(lambda pair: _generate(pair[0], pair[1](item), max_new_tokens), zip(agents, formatters)))
        team_times.append(time.perf_counter() - started)
        team_tokens += sum(counts)
        torch.set_num_threads(cores)
        started = time.perf_counter()
        single_tokens += _generate(agents[0], single_formatter(item), max_new_tokens * len(agents))
        single_times.append(time.perf_counter() - started)
    torch.set_num_threads(cores)
    team, single = statistics.mean(team_times), statistics.mean(single_times)
    return {
        "latency/items": float(len(items)),
        "latency/team_seconds": team,
        "latency/single_agent_seconds": single,
        "latency/speedup": single / team if team > 0 else float("nan"),
        "latency/team_tokens_per_answer": team_tokens / len(items),
        "latency/single_agent_tokens_per_answer": single_tokens / len(items),
        "latency/cores": float(cores),
    }



