"""Can the paper's helper bonus teach the team to use the helper? (``coding-paper``)

The paper's coding reward pays for calling the helper (+0.5, +1.0 more when the main function is
not a thin wrapper) only where at least one unit test passes (src/magrpo/rewards/paper_coding.py).
A group-relative update raises what its samples were paid for: where no sampled joint answer both
calls the helper and passes a test, the bonus gives no signal, whatever the number of steps. This
samples the untrained team as a training step does (temperature 1, G answers per item, the
training split), without an update, and counts per joint answer: the main function
calls ``aux``, at least one test passes, both with ``aux`` defined (the bonus paid), and the reward.

    .venv/bin/python benchmarks/helper_reach.py --items 16 -G 8 --output docs/results/helper_reach

``--protocol sequential`` samples the sequential team as the protocols study's sequential arm
trains it (benchmarks/protocols_study.py: the main agent answers after the helper and sees its
code, ``--num-continuations`` answers after each helper answer), whose main agent may call ``aux``
more often than one that never sees it.

Writes ``results.json`` into --output: the counts, their shares with a 95% Clopper-Pearson
interval, the settings and what produced them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared modules
from provenance import provenance  # noqa: E402

#: what is counted per sampled joint answer: name -> whether the answer's figures show it
COUNTED = {
    "helper_called": lambda f: f["helper_used"] > 0,
    "a_test_passed": lambda f: f["tests_passed"] > 0,
    # the reward's own condition: aux defined with a return, called from the main function, a test passed
    "bonus_paid": lambda f: f["level_defined"] > 0 and f["helper_used"] > 0 and f["tests_passed"] > 0,
}


def share_interval(hits: int, n: int) -> tuple[float, float]:
    """The 95% Clopper-Pearson interval of a share of ``hits`` in ``n`` (exact: it holds at 0 hits too)."""
    from scipy.stats import binomtest

    ci = binomtest(hits, n).proportion_ci(0.95, method="exact")
    return float(ci.low), float(ci.high)


def tally(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts and shares of :data:`COUNTED` over sampled joint answers (each a samples.jsonl row)."""
    n = len(rows)
    out: dict[str, Any] = {"answers": n, "reward_mean": sum(r["reward"] for r in rows) / n}
    for name, shows in COUNTED.items():
        hits = sum(1 for r in rows if shows(r["figures"]))
        out[name] = {"count": hits, "share": hits / n, "interval": share_interval(hits, n)}
    return out


def sample_untrained(args) -> list[dict[str, Any]]:
    """The untrained team's sampled joint answers on the first --items training items, drawn as a
    training step draws them (its seeded streams), with no update: each ``{"reward", "figures"}``."""
    from protocols_study import ARMS

    from magrpo import MAGRPOConfig, MAGRPOTrainer
    from magrpo.eval.figures import numeric_figures
    from magrpo.step import sample_tree
    from magrpo.tasks import get_task

    task = get_task(args.task)
    items = task.load_split("train")[: args.items]
    protocol = dict(ARMS[args.protocol])
    if args.protocol == "sequential" and args.num_continuations is not None:
        protocol["num_continuations"] = args.num_continuations
    rows = []
    with tempfile.TemporaryDirectory(prefix="helper-reach-") as out:
        config = MAGRPOConfig(
            num_agents=task.num_agents,
            num_generations=args.num_generations,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
            output_dir=out,
            save_strategy="no",
            **protocol,
        )
        with MAGRPOTrainer(
            agents=[args.model] * task.num_agents,
            scorer=task.scorer,
            formatters=task.formatters,
            train_dataset=items,
            agent_roles=task.agent_roles,
            args=config,
        ) as trainer:
            for step in range(len(items) // args.batch_size):
                batch = items[step * args.batch_size : (step + 1) * args.batch_size]
                sampled = sample_tree(trainer.team, [trainer.env_factory(item) for item in batch], step)
                first = sampled.turns[0]
                rows += [
                    {"reward": float(result.joint_reward), "figures": numeric_figures(result)}
                    for node in first.results
                    for result in node
                ]
    return rows


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="coding-paper", choices=["coding-paper"])
    parser.add_argument("--model", default="default")
    parser.add_argument("--items", type=int, default=16, help="training items sampled (the first N)")
    parser.add_argument("--num-generations", "-G", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64, help="the protocols study's")
    parser.add_argument(
        "--protocol", default="simultaneous", choices=["simultaneous", "sequential"], help="the team's protocol"
    )
    parser.add_argument(
        "--num-continuations", type=int, default=None, help="sequential: main answers per helper answer (None: G)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("runs/helper_reach"))
    args = parser.parse_args(argv)
    if args.protocol == "simultaneous" and args.num_continuations is not None:
        parser.error("--num-continuations is the sequential team's: give it with --protocol sequential")
    if args.protocol == "sequential" and args.num_continuations is None:
        args.num_continuations = args.num_generations  # as the sequential arm: M = G (recorded as such)
    if args.items < args.batch_size or args.items % args.batch_size:
        parser.error(f"--items {args.items}: a whole number of batches of --batch-size {args.batch_size} is needed")
    rows = sample_untrained(args)
    result = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "untrained": tally(rows),
        "produced_by": provenance(),
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "results.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result["untrained"], indent=1))
    return result


if __name__ == "__main__":
    main()
