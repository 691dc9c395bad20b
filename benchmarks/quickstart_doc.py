"""Write README.md's quick-start table from the files a quick-start run wrote: no figure in it is
typed by hand.

    bash scripts/demo.sh                                         # writes runs/quickstart/
    .venv/bin/python benchmarks/quickstart_doc.py --from runs/quickstart

copies the run's held-out figures (``eval_before.json``, ``eval_after.json``), its minutes of
training and what produced it (the run folder's ``provenance.json``: the machine, the package
versions, the commit) to ``docs/results/quickstart/`` and rewrites the table between the README's
markers, which names that machine.
Without ``--from`` it rewrites the table from the files already there (tests/test_layout.py
checks that README.md holds exactly that table).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from magrpo.provenance import describe

ROOT = Path(__file__).resolve().parent.parent
RECORD = ROOT / "docs" / "results" / "quickstart"
README = ROOT / "README.md"
BEGIN = "<!-- quick-start table: benchmarks/quickstart_doc.py writes it from docs/results/quickstart/ -->"
END = "<!-- end of the quick-start table -->"
#: the coding task's figures, in the table's order
ROWS = (
    ("reward", "mean joint reward (max 5.5)"),
    ("reward_normalised", "normalised return (reward / 5.5)"),
    ("level_defined", "both functions defined"),
    ("level_parses", "combined program parses"),
    ("tests_passed", "fraction of unit tests passed"),
    ("pass@1", "pass@1"),
)


def table(record: Path = RECORD) -> str:
    """The README's quick-start table (markers included) from a recorded run."""
    before = json.loads((record / "eval_before.json").read_text())
    after = json.loads((record / "eval_after.json").read_text())
    run = json.loads((record / "run.json").read_text())
    minutes = run["train_minutes"]
    produced_by = run.get("produced_by")
    machine = f"produced by {describe(produced_by)}" if produced_by else "the machine that produced it was not recorded"
    lines = [
        BEGIN,
        f"One such run ({int(after['items'])} held-out problems, greedy; {minutes:.1f} minutes of training; {machine}):",
        "",
        "| metric | before | after |",
        "|---|---|---|",
        *(f"| {label} | {before[key]:.3f} | {after[key]:.3f} |" for key, label in ROWS),
        END,
    ]
    return "\n".join(lines)


def readme_with(text: str, new_table: str) -> str:
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + new_table + text[end:]


def record_run(run: Path, record: Path = RECORD) -> None:
    """Copy a quick-start run's figures into ``record``, with its training minutes (metrics.jsonl)."""
    record.mkdir(parents=True, exist_ok=True)
    for name in ("eval_before.json", "eval_after.json"):
        shutil.copy(run / name, record / name)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    minutes = sum(row["seconds"] for row in rows) / 60
    sittings = json.loads((run / "provenance.json").read_text())["sittings"]
    summary = {"command": "bash scripts/demo.sh", "train_minutes": minutes, "produced_by": sittings[-1]}
    (record / "run.json").write_text(json.dumps(summary, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="run", type=Path, help="a quick-start run folder to record first")
    args = parser.parse_args()
    if args.run is not None:
        record_run(args.run)
    README.write_text(readme_with(README.read_text(), table()))
    print(table())


if __name__ == "__main__":
    main()
