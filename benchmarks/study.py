"""Does MAGRPO beat the alternatives? Train and evaluate, on the same held-out items and reward:

- ``team``: the MAGRPO-trained team (each agent writes its part);
- ``maac``, ``iac``: the same team trained on the same samples, reward and update, with a
  critic's value as the baseline instead of the group's mean (``algorithm="maac"``: one
  centralised critic on the joint observation; ``"iac"``: each agent its own critic);
  ``maac-q``, ``iac-q``: the same with Q critics (``critic_type="q"``, the action valued too);
- ``single-grpo``: centralised MAGRPO, one model trained with the same trainer (one agent, same
  reward, same steps, G and number of generated tokens: N times one agent's token budget per
  completion) to write the whole joint answer, which the task cuts into the same parts (as
  ``magrpo train --centralised``, ``Task.centralised``);
- the untrained prompt-only set-ups of ``magrpo.eval.setups``: ``parallel`` (the untrained team),
  ``sequential``, ``discussion``, ``single``.

Every system runs for each seed; held-out figures are greedy. The study writes, into --output:
``results.json`` (every run's curve and figures), ``results.md`` (mean and 95% t-interval per
figure and system), ``reward_curves.png`` (training reward per step, band = 95% interval over
seeds) and ``held_out.png`` (a bar chart of the held-out figures).

    .venv/bin/python benchmarks/study.py --task summarize --seeds 3 --steps 12 --output docs/results/summarize
    .venv/bin/python benchmarks/study.py --task coding --turns 2 ...   # the team with execution feedback
    .venv/bin/python benchmarks/study.py --task summarize --seeds 3 --steps 15 --lr 2e-5 \
        --systems team,maac,iac,parallel --output docs/results/critics   # MAGRPO vs MAAC vs IAC
    .venv/bin/python benchmarks/study.py ... --resume   # a study cut short: only the runs it lacks
    .venv/bin/python benchmarks/study.py ... --resume --only-seeds 0,2,4   # beside a sitting of the other seeds
        # (give the untrained set-ups to one sitting: the other's --systems names only the trained ones)
    .venv/bin/python benchmarks/study.py --systems team --seeds 8 \
        --precisions float32,bf16,bf16-autocast,bf16-sampling ...   # each trained system at each precision

With several ``--precisions`` each trained system runs at each, named ``SYSTEM@PRECISION``
(:data:`PRECISIONS`). ``results.json`` records what produced it (commit, package versions, CPU or
GPU: ``benchmarks/provenance.py``) and each run's resolved precision.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, Sequence

from magrpo.tasks import TASKS
from magrpo.tasks.base import whole_answer_scorer

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared modules
from provenance import describe, provenance  # noqa: E402
from sittings import one_writer, write_whole  # noqa: E402

UNTRAINED = ("parallel", "sequential", "discussion", "single")
#: the team trained with each algorithm: system -> (MAGRPOConfig.algorithm, critic_type)
TEAM_ALGORITHMS = {
    "team": ("magrpo", "v"),
    "maac": ("maac", "v"),
    "iac": ("iac", "v"),
    "maac-q": ("maac", "q"),
    "iac-q": ("iac", "q"),
    "madpo": ("madpo", "v"),  # preferences: each agent's DPO loss on pairs of a node's joint actions
}
TRAINED = (*TEAM_ALGORITHMS, "single-grpo")
#: the precisions a trained system can run at: name -> MAGRPOConfig fields ("default": the config's own)
PRECISIONS: dict[str, dict[str, str]] = {
    "default": {},
    "float32": {"autocast": "no", "rollout_dtype": "same"},
    "bf16": {"autocast": "bfloat16", "rollout_dtype": "bfloat16"},  # bf16 update and bf16 sampling copy
    "bf16-autocast": {"autocast": "bfloat16", "rollout_dtype": "same"},  # the update alone in bf16
    "bf16-sampling": {"autocast": "no", "rollout_dtype": "bfloat16"},  # the sampling copy alone in bf16
}


def system_name(system: str, precision: str) -> str:
    """A trained system's name in the results: ``team``, or ``team@float32`` at a named precision."""
    return system if precision == "default" else f"{system}@{precision}"


def base_system(name: str) -> str:
    """``team@float32`` -> ``team``."""
    return name.split("@", 1)[0]


