"""How close ``magrpo plan`` comes to the memory a run really takes, on this machine's CPU.

Three runs of the bundled model (one agent, a team of two, a LoRA team of two; G = 4, the coding
task's first item, a reward that differs for every completion so that every row is updated),
each in a process of its own. A run's memory is its process's peak resident set over its steps
(the trainer's ``peak_rss_mib``, Linux VmHWM reset per step) less the resident set before the
model loaded (the interpreter with torch, transformers and magrpo imported): the run's own
memory. The plan of the same config, on this machine's memory, with the prompt length the run
really had, less its framework-overhead term (which stands for that interpreter), is compared
with it. The first step allocates the AdamW moments, so a run takes at least 2 steps.

Each config runs twice: with ``MALLOC_MMAP_THRESHOLD_=131072`` (every allocation of 128 KiB or
more mapped on its own and returned when freed), so that the resident set follows the live
tensors, which is what the plan counts; and with glibc's malloc as it comes, which raises its
mmap threshold (up to 32 MiB) once a large block is freed and keeps the smaller blocks the update
frees resident in its heap: that retention is the difference between the two columns.

    .venv/bin/python benchmarks/plan_accuracy.py                 # ~5-15 min on the 2-core machine
    .venv/bin/python benchmarks/plan_accuracy.py --tokens 64 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

#: name -> (agents, LoRA)
CONFIGS = {"one agent": (1, False), "team of two": (2, False), "LoRA team of two": (2, True)}


def config(name: str, args: argparse.Namespace, output_dir: str):
    from magrpo import MAGRPOConfig

    agents, lora = CONFIGS[name]
    return MAGRPOConfig(
        num_agents=agents,
        num_generations=4,
        max_new_tokens=args.tokens,
        max_steps=args.steps,
        batch_size=args.items,
        use_lora=lora,
        device="cpu",
        save_steps=0,
        save_minutes=0,
        log_samples_steps=0,
        output_dir=output_dir,
    )


def resident_mib() -> float:
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def measure(name: str, args: argparse.Namespace) -> dict:
    """One run in this process: its memory before the model loads, each step's peak, and the
    prompt and completion lengths it had."""
    from magrpo import MAGRPOTrainer
    from magrpo.tasks.coding import coding_task

    task = coding_task()
    items = task.load_split("train")[: args.items]

    def distinct_reward(*, completions, **_):  # every completion differs, so every row has an advantage
        return [float(len(repr(joint))) for joint in completions]

    before = resident_mib()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(name, args, tmp)
        trainer = MAGRPOTrainer(
            agents=["default"] * cfg.num_agents,
            reward_func=distinct_reward,
            formatters=task.formatters[: cfg.num_agents],
            train_dataset=items,
            args=cfg,
        )
        trainer.train(progress=False)
        rollouts = [rollout for turn in trainer.last_step.turns for rollout in turn.rollouts]
        return {
            "before_mib": before,
            "peak_mib": [row["peak_rss_mib"] for row in trainer.history],
            "zero_advantage_groups": [row.get("agent_0/zero_advantage_groups") for row in trainer.history],
            "prompt_tokens": max(r.prompt_ids.shape[1] for r in rollouts),
            "completion_tokens": max(r.completion_ids.shape[1] for r in rollouts),
        }


def planned(name: str, args: argparse.Namespace, prompt_tokens: int):
    from magrpo.memory_plan import Device, Workload, host_memory, model_shape, plan_memory

    cfg = config(name, args, "unused")
    models = [model_shape("default")] * cfg.num_agents
    return plan_memory(cfg, models, [Device("cpu", host_memory())], Workload(prompt_tokens)).devices[0]


def machine() -> str:
    cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    import torch

    memory = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) / 2**20
    return (
        f"{os.cpu_count()} cores of {cpu.group(1).strip() if cpu else platform.processor()}, {memory:.0f} GiB, "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )


#: label -> the environment a run's process gets beside this one's
ALLOCATORS = {
    "MALLOC_MMAP_THRESHOLD_=131072": {"MALLOC_MMAP_THRESHOLD_": "131072"},
    "glibc as it comes": {},
}


def run_child(name: str, args: argparse.Namespace, allocator: dict[str, str]) -> dict:
    """One run in a process of its own: its figures (see :func:`measure`)."""
    command = [sys.executable, __file__, "--measure", name, "--steps", str(args.steps)]
    command += ["--tokens", str(args.tokens), "--items", str(args.items)]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | allocator
    out = subprocess.run(command, capture_output=True, text=True, check=False, env=environment)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        sys.exit(f"{name}: the run failed:\n{out.stderr[-3000:]}")
    run = json.loads(lines[-1].removeprefix("RESULT "))
    print(f"{name}, {allocator or 'glibc as it comes'}: {json.dumps(run)}", flush=True)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2, help="training steps a run (>= 2: step 2 holds the moments)")
    parser.add_argument("--tokens", type=int, default=48, help="max_new_tokens")
    parser.add_argument("--items", type=int, default=1, help="dataset items per step")
    parser.add_argument("--only", choices=list(CONFIGS), action="append", help="run only these configs")
    parser.add_argument("--measure", choices=list(CONFIGS), help=argparse.SUPPRESS)  # the child process's part
    args = parser.parse_args()
    if args.measure:
        print("RESULT " + json.dumps(measure(args.measure, args)), flush=True)
        return
    rows = []
    for name in args.only or CONFIGS:
        runs = [run_child(name, args, allocator) for allocator in ALLOCATORS.values()]
        prompt = max(run["prompt_tokens"] for run in runs)
        plan = planned(name, args, prompt)
        overhead = next(t.bytes for t in plan.terms if t.what == "framework overhead") / 2**20
        rows.append((name, prompt, runs, plan, plan.peak / 2**20 - overhead))
    print(f"\nmachine: {machine()}")
    print(
        f"G = 4, {args.items} item(s) x {args.tokens} new tokens, {args.steps} steps, bundled SmolLM2-135M, float32\n"
    )
    heads = " | ".join(f"measured MiB, {label} | ratio" for label in ALLOCATORS)
    print(f"| config | prompt tokens | planned MiB (peak phase) | {heads} |")
    print("|---|---:|---:|" + "---:|---:|" * len(ALLOCATORS))
    for name, prompt, runs, plan, own_plan in rows:
        cells = []
        for run in runs:
            measured = max(run["peak_mib"]) - run["before_mib"]
            peak, before = max(run["peak_mib"]), run["before_mib"]
            cells.append(f"{measured:,.0f} ({peak:,.0f} - {before:,.0f}) | {own_plan / measured:.2f}")
        print(f"| {name} | {prompt} | {own_plan:,.0f} ({plan.peak_phase}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
