"""Which training protocol trains the coding team best (issue #42)? Three arms train the same team
on task ``coding-paper`` (the paper's reward and prompts) with the same settings, seed by seed:

- ``simultaneous``: the default MAGRPO team: both agents answer at once, G aligned joint actions;
- ``sequential``: ``protocol="sequential"``, ``joint_mode="cross"``: the main agent answers after
  the helper and sees its code, M answers of it per helper answer (``--num-continuations``, G
  unless given): G * M joint actions per item;
- ``sequential-counterfactual``: the same tree with ``credit="counterfactual"`` (each answer
  compared with the alternatives that share its context: docs/protocols.md).

Untrained, on the same held-out items (greedy: one run stands for every seed): each protocol's
team before training (``untrained:simultaneous``, ``untrained:sequential``, the team every arm of
that protocol starts from) and the prompt-only set-ups of ``magrpo.eval.setups``
(``setup:parallel``, ``setup:sequential``, ``setup:discussion``, ``setup:single``).

Every run records its held-out figures (the reward, ``helper_used`` and the cooperation schemes'
shares ``scheme/...``), each held-out item's figures (``per_item``), its minutes and what produced
it. results.json is written after every run, and a second call with the same settings runs only
what it lacks (``--seeds`` and ``--arms`` may grow): a study cut short goes on where it stopped.
Into --output: results.json, results.md, reward_curves.png, held_out.png (benchmarks/study.py's);
docs/results.md's section is written from them by benchmarks/results_doc.py (``--write-doc``: after
every seed whose arms all finished).

    .venv/bin/python benchmarks/protocols_study.py --output docs/results/protocols --write-doc
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared modules
from provenance import provenance  # noqa: E402
from study import (  # noqa: E402
    RESUMABLE_CHANGES,
    UNTRAINED,
    add_only_seeds,
    check_only_seeds,
    finished_runs,
    train_team,
    untrained,
    write_beside_other_sittings,
    write_outputs,
)

#: arm -> the MAGRPOConfig fields that set it apart (everything else is the same for every arm)
ARMS: dict[str, dict[str, Any]] = {
    "simultaneous": {},
    "sequential": {"protocol": "sequential", "joint_mode": "cross"},
    "sequential-counterfactual": {"protocol": "sequential", "joint_mode": "cross", "credit": "counterfactual"},
}
#: the weights are not kept: writing them (1 GiB for the bundled pair) costs a run seconds
UNSAVED = {"save_strategy": "no"}
#: the seeds per arm the issue asks for: fewer make a pilot
POWERED_SEEDS = 8
#: the held-out figures plotted beside each other
FIGURES = ("reward_normalised", "tests_passed", "pass@1", "helper_used")


def protocol_of(arm: str) -> str:
    return ARMS[arm].get("protocol", "simultaneous")


def before(arm: str) -> str:
    """The untrained team an arm starts from: the same protocol, no step taken."""
    return f"untrained:{protocol_of(arm)}"


def arm_fields(arm: str, args) -> dict[str, Any]:
    """The config fields of ``arm`` at these settings."""
    fields = dict(ARMS[arm])
    if fields.get("joint_mode") == "cross" and args.num_continuations is not None:
        fields["num_continuations"] = args.num_continuations
    return fields


def systems(arms: Sequence[str], setups: Sequence[str]) -> list[str]:
    """Every system of the study, in the order shown: the arms, their untrained teams, the set-ups."""
    befores = list(dict.fromkeys(before(arm) for arm in arms))
    return [*arms, *befores, *(f"setup:{name}" for name in setups)]


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="coding-paper")
    parser.add_argument("--model", default="default")
    parser.add_argument("--seeds", type=int, default=POWERED_SEEDS)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--num-generations", "-G", type=int, default=4)
    parser.add_argument(
        "--num-continuations", type=int, default=None, help="the sequential arms' M per helper answer (None: G)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--train-items", type=int, default=None, help="use only the first N training items")
    parser.add_argument("--eval-items", type=int, default=32, help="held-out items (coding-paper holds 32)")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ARMS)}")
    parser.add_argument(
        "--setups", default=",".join(UNTRAINED), help=f"untrained prompt-only set-ups, of {', '.join(UNTRAINED)}"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", type=Path, default=Path("runs/protocols"))
    parser.add_argument("--rerun", default="", help="systems whose earlier runs are run again (comma-separated)")
    add_only_seeds(parser)
    parser.add_argument(
        "--write-doc", action="store_true", help="rewrite docs/results.md after each seed (benchmarks/results_doc.py)"
    )
    # study.py's settings that stay fixed here: one turn, full fine-tuning, no critic
    parser.set_defaults(turns=1, expand_k=1, lora=False, critic_lr=1e-3)
    args = parser.parse_args(argv)
    for option, given, known in (("--arms", args.arms, ARMS), ("--setups", args.setups, UNTRAINED)):
        unknown = sorted(set(filter(None, given.split(","))) - set(known))
        if unknown:
            parser.error(f"{option}: {unknown} unknown; choose among {', '.join(known)}")
    check_only_seeds(parser, args)
    return args


def settings_note(args) -> str:
    """What results.md's first paragraph does not say: how each arm samples a step."""
    g = args.num_generations
    m = g if args.num_continuations is None else args.num_continuations
    return (
        f"Per item and step the simultaneous team samples G = {g} answers per agent (G joint actions), a "
        f"sequential team {g} helper answers and {m} main answers after each ({g * m} joint actions)."
    )


