"""One process against two ranks, replicated and sharded, on the same global batch, in one sitting.

Each system trains the same steps through the CLI (``magrpo train``; two ranks through its
``--nproc 2``, i.e. torchrun): one process with 2 items per step, and two ranks with 1 item each,
``data_parallel=replicate`` (every rank holds each agent whole) and ``shard`` (FSDP2). The
figures come from each run's metrics.jsonl: seconds per step (mean over the steps after the
first, which warms up), tokens per second of the rollout, and rank 0's peak resident memory.

    .venv/bin/python benchmarks/data_parallel.py --steps 4            # the bundled model, summarize
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SYSTEMS = {  # name: (processes, items per process, data_parallel)
    "1 process x 2 items": (1, 2, "replicate"),
    "2 ranks x 1 item, replicated": (2, 1, "replicate"),
    "2 ranks x 1 item, sharded": (2, 1, "shard"),
}


def run(name: str, args: argparse.Namespace, out: Path) -> dict[str, float]:
    procs, items, mode = SYSTEMS[name]
    magrpo = Path(sys.executable).with_name("magrpo")
    command = [
        str(magrpo),
        "train",
        "--task",
        args.task,
        "--model",
        args.model,
        "--steps",
        str(args.steps),
        "-G",
        str(args.G),
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--batch-size",
        str(items),
        "--nproc",
        str(procs),
        "--eval-items",
        "0",
        "--no-progress",
        "--output-dir",
        str(out),
        "--set",
        f"data_parallel={mode}",
        "--set",
        "save_steps=0",
        "--set",
        "save_minutes=0",
    ]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = rows[1:] or rows
    return {
        "seconds_per_step": statistics.fmean(r["seconds"] for r in timed),
        "tokens_per_second": statistics.fmean(r["tokens_per_second"] for r in timed),
        "peak_rss_mib": rows[-1]["peak_rss_mib"],
        "reward_mean": rows[-1]["reward_mean"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="summarize")
    parser.add_argument("--model", default="default")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("-G", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--output", type=Path, default=None, help="also write the figures here (JSON)")
    args = parser.parse_args()

    figures = {}
    with tempfile.TemporaryDirectory(prefix="bench-dp-") as tmp:
        for i, name in enumerate(SYSTEMS):
            figures[name] = run(name, args, Path(tmp) / str(i))
            print(f"{name}: {figures[name]}", flush=True)
    base = figures["1 process x 2 items"]
    print(
        f"\n{args.task}, model {args.model}, {args.steps} steps, G={args.G}, {args.max_new_tokens} new tokens, "
        f"2 items per step, {os.cpu_count()} CPUs\n"
    )
    print("| system | s / step | x one process | rollout tokens / s | peak RSS of rank 0 (MiB) |")
    print("|---|---:|---:|---:|---:|")
    for name, f in figures.items():
        print(
            f"| {name} | {f['seconds_per_step']:.1f} | {base['seconds_per_step'] / f['seconds_per_step']:.2f} | "
            f"{f['tokens_per_second']:.0f} | {f['peak_rss_mib']:.0f} |"
        )
    if args.output:
        args.output.write_text(
            json.dumps({"args": vars(args) | {"output": str(args.output)}, "figures": figures}, indent=1)
        )


if __name__ == "__main__":
    main()
