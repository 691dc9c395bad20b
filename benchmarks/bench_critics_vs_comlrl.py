"""IAC on the same work: magrpo against the authors' library, CoMLRL, side by side in one sitting.

Both train the bundled model's two-agent team on the first --items items of the summarize task,
one sample per agent per item (G = 1), --buffer items per update, CoMLRL's IAC settings on both
sides (a separate critic model per agent, both rates 5e-6, value clip 0.2, normalised
advantages, discount 1, temperature 0.6, top-p 0.6, --max-new-tokens): the config
docs/critics.md gives for CoMLRL's defaults. Each system runs in a process of its own; the
reward function (the task's writing reward) also counts the completion tokens, with one
tokenizer for both. It prints seconds, tokens/s and peak memory per system, and the ratios.

    pip install comlrl                       # the peer (or: --comlrl-python PATH of another venv)
    .venv/bin/python benchmarks/bench_critics_vs_comlrl.py --items 8 --buffer 4 --max-new-tokens 32

CoMLRL needs its tokenizer's pad token set to <|endoftext|> with this model (else every
completion is cut to an empty string); it runs with W&B disabled.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def shared_pieces(args):
    """The model folder, tokenizer, items, per-agent formatters (rendered prompts) and a reward
    function that also counts completion tokens: the same for both systems."""
    from transformers import AutoTokenizer

    from magrpo.models import bundled_model_dir
    from magrpo.tasks import get_task

    task = get_task("summarize")
    model_dir = str(bundled_model_dir())
    tok = AutoTokenizer.from_pretrained(model_dir)
    items = task.load_split("train")[: args.items]
    counted = {"tokens": 0, "calls": 0}

    def count(completions):
        counted["tokens"] += sum(len(tok(c, add_special_tokens=False)["input_ids"]) for c in completions)

    def joint_rewards(parts, rows):
        columns = {k: [row[k] for row in rows] for k in rows[0]}
        return [r["reward"] for r in task.scorer(completions=parts, prompts=[""] * len(parts), **columns)]

    return task, model_dir, tok, items, counted, count, joint_rewards


def run_comlrl(args) -> dict:
    os.environ.setdefault("WANDB_MODE", "disabled")
    from comlrl.trainers.actor_critic.iac import IACConfig, IACTrainer
    from datasets import Dataset

    task, model_dir, tok, items, counted, count, joint_rewards = shared_pieces(args)
    tok.pad_token = "<|endoftext|>"  # with this model CoMLRL cuts every completion to "" otherwise

    def rendered(fmt):
        """The prompt text magrpo's agents read: the observation (chat messages, or a string as
        one user message) through the model's chat template."""

        def text(item):
            observation = fmt(item)
            messages = observation if isinstance(observation, list) else [{"role": "user", "content": observation}]
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

        return text

    def reward(helper, main, batch_items=None):
        count(helper)
        count(main)
        rows = list(batch_items) if batch_items is not None else [items[0]] * len(helper)
        return joint_rewards(list(zip(helper, main)), rows)

    config = IACConfig(
        num_agents=2,
        num_turns=1,
        num_generations=1,
        rollout_buffer_size=args.buffer,
        num_train_epochs=1,
        max_new_tokens=args.max_new_tokens,
        eval_interval=0,
        use_separate_critic=True,
    )
    trainer = IACTrainer(
        agents=[model_dir, model_dir],
        critics=[model_dir, model_dir],
        tokenizer=tok,
        reward_func=reward,
        formatters=[rendered(f) for f in task.formatters],
        args=config,
        train_dataset=Dataset.from_list(items),
    )
    started = time.perf_counter()
    trainer.train()
    return {"seconds": time.perf_counter() - started, **counted}


def run_magrpo(args, autocast: str) -> dict:
    from magrpo import MAGRPOConfig, MAGRPOTrainer

    task, model_dir, tok, items, counted, count, joint_rewards = shared_pieces(args)

    def score(*, completions, prompts, **columns):
        count([c for joint in completions for c in joint])
        rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
        return [{"reward": r} for r in joint_rewards(completions, rows)]

    config = MAGRPOConfig(
        algorithm="iac",
        critic_model=model_dir,
        num_generations=1,
        batch_size=args.buffer,
        max_steps=args.items // args.buffer,
        max_new_tokens=args.max_new_tokens,
        temperature=0.6,
        top_p=0.6,
        learning_rate=5e-6,
        critic_learning_rate=5e-6,
        critic_value_clip=0.2,
        normalise_critic_advantages=True,
        discount=1.0,
        autocast=autocast,
        output_dir=args.workdir,
        save_steps=0,
        save_minutes=0,
        log_samples_steps=0,
    )
    trainer = MAGRPOTrainer(
        agents=[model_dir, model_dir],
        scorer=score,
        formatters=task.formatters,
        train_dataset=items,
        args=config,
    )
    started = time.perf_counter()
    trainer.train(progress=False)
    return {"seconds": time.perf_counter() - started, **counted}


def worker(args) -> None:
    if args.worker == "comlrl":
        figures = run_comlrl(args)
    else:
        figures = run_magrpo(args, "no" if args.worker == "magrpo-fp32" else "auto")
    figures["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(figures), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--buffer", type=int, default=4, help="items per update (CoMLRL's rollout_buffer_size)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--comlrl-python", default=sys.executable, help="a Python with comlrl installed")
    parser.add_argument(
        "--systems", default="comlrl,magrpo-fp32,magrpo", help="comlrl, magrpo-fp32 (float32), magrpo (defaults)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default="runs/bench-critics", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.items % args.buffer:
        parser.error(f"--items {args.items} is not a multiple of --buffer {args.buffer}")
    if args.worker:
        return worker(args)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    results = {}
    for system in args.systems.split(","):
        python = args.comlrl_python if system == "comlrl" else sys.executable
        command = [python, __file__, "--worker", system, "--items", str(args.items), "--buffer", str(args.buffer)]
        command += ["--max-new-tokens", str(args.max_new_tokens), "--workdir", f"runs/bench-critics/{system}"]
        out = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode != 0 or not lines:
            raise SystemExit(f"{system} failed (exit {out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        results[system] = json.loads(lines[-1].removeprefix("RESULT "))
        r = results[system]
        print(
            f"{system}: {r['seconds']:.1f} s, {r['tokens']} completion tokens ({r['tokens'] / r['seconds']:.1f} tok/s), "
            f"peak RSS {r['peak_rss_mib']:.0f} MiB",
            flush=True,
        )
    print(
        f"\nIAC, summarize, bundled model, {args.items} items x G=1 x 2 agents, {args.buffer} items per update, "
        f"{args.max_new_tokens} new tokens max, separate critic models"
    )
    print("| system | seconds | tokens | tok/s | peak RSS MiB | seconds vs comlrl | tok/s vs comlrl |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    base = results.get("comlrl")
    for system, r in results.items():
        rate = r["tokens"] / r["seconds"]
        ratios = (
            f"x{r['seconds'] / base['seconds']:.2f} | x{rate / (base['tokens'] / base['seconds']):.2f}"
            if base
            else "- | -"
        )
        print(f"| {system} | {r['seconds']:.1f} | {r['tokens']} | {rate:.1f} | {r['peak_rss_mib']:.0f} | {ratios} |")


if __name__ == "__main__":
    main()
