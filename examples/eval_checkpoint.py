"""Evaluate a trained team against the single-model baseline, on the same held-out items and reward.

The team is a run's final (or checkpoint) folder holding agent_0/, agent_1/ (full models or LoRA
adapters; an adapter loads merged into its base). The baseline is one model (the team's first
agent, or --single-model) writing the whole joint answer in one reply, cut into the same parts
and scored by the same reward; see magrpo.eval.setups for the others (sequential, discussion).

    python examples/eval_checkpoint.py runs/heterogeneous/final --task summarize --items 8
"""

from __future__ import annotations

import argparse
from pathlib import Path

from magrpo import MAGRPOConfig, MAGRPOTrainer
from magrpo.eval.setups import evaluate_setup
from magrpo.models import build_agents
from magrpo.tasks import get_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a folder holding agent_0/ and agent_1/")
    parser.add_argument("--task", default="summarize", choices=["coding", "summarize", "expand"])
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--single-model", default=None, help="the baseline's model (default: the team's agent_0)")
    args = parser.parse_args()

    task = get_task(args.task)
    items = task.load_split("eval")[: args.items]
    max_new_tokens = args.max_new_tokens or task.config_overrides.get("max_new_tokens", 128)
    team = build_agents([str(args.checkpoint / f"agent_{i}") for i in range(task.num_agents)])
    trainer = MAGRPOTrainer(
        agents=team,
        scorer=task.scorer,
        formatters=task.formatters,
        eval_dataset=items,
        args=MAGRPOConfig(num_agents=task.num_agents, max_new_tokens=max_new_tokens),
    )
    team_figures = trainer.evaluate()
    single_agents = build_agents([args.single_model]) if args.single_model else team[:1]
    single_figures = evaluate_setup(
        "single",
        single_agents,
        items,
        formatters=task.formatters,
        scorer=task.scorer,
        max_new_tokens=max_new_tokens,
        single_formatter=task.single_agent_formatter,
        split_single=task.split_single_answer,
    )
    team_figures, single_figures = (
        task.with_normalised_return(team_figures),
        task.with_normalised_return(single_figures),
    )
    print(f"{'figure':<24}{'team':>10}{'single':>10}")
    for key in team_figures:
        if key in single_figures:
            print(f"{key:<24}{team_figures[key]:>10.3f}{single_figures[key]:>10.3f}")


if __name__ == "__main__":
    main()
