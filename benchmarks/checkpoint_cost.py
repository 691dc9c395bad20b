"""What a full checkpoint of the default team costs: size on disk, seconds to write, seconds from
resume to the first new step. Full fine-tuning and LoRA teams of two SmolLM2-135M agents.

    .venv/bin/python benchmarks/checkpoint_cost.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(out: Path, use_lora: bool) -> dict[str, float]:
    from magrpo import MAGRPOConfig, MAGRPOTrainer
    from magrpo.tasks.coding import coding_task

    task = coding_task()
    items = task.load_split("train")[:2]

    def length_reward(*, completions, **_):  # always a learning signal, so the optimiser holds its moments
        return [float(len(a) + 2 * len(b)) for a, b in completions]

    def trainer(max_steps: int) -> MAGRPOTrainer:
        args = MAGRPOConfig(
            num_generations=2,
            max_new_tokens=16,
            max_steps=max_steps,
            use_lora=use_lora,
            device="cpu",
            save_steps=0,
            save_minutes=0,
            output_dir=str(out),
            log_samples_steps=0,
        )
        return MAGRPOTrainer(
            agents=["default", "default"],
            reward_func=length_reward,
            formatters=task.formatters,
            train_dataset=items,
            args=args,
        )

    first = trainer(1)
    first.train(progress=False)  # ends with a full checkpoint at step 1
    assert all(opt.state for opt in first.optimizers), "no optimiser step was taken"
    started = time.perf_counter()
    path = first.checkpoint(out / "checkpoints" / "step-1")
    write_s = time.perf_counter() - started
    second = trainer(2)
    started = time.perf_counter()
    second.train(progress=False, resume_from_checkpoint=out)
    resume_to_step_s = time.perf_counter() - started
    return {
        "checkpoint_mib": folder_size(path) / 2**20,
        "write_seconds": write_s,
        "resume_to_first_new_step_seconds": resume_to_step_s,
        "first_new_step_seconds": second.history[-1]["seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="where to write the runs (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        results = {name: measure(root / name, lora) for name, lora in (("full", False), ("lora", True))}
    for name, figures in results.items():
        print(
            f"{name:5s} team: checkpoint {figures['checkpoint_mib']:.0f} MiB, written in {figures['write_seconds']:.1f} s; "
            f"resume to the end of the first new step {figures['resume_to_first_new_step_seconds']:.1f} s "
            f"(the step itself {figures['first_new_step_seconds']:.1f} s)"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
