"""How training memory scales with agents, G, completion length and ranks, computed from model configs.

Per rank and per agent that lives on it (full fine-tuning, float32 master weights, AdamW):
    weights 4 B + gradients 4 B + AdamW moments 8 B per parameter, + a bf16 sampling copy 2 B
    (CUDA default), + the rollout's KV cache: 2 (K, V) x layers x kv_heads x head_dim x rows x
    (prompt + completion) x 2 B (bf16), rows = items per rank x G, + the update's float32
    log-softmax of one chunk: micro-batch rows x chunk x vocab x 4 B.
Activations of the update (micro-batch x length x hidden x layers x ~16 B under autocast) come on
top and are bounded by update_micro_batch_size and gradient_checkpointing. Replicated data
parallelism does not split weights or optimiser states (each rank holds every agent it trains);
it divides the items. Sharded (data_parallel="shard", FSDP2 over K ranks) each rank keeps 16/K B
per parameter, and during the rollout every agent's weights gathered whole (4 B, float32; no
sampling copy): the rollout is the peak, since the update gathers one block at a time.

    python benchmarks/memory_table.py        # prints the Markdown table in docs/distributed.md
"""

from __future__ import annotations

from dataclasses import dataclass

GiB = 2**30


@dataclass(frozen=True)
class Decoder:
    name: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool

    @property
    def params(self) -> int:
        attention = self.hidden * self.heads * self.head_dim * 2 + self.hidden * self.kv_heads * self.head_dim * 2
        mlp = 3 * self.hidden * self.intermediate
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return embeddings + self.layers * (attention + mlp + 2 * self.hidden) + self.hidden


# the published configs (config.json) of the paper's models and of the bundled one
MODELS = [
    Decoder("SmolLM2-135M (bundled)", 49152, 576, 30, 9, 3, 64, 1536, True),
    Decoder("Qwen3-1.7B (paper: writing)", 151936, 2048, 28, 16, 8, 128, 6144, True),
    Decoder("Qwen2.5-Coder-3B (paper: coding)", 151936, 2048, 36, 16, 2, 128, 11008, True),
]


def per_rank_gib(
    m: Decoder,
    *,
    agents: int,
    items_per_rank: int,
    G: int,
    prompt: int,
    completion: int,
    micro_batch: int = 16,
    chunk: int = 128,
    sampling_copy: bool = True,
    shards: int = 1,
) -> float:
    if shards > 1:  # each rank's 1/K of the states, plus the whole float32 weights while sampling
        states = m.params * ((4 + 4 + 8) / shards + 4)
    else:
        states = m.params * (4 + 4 + 8 + (2 if sampling_copy else 0))
    rows = items_per_rank * G
    kv = 2 * m.layers * m.kv_heads * m.head_dim * rows * (prompt + completion) * 2
    logsoftmax = min(micro_batch, rows) * min(chunk, completion) * m.vocab * 4
    return (agents * (states + kv) + logsoftmax) / GiB  # agents sample and update one after the other


def table() -> str:
    lines = [
        "| model | params | agents | items/rank x G | prompt + completion | GiB per rank, replicated | "
        "sharded over 2 ranks | over 8 ranks |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in MODELS:
        for agents, items, G, completion in ((2, 1, 4, 256), (2, 4, 4, 256), (2, 4, 8, 512), (1, 4, 4, 256)):
            gib = [
                per_rank_gib(m, agents=agents, items_per_rank=items, G=G, prompt=512, completion=completion, shards=k)
                for k in (1, 2, 8)
            ]
            lines.append(
                f"| {m.name} | {m.params / 1e9:.2f} B | {agents} | {items} x {G} | 512 + {completion} | "
                + " | ".join(f"{g:.1f}" for g in gib)
                + " |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