#: two-sided 95% Student-t quantiles by degrees of freedom (1..30); beyond, the normal 1.96
T95 = [
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]


def mean_interval(values: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% t-interval); a single value has an interval of 0."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    df = len(values) - 1
    t = T95[df - 1] if df <= len(T95) else 1.96
    return mean, t * statistics.stdev(values) / math.sqrt(len(values))


def config(args, seed: int, out: Path, **overrides):
    from magrpo import MAGRPOConfig

    values = dict(
        num_generations=args.num_generations,
        batch_size=args.batch_size,
        max_steps=args.steps,
        max_new_tokens=args.max_new_tokens,
        learning_rate=args.lr,
        seed=seed,
        output_dir=str(out),
        save_steps=0,
        save_minutes=0,
        log_samples_steps=0,
        use_lora=args.lora,
    )
    values.update(overrides)
    return MAGRPOConfig(**values)


def resolved_precision(trainer) -> dict[str, str]:
    """What the run's precision resolved to on this machine (``autocast``, ``rollout_dtype``)."""
    from magrpo.run import precision_policy

    return precision_policy(trainer.team.precision)


def whole_run(history: list[dict[str, Any]], steps: int) -> list[dict[str, Any]]:
    """A run's per-step history, refused where it stopped early (a clean stop on SIGTERM ends
    ``train`` normally): a shortened run recorded as a whole one would skew the study."""
    if len(history) != steps:
        raise RuntimeError(f"the run stopped after {len(history)} of {steps} steps: not recorded")
    return history


