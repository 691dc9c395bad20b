"""Does the team still learn as it did? The learning ledger, checked at the close of every change
to the step, the rewards, sampling or precision.

    .venv/bin/python benchmarks/learning_check.py            # about 25-40 minutes on 2 CPU cores
    .venv/bin/python benchmarks/learning_check.py --seeds 3 --precisions float32,default

Trains the MAGRPO team on ``summarize`` (the bundled model, 15 steps of 1 item x G = 4, 64 new
tokens, lr 2e-5, 8 held-out items, greedy: benchmarks/study.py's ``train_team``) for each seed and
precision (``float32``; ``default``, the config's own, trained only where it resolves to something
else on this machine), then appends one entry to ``docs/results/learning.jsonl``: the commit, the
machine, the package versions, each precision as resolved, and the per-seed held-out reward. It
compares each precision with the last entry of the same machine kind, settings and precision: a
paired t-test over the seeds (the same seeds, items and settings; the runs are chaotic, so a
difference within the seeds' spread is no change in the maths).

Resumable: finished runs are kept in ``docs/results/learning.partial.json`` until the entry is
written; a rerun of the same commit and settings trains only the runs it lacks.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared modules
from difference import difference  # noqa: E402
from provenance import describe, machine_kind, provenance  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LEDGER = ROOT / "docs" / "results" / "learning.jsonl"
PARTIAL = ROOT / "docs" / "results" / "learning.partial.json"
#: the check's settings: those of docs/results.md's summarize studies
SETTINGS = dict(
    task="summarize",
    model="default",
    steps=15,
    batch_size=1,
    num_generations=4,
    max_new_tokens=64,
    lr=2e-5,
    eval_items=8,
    turns=1,
    expand_k=1,
    lora=False,
    critic_lr=1e-3,
    train_items=None,
    device="auto",
)


def study_args(seeds: int) -> argparse.Namespace:
    return argparse.Namespace(**SETTINGS, seeds=seeds)


def comparable(entry: dict[str, Any], machine: str, precision: str) -> bool:
    return (
        machine_kind(entry["produced_by"]) == machine
        and entry["settings"] == SETTINGS
        and precision in entry["held_out_reward"]
    )


def compare(entries: list[dict[str, Any]], now: dict[str, Any]) -> list[str]:
    """Each precision against the last comparable entry: a paired test over the common seeds."""
    machine = machine_kind(now["produced_by"])
    lines = []
    for precision, rewards in now["held_out_reward"].items():
        earlier = [e for e in entries if comparable(e, machine, precision)]
        if not earlier:
            lines.append(f"{precision}: the first entry of this machine kind and settings (nothing to compare)")
            continue
        last = earlier[-1]
        seeds = sorted(set(rewards) & set(last["held_out_reward"][precision]))
        a = [rewards[s] for s in seeds]
        b = [last["held_out_reward"][precision][s] for s in seeds]
        d = difference(a, b, paired=True)
        lines.append(
            f"{precision}: {d.relation} commit {last['produced_by']['commit']} on seeds {', '.join(seeds)} "
            f"(now {', '.join(f'{x:.3f}' for x in a)}; then {', '.join(f'{x:.3f}' for x in b)}): {d}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--precisions", default="float32,default")
    parser.add_argument("--ledger", type=Path, default=LEDGER)
    args = parser.parse_args()

    from study import train_team  # noqa: E402 (loads magrpo and torch)

    from magrpo.tasks import get_task

    produced_by = provenance()
    key = {"commit": produced_by["commit"], "settings": SETTINGS, "seeds": args.seeds}
    partial = json.loads(PARTIAL.read_text()) if PARTIAL.is_file() else {}
    runs: dict[str, dict[str, Any]] = partial.get("runs", {}) if partial.get("key") == key else {}
    from magrpo.models.loading import pick_device
    from magrpo.prepare import bf16_by_default

    precisions = args.precisions.split(",")
    if "default" in precisions and not bf16_by_default(pick_device("auto")):
        print("the default precision is float32 on this machine: the float32 runs stand for it", flush=True)
        precisions = [p for p in precisions if p != "default"] or ["float32"]
    task = get_task(SETTINGS["task"])
    train_items, held_out = task.load_split("train"), task.load_split("eval")[: SETTINGS["eval_items"]]
    resolved: dict[str, dict[str, str]] = {}
    started = time.perf_counter()
    for seed in range(args.seeds):
        for precision in precisions:
            name = f"{precision}/{seed}"
            if name in runs:
                resolved.setdefault(precision, runs[name]["precision"])
                continue
            with tempfile.TemporaryDirectory(prefix="learning-check-") as out:
                result = train_team(task, study_args(args.seeds), seed, train_items, held_out, Path(out),
                                    precision=precision)  # fmt: skip
            runs[name] = {"precision": result["precision"], "held_out": result["held_out"]["reward"]}
            resolved.setdefault(precision, result["precision"])
            print(f"{name}: held-out reward {runs[name]['held_out']:.3f}", flush=True)
            PARTIAL.write_text(json.dumps({"key": key, "runs": runs}, indent=1))
    entry = {
        "date": time.strftime("%Y-%m-%d"),
        "produced_by": produced_by,
        "settings": SETTINGS,
        "precision": {p: resolved[p] for p in precisions},
        "held_out_reward": {p: {str(s): runs[f"{p}/{s}"]["held_out"] for s in range(args.seeds)} for p in precisions},
        "minutes": (time.perf_counter() - started) / 60,
    }
    entries = [json.loads(line) for line in args.ledger.read_text().splitlines()] if args.ledger.is_file() else []
    lines = compare(entries, entry)
    with args.ledger.open("a") as ledger:
        ledger.write(json.dumps(entry) + "\n")
    PARTIAL.unlink(missing_ok=True)
    print(f"learning check, {describe(produced_by)}")
    for line in lines:
        print("  " + line)


if __name__ == "__main__":
    main()