def main(argv: Sequence[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    args = parse(argv)
    from magrpo.tasks import get_task

    arms = [a for a in args.arms.split(",") if a]
    setups = [s for s in args.setups.split(",") if s]
    # refused settings are told before any data or model loads
    runs, earlier_seconds = finished_runs(args, RESUMABLE_CHANGES | {"arms", "setups", "write_doc"})
    sitting = provenance()
    started = time.perf_counter() - earlier_seconds  # the study time counts the earlier sittings too
    task = get_task(args.task)
    train_items = task.load_split("train")[: args.train_items]
    held_out = task.load_split("eval")[: args.eval_items]
    args.output.mkdir(parents=True, exist_ok=True)
    # every system a sitting of this study may have run, not only this sitting's
    order = systems(list(ARMS), UNTRAINED)

    def write() -> None:
        nonlocal started
        started = write_beside_other_sittings(
            args,
            runs,
            started,
            lambda t: write_outputs(args, task, runs, t, order, list(ARMS), FIGURES, settings_note(args)),
        )

    missing = [s for s in setups if f"setup:{s}" not in runs]
    if missing:
        for name, result in untrained(task, args, held_out, missing).items():
            runs[f"setup:{name}"] = [{"seed": None, **result, "curve": [], "produced_by": sitting}]
    for arm in arms:
        if before(arm) not in runs:
            with tempfile.TemporaryDirectory(prefix="protocols-untrained-") as run_dir:
                fields = {**arm_fields(arm, args), **UNSAVED, "max_steps": 0, "credit": "group"}
                result = train_team(task, args, 0, train_items, held_out, Path(run_dir), overrides=fields)
            runs[before(arm)] = [{"seed": None, **result, "produced_by": sitting}]
    gc.collect()
    write()
    # seed by seed, every arm within a seed: a study cut short stays balanced
    for seed in args.only_seeds or range(args.seeds):
        for arm in arms:
            if any(r["seed"] == seed for r in runs.get(arm, [])):
                continue
            t0 = time.perf_counter()
            fields = arm_fields(arm, args)
            with tempfile.TemporaryDirectory(prefix=f"protocols-{arm}-") as run_dir:  # weights are not kept
                result = train_team(task, args, seed, train_items, held_out, Path(run_dir), overrides=fields | UNSAVED)
            result.update(seed=seed, seconds=time.perf_counter() - t0, produced_by=sitting, config=fields)
            runs.setdefault(arm, []).append(result)
            figures = task.with_normalised_return(result["held_out"])
            print(
                f"{arm} seed {seed}: held-out normalised return {figures['reward_normalised']:.3f}, helper used "
                f"{figures.get('helper_used', float('nan')):.3f} ({result['seconds'] / 60:.1f} min)",
                flush=True,
            )
            gc.collect()
            write()  # a study cut short keeps every finished run
        if args.write_doc and all(any(r["seed"] == seed for r in runs.get(arm, [])) for arm in arms):
            import results_doc

            results_doc.main()
    print((args.output / "results.md").read_text())
    return runs


if __name__ == "__main__":
    main()
