"""What it costs to bring an engine up to an agent's new weights, by route, on this machine.

    .venv/bin/python benchmarks/push_cost.py [--models default,qwen0.5b-shape] [--pushes 3]

For each model, one fully trained agent pushes its weights ``--pushes`` times (the median is
reported) through each route an engine can take them by:

- ``in process``: an engine in the training process takes the live tensors (no copy);
- ``own process``: an engine in a process of its own reads a safetensors file in /dev/shm, written
  one tensor at a time (vllm_engine_process="own");
- ``server``: a rollout server (``magrpo vllm-serve`` on 127.0.0.1) receives the safetensors bytes
  streamed over HTTP, writes them to /dev/shm and loads them (vllm_mode="server").

Models: ``default`` (the bundled SmolLM2-135M-Instruct) and ``qwen0.5b-shape`` (a random-initialised
model of Qwen2.5-0.5B's published shape: 494M parameters, tied embeddings; the cost of a push
depends on the bytes, not on the values). Float32 engines (the CPU default). Prints a table and
one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared modules
from provenance import describe, provenance  # noqa: E402

#: Qwen2.5-0.5B's published shape (its config.json)
QWEN_05B_SHAPE = dict(
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    tie_word_embeddings=True,
    rope_theta=1000000.0,
)


def model_folder(name: str, workdir: Path) -> str:
    """A folder (or magrpo model name) for ``name``."""
    if name == "default":
        return "default"
    if name != "qwen0.5b-shape":
        raise SystemExit(f"--models: {name!r} unknown; choose default or qwen0.5b-shape")
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    folder = workdir / name
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**QWEN_05B_SHAPE))
    model.save_pretrained(folder)
    # any tokenizer serves: a push moves weights only (the bundled model's, saved beside them)
    from magrpo.models.loading import resolve_model_source

    AutoTokenizer.from_pretrained(resolve_model_source("default")).save_pretrained(folder)
    return str(folder)


def timed(call, repeats: int) -> float:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def measure(spec: str, pushes: int) -> dict[str, Any]:
    from magrpo.models import build_agents
    from magrpo.sampling.vllm_client import attach_remote_engines
    from magrpo.sampling.vllm_engine import attach_vllm_engines
    from magrpo.sampling.vllm_server import ServerProcess
    from magrpo.sampling.weights import engine_weights

    (agent,) = build_agents([spec], device="cpu")
    megabytes = sum(s.nbytes for s in engine_weights(agent.model)) / 2**20
    figures: dict[str, Any] = {"model": spec, "parameters_m": agent.model.num_parameters() / 1e6, "mib": megabytes}
    options = dict(dtype=None, max_model_len=512, max_new_tokens=16, seed=0, kv_cache_gib=0.25)
    options.update(gpu_memory_utilization=None, sleep_mode=False)
    for route, process in (("in_process", "training"), ("own_process", "own")):
        (engine,) = attach_vllm_engines([agent], engine_process=process, **options)
        figures[route] = timed(lambda engine=engine: engine._reload_weights(agent), pushes)
        agent.rollout_engine = None
        del engine
    with ServerProcess([spec], "--kv-cache-gib", "0.25", "--max-model-len", "512") as server:
        (remote,) = attach_remote_engines([agent], server.url, timeout=600)
        figures["server"] = timed(lambda: remote.push(agent), pushes)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="default,qwen0.5b-shape")
    parser.add_argument("--pushes", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="push-cost-") as workdir:
        for name in args.models.split(","):
            rows.append(measure(model_folder(name, Path(workdir)), args.pushes))
            rows[-1]["model"] = name
            print(f"... {name}: {rows[-1]}", file=sys.stderr, flush=True)
    print(f"Produced by {describe(provenance())}; median of {args.pushes} pushes, float32 engines.\n")
    print("| model | parameters | MiB pushed | in process s | own process s | server s | server MiB/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['parameters_m']:.0f}M | {r['mib']:.0f} | {r['in_process']:.2f} | "
            f"{r['own_process']:.2f} | {r['server']:.2f} | {r['mib'] / r['server']:.0f} |"
        )
    print(json.dumps({"push_cost": rows}))


if __name__ == "__main__":
    main()
