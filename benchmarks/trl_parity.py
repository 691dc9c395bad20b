"""Learning parity with TRL: one agent trained by magrpo and by TRL's GRPOTrainer on the same
reward, data, settings, precision and seeds; does the held-out reward differ?

    .venv/bin/python benchmarks/trl_parity.py                      # 4 seeds per system
    .venv/bin/python benchmarks/trl_parity.py --seeds 8 --steps 30

Both train the bundled model (full fine-tuning, float32, AdamW at ``--lr``, gradient clip 1.0, no
KL term, one update per rollout, TRL's ``loss_type="grpo"`` in both, advantages centred per group
and not scaled: TRL's ``scale_rewards="none"``, magrpo's ``advantage_scaling="none"``), sampling at
temperature 1 with no filters, on HumanEval prompts given as one user message through the chat
template (TRL's conversational prompts, magrpo's chat observations: the coding task's main-agent
messages), ``--prompts`` prompts x G
completions per step. The reward asks for a reply of ``--target-chars`` characters
(-|len - target| / target): cheap, dense, and far from its ceiling in the untrained model, so
learning shows within a few steps. Held-out: the first ``--eval-items`` held-out HumanEval prompts,
one greedy reply each by the trained weights, through one evaluation function for both systems
(transformers' ``generate``), before and after training.

The verdict is Welch's t on the per-seed held-out rewards (benchmarks/difference.py): the two
libraries draw different random numbers, so their runs are not paired. Resumable: each finished
(system, seed) is written to ``docs/results/trl_parity/results.json`` at once; a rerun with the
same settings trains only what is missing, and sittings of other ``--systems`` may run beside each
other (one per core: each keeps the runs the others finished). Writes ``docs/results/trl_parity/README.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared modules
from bench_vs_trl import completion_text, length_reward  # noqa: E402
from difference import difference  # noqa: E402
from provenance import describe, provenance  # noqa: E402
from sittings import one_writer, write_whole  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "results" / "trl_parity"
SYSTEMS = ("magrpo", "trl")


def reward_of(args: argparse.Namespace) -> Callable[..., list[float]]:
    """The one reward both trainers call (TRL and magrpo pass the completions by keyword)."""

    def reward(completions: list[Any], **_: Any) -> list[float]:
        return [length_reward(completion_text(c), args.target_chars) for c in completions]

    return reward


def prompts(split: str, count: int | None) -> list[list[dict[str, str]]]:
    """The main agent's chat messages of HumanEval's ``split`` (magrpo's coding task)."""
    from magrpo.tasks.coding import load_humaneval, main_prompt

    items = load_humaneval(split)
    return [main_prompt(item) for item in items[:count]]


def held_out_reward(model: Any, tokenizer: Any, chats: list[list[dict[str, str]]], args: argparse.Namespace) -> float:
    """The mean reward of one greedy reply per prompt (the same function for both systems)."""
    import torch

    rewards = []
    model.eval()
    with torch.no_grad():
        for chat in chats:
            ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            out = model.generate(
                **ids,
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
            reply = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
            rewards.append(length_reward(reply, args.target_chars))
    return statistics.fmean(rewards)


def train_trl(args: argparse.Namespace, seed: int) -> tuple[Any, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from magrpo.models import bundled_model_dir

    source = str(bundled_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    train = [{"prompt": chat} for chat in prompts("train", args.train_items)]
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="parity-trl-"),
        per_device_train_batch_size=args.prompts * args.num_generations,
        gradient_accumulation_steps=1,
        num_generations=args.num_generations,
        max_completion_length=args.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=0.0,
        loss_type="grpo",
        scale_rewards="none",
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=1.0,
        max_steps=args.steps,
        seed=seed,
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        report_to=[],
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_of(args),
        args=config,
        train_dataset=Dataset.from_list(train),
        processing_class=tokenizer,
    )
    trainer.train()
    return trainer.model, tokenizer


def train_magrpo(args: argparse.Namespace, seed: int) -> tuple[Any, Any]:
    from magrpo.config import MAGRPOConfig
    from magrpo.trainer import MAGRPOTrainer

    config = MAGRPOConfig(
        num_agents=1,
        num_generations=args.num_generations,
        max_new_tokens=args.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        beta=0.0,
        loss_type="grpo",
        advantage_scaling="none",
        learning_rate=args.lr,
        max_grad_norm=1.0,
        max_steps=args.steps,
        batch_size=args.prompts,
        seed=seed,
        device="cpu",
        autocast="no",
        rollout_dtype="same",
        output_dir=tempfile.mkdtemp(prefix="parity-magrpo-"),
        log_samples_steps=0,
        save_strategy="no",
    )
    train = [{"chat": chat} for chat in prompts("train", args.train_items)]
    trainer = MAGRPOTrainer(
        ["default"], reward_of(args), train_dataset=train, formatters=[lambda x: x["chat"]], args=config
    )
    trainer.train(progress=False)
    agent = trainer.agents[0]
    return agent.model, agent.tokenizer


def settings(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("steps", "prompts", "num_generations", "max_new_tokens", "lr", "target_chars", "eval_items", "train_items")
    return {k: getattr(args, k) for k in keys}


def load_results(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("settings") == settings(args):
            return saved
        print(f"{path} holds other settings: starting over", flush=True)
    return {"settings": settings(args), "runs": {}, "untrained": None}


def save(results: dict[str, Any], out: Path) -> None:
    """results.json and the page; a sitting of other --systems may run beside this one, and the
    runs it finished (with the same settings) are kept."""
    with one_writer(out) as on_disk:
        if on_disk is not None and on_disk.get("settings") == results["settings"]:
            results["runs"] = {**on_disk["runs"], **results["runs"]}
            if results.get("untrained") is None:
                results["untrained"] = on_disk.get("untrained")
        write_whole(out / "results.json", json.dumps(results, indent=1) + "\n")
        write_page(results, out)


def write_page(results: dict[str, Any], out: Path) -> None:
    runs = results["runs"]
    per = {s: [runs[k]["held_out"] for k in sorted(runs) if k.startswith(s + "/")] for s in SYSTEMS}
    lines = [
        "# Learning parity with TRL's GRPOTrainer",
        "",
        f"Written by `benchmarks/trl_parity.py` from `results.json`. {describe(results['produced_by'])}",
        "",
        "One agent (the bundled model, float32, full fine-tuning), the same reward, data, settings and seeds: "
        + ", ".join(f"{k} {v}" for k, v in results["settings"].items())
        + ". Held-out: one greedy reply per held-out prompt, the same evaluation code for both.",
        "",
        "| system | seeds | held-out reward per seed | mean |",
        "|---|---|---|---|",
    ]
    if results.get("untrained") is not None:
        lines.append(f"| untrained | - | {results['untrained']:.4f} | {results['untrained']:.4f} |")
    for system, values in per.items():
        if values:
            shown = ", ".join(f"{v:.4f}" for v in values)
            lines.append(f"| {system} | {len(values)} | {shown} | {statistics.fmean(values):.4f} |")
    lines.append("")
    if len(per["magrpo"]) >= 2 and len(per["trl"]) >= 2:
        d = difference(per["magrpo"], per["trl"])
        lines.append(f"**magrpo is {d.relation} TRL** on held-out reward: {d}.")
        for system, values in per.items():
            if results.get("untrained") is not None:
                lines.append(
                    f"{system} against the untrained model: {difference(values, results['untrained'])} "
                    f"({difference(values, results['untrained']).relation})."
                )
    else:
        lines.append("Fewer than two seeds per system: no test yet.")
    minutes = {s: [runs[k]["minutes"] for k in runs if k.startswith(s + "/")] for s in SYSTEMS}
    lines += [
        "",
        "Minutes per run (training and evaluation, this machine; sittings may have shared its cores): "
        + ", ".join(f"{s} {statistics.fmean(m):.1f}" for s, m in minutes.items() if m)
        + ".",
    ]
    (out / "README.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--prompts", type=int, default=2, help="prompts per step (each with G completions)")
    parser.add_argument("--num-generations", "-G", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--target-chars", type=int, default=60)
    parser.add_argument("--eval-items", type=int, default=16)
    parser.add_argument("--train-items", type=int, default=None)
    parser.add_argument("--output", type=Path, default=OUT)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    args = parser.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from magrpo.models import bundled_model_dir

    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / "results.json"
    results = load_results(path, args)
    results["produced_by"] = provenance()
    held_out = prompts("eval", args.eval_items)

    if results.get("untrained") is None:
        source = str(bundled_model_dir())
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        results["untrained"] = held_out_reward(model, AutoTokenizer.from_pretrained(source), held_out, args)
        save(results, args.output)
        print(f"untrained: held-out reward {results['untrained']:.4f}", flush=True)
    for seed in range(args.seeds):
        for system in args.systems.split(","):
            key = f"{system}/{seed}"
            if key in results["runs"]:
                continue
            started = time.perf_counter()
            model, tokenizer = (train_magrpo if system == "magrpo" else train_trl)(args, seed)
            reward = held_out_reward(model, tokenizer, held_out, args)
            minutes = (time.perf_counter() - started) / 60
            results["runs"][key] = {"held_out": reward, "minutes": minutes}
            save(results, args.output)
            print(f"{key}: held-out reward {reward:.4f} ({minutes:.1f} min)", flush=True)
            del model


if __name__ == "__main__":
    main()