def train_team(
    task,
    args,
    seed: int,
    train_items,
    held_out,
    out: Path,
    algorithm: str = "magrpo",
    critic_type: str = "v",
    precision: str = "default",
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train the team and evaluate it on ``held_out``; ``overrides``: further MAGRPOConfig fields
    (a protocol, a credit; ``max_steps=0``: the untrained team under them)."""
    from magrpo import MAGRPOTrainer

    feedback = task.execution_feedback() if args.turns > 1 else None
    with MAGRPOTrainer(
        agents=[args.model] * task.num_agents,
        scorer=task.scorer,
        formatters=task.formatters,
        train_dataset=train_items,
        eval_dataset=held_out,
        feedback=feedback,
        is_solved=task.is_solved,
        agent_roles=task.agent_roles,
        show_earlier_answers=task.show_earlier_answers,  # protocol="sequential": how the task shows them
        args=config(
            args,
            seed,
            out,
            num_agents=task.num_agents,
            num_turns=args.turns,
            # later turns continue only the best joint action of each node, so the team
            # generates args.turns times the one-turn team's tokens, not G ** turns times
            expand="best-k",
            expand_k=args.expand_k,
            algorithm=algorithm,
            critic_type=critic_type,
            critic_learning_rate=args.critic_lr,
            **PRECISIONS[precision],
            **(overrides or {}),
        ),
    ) as trainer:
        history = whole_run(trainer.train(progress=False), trainer.args.max_steps)
        figures = trainer.evaluate()
        resolved = resolved_precision(trainer)
        per_item = [
            {k: row[k] for k in ("item", "item_id", "turn") if k in row} | {"reward": row["reward"], **row["figures"]}
            for row in trainer.eval_samples
        ]
    result = {
        "curve": [h["reward_mean"] for h in history],
        "held_out": figures,
        "per_item": per_item,  # each held-out item's figures (and each turn's), in the items' order
        "tokens_generated": sum(h["tokens_generated"] for h in history),
        "precision": resolved,
    }
    if algorithm in ("maac", "iac"):  # the (first agent's) critic per step: its mean value, the returns it explained
        critic = "team_critic" if algorithm == "maac" else "agent_0_critic"
        result["value_mean"] = [h[f"{critic}/value_mean"] for h in history]
        result["explained_variance"] = [h[f"{critic}/explained_variance"] for h in history]
    return result


def train_single(task, args, seed: int, train_items, held_out, out: Path, precision: str = "default") -> dict[str, Any]:
    from magrpo import MAGRPOTrainer
    from magrpo.eval.setups import evaluate_setup

    budget = args.max_new_tokens * task.num_agents * args.turns  # the team's tokens per joint answer
    trainer = MAGRPOTrainer(
        agents=[args.model],
        scorer=whole_answer_scorer(task),  # centralised MAGRPO (Task.centralised), at this study's budget
        formatters=[task.single_agent_formatter],
        train_dataset=train_items,
        args=config(args, seed, out, num_agents=1, max_new_tokens=budget, **PRECISIONS[precision]),
    )
    history = whole_run(trainer.train(progress=False), trainer.args.max_steps)
    resolved = resolved_precision(trainer)
    figures = evaluate_setup(
        "single",
        trainer.agents,
        held_out,
        formatters=task.formatters,
        scorer=task.scorer,
        max_new_tokens=setup_tokens("single", args),
        single_formatter=task.single_agent_formatter,
        split_single=task.split_single_answer,
    )
    return {
        "curve": [h["reward_mean"] for h in history],
        "held_out": figures,
        "tokens_generated": sum(h["tokens_generated"] for h in history),
        "precision": resolved,
    }


def setup_tokens(setup: str, args) -> int:
    """The new tokens per part a set-up answers with at evaluation: one model writing the whole
    answer in one reply ("single", trained or not) gets every turn's tokens of the team, so the
    trained and untrained single model answer on the same budget; the others answer per turn."""
    return args.max_new_tokens * args.turns if setup == "single" else args.max_new_tokens


def untrained(task, args, held_out, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each prompt-only set-up of ``names``, untrained: ``{"held_out": its figures, "per_item":
    each item's}``."""
    from magrpo.eval.setups import setup_figures, setup_rows
    from magrpo.models import build_agents
    from magrpo.samples import item_refs

    agents = build_agents([args.model] * task.num_agents, device=args.device)
    refs = item_refs(held_out, range(len(held_out)))
    out = {}
    for name in names:
        rows = setup_rows(
            name,
            agents,
            held_out,
            formatters=task.formatters,
            scorer=task.scorer,
            max_new_tokens=setup_tokens(name, args),
            roles=task.agent_roles,
            single_formatter=task.single_agent_formatter,
            split_single=task.split_single_answer,
        )
        out[name] = {"held_out": setup_figures(rows), "per_item": [ref | row for ref, row in zip(refs, rows)]}
    return out


def summarise(runs: Mapping[str, list[dict[str, Any]]], task) -> dict[str, dict[str, tuple[float, float]]]:
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for system, seeds in runs.items():
        figures = [task.with_normalised_return(s["held_out"]) for s in seeds]
        keys = [k for k in figures[0] if k != "items" and all(k in f for f in figures)]
        table[system] = {k: mean_interval([f[k] for f in figures]) for k in keys}
    return table


def evaluated_items(runs: Mapping[str, list[dict[str, Any]]], args) -> int:
    """How many held-out items the runs were scored on (the split may hold fewer than asked)."""
    for seeds in runs.values():
        for run in seeds:
            if "items" in run.get("held_out", {}):
                return int(run["held_out"]["items"])
    return args.eval_items


def write_markdown(path: Path, table, runs, args, seconds: float, note: str = "") -> None:
    # per turn (a multi-turn team) only the headline figures: the table stays readable
    keys = [
        k
        for k in next(iter(table.values()))
        if "scheme/" not in k
        and (not k.startswith("turn_") or k.split("/", 1)[1] in ("reward_normalised", "tests_passed", "pass@1"))
    ]
    schemes = sorted({k for row in table.values() for k in row if k.startswith("scheme/")})
    lines = [
        f"Task `{args.task}`, model `{args.model}`, {args.seeds} seed(s) asked (column `seeds`: finished), {args.steps} steps of {args.batch_size} "
        f"item(s) x G = {args.num_generations}, {args.max_new_tokens} new tokens per agent, {args.turns} turn(s)"
        + (f" (best {args.expand_k} of each node continued)" if args.turns > 1 else "")
        + ", LoRA" * args.lora
        + ", "
        f"learning rate {args.lr:g}, "
        f"{evaluated_items(runs, args)} held-out items, greedy. Mean and 95% t-interval over seeds "
        f"(untrained baselines decode greedily: one run stands for every seed). Study time {seconds / 60:.1f} min."
        + (f" {note}" if note else ""),
        "",
        f"Produced by {produced_by(runs)}. Precision as resolved: {precisions_run(runs)}.",
        "",
    ]
    for columns in (keys, schemes):
        if not columns:
            continue
        lines.append("| system | seeds | " + " | ".join(columns) + " |")
        lines.append("|---|---:|" + "---:|" * len(columns))
        for system, row in table.items():
            cells = [f"{row[k][0]:.3f} ± {row[k][1]:.3f}" if k in row else "-" for k in columns]
            seeds = "-" if runs[system][0]["seed"] is None else str(len(runs[system]))
            lines.append(f"| {system} | {seeds} | " + " | ".join(cells) + " |")
        lines.append("")
    path.write_text("\n".join(lines))


def produced_by(runs) -> str:
    """The commits and machines the runs were produced on (several: the study's sittings differed)."""
    seen = {describe(r["produced_by"]) for seeds in runs.values() for r in seeds if "produced_by" in r}
    return " and ".join(sorted(seen)) or "not recorded"


def precisions_run(runs) -> str:
    """Each trained system's resolved precision (autocast / sampling weights), as the runs recorded it."""
    seen = {}
    for name, seeds in runs.items():
        recorded = {(r["precision"]["autocast"], r["precision"]["rollout_dtype"]) for r in seeds if "precision" in r}
        if recorded:
            seen[name] = "; ".join(f"autocast {a}, sampling {d}" for a, d in sorted(recorded))
    return ", ".join(f"{name}: {text}" for name, text in seen.items()) or "not recorded"


#: the held-out figures plot() draws, those that every system has
PLOTTED = ("reward_normalised", "tests_passed", "pass@1", "rougeL")


def plot(out: Path, runs, table, trained: Sequence[str] = TRAINED, figures: Sequence[str] = PLOTTED) -> None:
    """reward_curves.png (the ``trained`` systems' training reward per step) and held_out.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for system in [name for name in runs if base_system(name) in trained]:
        curves = [s["curve"] for s in runs[system] if s["curve"]]
        if not curves:
            continue
        steps = range(1, min(map(len, curves)) + 1)
        stats = [mean_interval([c[i - 1] for c in curves]) for i in steps]
        means = [m for m, _ in stats]
        ax.plot(steps, means, label=system)
        ax.fill_between(steps, [m - h for m, h in stats], [m + h for m, h in stats], alpha=0.25)
    ax.set_xlabel("step")
    ax.set_ylabel("mean joint reward (training samples)")
    if ax.lines:  # no trained run yet: nothing to name
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "reward_curves.png", dpi=120)
    plt.close(fig)

    keys = [k for k in figures if all(k in row for row in table.values())]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(1, len(table))
    for i, (system, row) in enumerate(table.items()):
        xs = [j + i * width for j in range(len(keys))]
        ax.bar(xs, [row[k][0] for k in keys], width, yerr=[row[k][1] for k in keys], label=system, capsize=3)
    ax.set_xticks([j + width * (len(table) - 1) / 2 for j in range(len(keys))], keys)
    ax.set_ylabel("held-out")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "held_out.png", dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="summarize", choices=list(TASKS))
    parser.add_argument("--model", default="default")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--num-generations", "-G", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--turns", type=int, default=1, help="turns of the team (>1: with the task's execution feedback)"
    )
    parser.add_argument("--expand-k", type=int, default=1, help="joint actions of a node continued to the next turn")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--lora", action="store_true")
    parser.add_argument(
        "--critic-lr", type=float, default=1e-3, help="maac, iac, maac-q, iac-q: the critics' learning rate"
    )
    parser.add_argument("--train-items", type=int, default=None, help="use only the first N training items")
    parser.add_argument("--eval-items", type=int, default=8)
    parser.add_argument(
        "--systems",
        default="team,single-grpo," + ",".join(UNTRAINED),
        help=f"comma-separated, of {', '.join((*TRAINED, *UNTRAINED))}",
    )
    parser.add_argument(
        "--precisions",
        default="default",
        help=f"comma-separated, of {', '.join(PRECISIONS)}: each trained system runs at each "
        "(several: named SYSTEM@PRECISION; 'default': the config's own, float32 on a CPU)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", type=Path, default=Path("runs/study"))
    parser.add_argument(
        "--resume", action="store_true", help="keep the runs of --output's results.json and run only the missing ones"
    )
    parser.add_argument(
        "--rerun",
        default="",
        help="with --resume: systems whose earlier runs are run again "
        "(comma-separated, e.g. after a change to a set-up's prompt)",
    )
    add_only_seeds(parser)
    args = parser.parse_args(argv)
    check_only_seeds(parser, args)

    from magrpo.tasks import get_task

    if args.rerun and not args.resume:
        parser.error(f"--rerun {args.rerun} needs --resume (without it every system runs anyway)")
    if args.only_seeds and not args.resume:
        parser.error("--only-seeds needs --resume: sittings of one study keep each other's runs")
    # refused settings are told before any data or model loads
    runs, earlier_seconds = finished_runs(args) if args.resume else ({}, 0.0)
    sitting = provenance()  # what produces this sitting's runs: each records it
    started = time.perf_counter() - earlier_seconds  # the study time counts the earlier sittings too
    task = get_task(args.task)
    train_items = task.load_split("train")[: args.train_items]
    held_out = task.load_split("eval")[: args.eval_items]
    systems = args.systems.split(",")
    unknown = sorted(set(systems) - {*TRAINED, *UNTRAINED})
    if unknown:
        parser.error(f"--systems: {unknown} unknown; choose among {', '.join((*TRAINED, *UNTRAINED))}")
    precisions = args.precisions.split(",")
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown:
        parser.error(f"--precisions: {unknown} unknown; choose among {', '.join(PRECISIONS)}")
    args.output.mkdir(parents=True, exist_ok=True)

    def write() -> None:
        nonlocal started
        if args.resume:  # sittings of other seeds (--only-seeds) may write the same files
            started = write_beside_other_sittings(args, runs, started, lambda t: write_outputs(args, task, runs, t))
        else:
            write_outputs(args, task, runs, started)

    missing = [s for s in UNTRAINED if s in systems and s not in runs]
    if missing:
        for name, result in untrained(task, args, held_out, missing).items():
            runs[name] = [{"seed": None, **result, "curve": [], "produced_by": sitting}]
        gc.collect()
        write()
    # seed by seed, every system and precision within a seed: a study cut short stays balanced
    for seed in args.only_seeds or range(args.seeds):
        for system, precision in [(s, p) for s in TRAINED for p in precisions]:
            name = system_name(system, precision)
            if system not in systems or any(r["seed"] == seed for r in runs.get(name, [])):
                continue
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix=f"study-{system}-") as run_dir:  # weights are not kept
                if system == "single-grpo":
                    result = train_single(task, args, seed, train_items, held_out, Path(run_dir), precision)
                else:
                    result = train_team(
                        task, args, seed, train_items, held_out, Path(run_dir), *TEAM_ALGORITHMS[system], precision
                    )
            result.update(seed=seed, seconds=time.perf_counter() - t0, produced_by=sitting)
            runs.setdefault(name, []).append(result)
            print(
                f"{name} seed {seed}: reward {result['curve'][0]:.3f} -> {result['curve'][-1]:.3f}, held-out "
                f"{result['held_out']['reward']:.3f} ({result['seconds']:.0f} s)",
                flush=True,
            )
            gc.collect()
            write()  # a study cut short keeps every finished run
    print((args.output / "results.md").read_text())


def recorded_args(args) -> dict[str, Any]:
    """The study's arguments as results.json holds them (paths as text)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


#: arguments that may differ between the sittings of one study: they do not change any run's figures
RESUMABLE_CHANGES = {"seeds", "systems", "precisions", "device", "output", "resume", "rerun", "only_seeds"}


def add_only_seeds(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--only-seeds",
        default="",
        help="comma-separated seeds (of range(--seeds)) this sitting runs: sittings on the same --output with "
        "other seeds run beside it, each keeping the others' finished runs",
    )


def check_only_seeds(parser: argparse.ArgumentParser, args) -> None:
    """Turns --only-seeds into a sorted list of seeds, refused by name where not in range(--seeds)."""
    try:
        args.only_seeds = sorted({int(seed) for seed in args.only_seeds.split(",") if seed.strip()})
    except ValueError:
        parser.error(f"--only-seeds: {args.only_seeds!r} is not a comma-separated list of whole numbers")
    if args.only_seeds and args.rerun:  # each sitting would drop the reruns the other wrote
        parser.error(f"--only-seeds with --rerun {args.rerun}: rerun those systems in one sitting of every seed")
    outside = [seed for seed in args.only_seeds if not 0 <= seed < args.seeds]
    if outside:
        parser.error(f"--only-seeds: {outside} outside the study's seeds 0..{args.seeds - 1} (--seeds {args.seeds})")


def write_beside_other_sittings(
    args, runs: dict[str, list[dict[str, Any]]], started: float, write: Callable[[float], None]
) -> float:
    """Calls ``write(started)`` holding --output's lock, after adding to ``runs`` what other sittings
    of the study (--only-seeds) finished meanwhile; returns the study's start: its longest sitting's."""
    with one_writer(args.output) as on_disk:
        started = min(started, time.perf_counter() - add_other_sittings_runs(on_disk, runs, args))
        write(started)
    return started


def add_other_sittings_runs(on_disk: dict[str, Any] | None, runs: dict[str, list[dict[str, Any]]], args) -> float:
    """Adds to ``runs`` the runs another sitting on the same results.json finished meanwhile (a
    system and seed ``runs`` lacks; not the systems being rerun), and returns that file's seconds."""
    if on_disk is None:
        return 0.0
    for system, seeds in kept_runs(on_disk["runs"], args).items():
        ours = {r["seed"] for r in runs.get(system, [])}
        theirs = [r for r in seeds if r["seed"] not in ours]
        if theirs:
            runs.setdefault(system, []).extend(theirs)
            runs[system].sort(key=lambda r: -1 if r["seed"] is None else r["seed"])
    return float(on_disk["seconds"])


def finished_runs(
    args, resumable: Collection[str] = RESUMABLE_CHANGES
) -> tuple[dict[str, list[dict[str, Any]]], float]:
    """The runs, and the seconds spent, of --output's results.json, refused if its settings differ
    (``resumable``: the arguments that may)."""
    path = args.output / "results.json"
    if not path.exists():
        return {}, 0.0
    earlier = json.loads(path.read_text())
    now = recorded_args(args)
    # an argument the earlier sitting lacks came later: the earlier runs had its default behaviour
    changed = {
        k: (earlier["args"][k], now[k])
        for k in now
        if k not in resumable and k in earlier["args"] and earlier["args"][k] != now[k]
    }
    if changed:
        raise SystemExit(
            f"--resume: {path} was written with other settings (earlier, now): {changed}; "
            "resume it with the same settings, or give another --output"
        )
    unknown = rerun_systems(args) - set(earlier["runs"])
    if unknown:
        raise SystemExit(f"--rerun: {sorted(unknown)} not among the runs of {path}: {sorted(earlier['runs'])}")
    return kept_runs(earlier["runs"], args), float(earlier["seconds"])


def rerun_systems(args) -> set[str]:
    return set(filter(None, args.rerun.split(",")))


def kept_runs(written: Mapping[str, list[dict[str, Any]]], args) -> dict[str, list[dict[str, Any]]]:
    """The runs of a results.json that this sitting keeps: not the systems of --rerun, no seed
    beyond --seeds."""
    rerun = rerun_systems(args)
    kept = {
        system: [r for r in seeds if r["seed"] is None or r["seed"] < args.seeds]
        for system, seeds in written.items()
        if system not in rerun
    }
    return {s: r for s, r in kept.items() if r}


def write_outputs(
    args,
    task,
    runs: Mapping[str, list[dict[str, Any]]],
    started: float,
    systems: Sequence[str] = (*TRAINED, *UNTRAINED),
    trained: Sequence[str] = TRAINED,
    figures: Sequence[str] = PLOTTED,
    note: str = "",
) -> None:
    """results.json, results.md and the plots of the runs finished so far: ``systems`` in the order
    shown, the ``trained`` ones with a curve, ``figures`` the plotted held-out figures, ``note``
    said after results.md's first paragraph."""
    rank = {name: i for i, name in enumerate(systems)}
    order = sorted(runs, key=lambda name: (rank[base_system(name)], name))
    runs = {s: runs[s] for s in order}
    table = summarise(runs, task)
    seconds = time.perf_counter() - started
    write_whole(
        args.output / "results.json",
        json.dumps(
            {
                "args": recorded_args(args),
                "runs": runs,
                "summary": {s: {k: list(v) for k, v in row.items()} for s, row in table.items()},
                "seconds": seconds,
            },
            indent=1,
            default=float,
        ),
    )
    write_markdown(args.output / "results.md", table, runs, args, seconds, note)
    plot(args.output, runs, table, trained, figures)


if __name__ == "__main__":
    main()
