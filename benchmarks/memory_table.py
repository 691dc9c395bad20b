"""How training memory per GPU scales with agents, G, completion length and ranks: the peak of
``magrpo plan``'s estimate (magrpo.memory_plan: every term, and how each is estimated, is in
docs/plan.md) for the models' published configs, on 80 GiB GPUs, at the config's defaults (float32
weights and AdamW, bf16 autocast and a bf16 sampling copy, update micro-batch 16, log-softmax
chunk 128), a 512-token prompt, one turn.

Replicated, every rank holds each agent whole and ranks divide the items, so adding ranks grows
the batch, not the model that fits; sharded over K ranks (FSDP2) each keeps 1/K of the weights,
gradients and AdamW moments, and every agent's weights whole while sampling.

    python benchmarks/memory_table.py        # prints the Markdown table in docs/distributed.md
"""

from __future__ import annotations

from magrpo.config import MAGRPOConfig
from magrpo.memory_plan import KNOWN_MODELS, Device, GiB, Placement, Workload, for_placement, plan_memory

GPU = Device("cuda:0", 80 * GiB, "80GB")
#: the models of the table, with what they are to this project
MODELS = {
    "SmolLM2-135M-Instruct": "bundled",
    "Qwen3-1.7B": "paper: writing",
    "Qwen2.5-Coder-3B-Instruct": "paper: coding",
}
#: (agents, items per rank, G, completion tokens)
SHAPES = ((2, 1, 4, 256), (2, 4, 4, 256), (2, 4, 8, 512), (1, 4, 4, 256))


def per_rank_gib(model: str, agents: int, items: int, G: int, completion: int, ranks: int, shard: bool) -> float:
    config = MAGRPOConfig(num_agents=agents, num_generations=G, batch_size=items, max_new_tokens=completion)
    placement = Placement(("cuda:0",) * agents, ranks=ranks, shard=shard)
    shape = KNOWN_MODELS[model]
    plan = plan_memory(for_placement(config, placement), [shape] * agents, [GPU], Workload(512), placement)
    return plan.peak / GiB


def table() -> str:
    lines = [
        "| model | params | agents | items/rank x G | prompt + completion | GiB per rank, replicated | "
        "sharded over 2 ranks | over 8 ranks |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model, role in MODELS.items():
        for agents, items, G, completion in SHAPES:
            gib = [
                per_rank_gib(model, agents, items, G, completion, ranks, shard)
                for ranks, shard in ((1, False), (2, True), (8, True))
            ]
            lines.append(
                f"| {model} ({role}) | {KNOWN_MODELS[model].params / 1e9:.2f} B | {agents} | {items} x {G} | "
                f"512 + {completion} | " + " | ".join(f"{g:.1f}" for g in gib) + " |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
