"""A custom two-agent reward on your own JSONL file.

Agent 1 names a dish in a catchy title, agent 2 writes the recipe's first step; one joint reward
scores the pair: each part earns its own points, and the team earns a bonus only when the two
fit together (the step uses an ingredient and the title names the dish). Every column of the file
reaches the reward function as a keyword list, as in TRL.

    python examples/custom_reward.py                       # the bundled data/recipes.jsonl
    python examples/custom_reward.py --data my.jsonl --steps 50
"""

from __future__ import annotations

import argparse
from pathlib import Path

from magrpo import MAGRPOConfig, MAGRPOTrainer
from magrpo.data import load_items

HERE = Path(__file__).parent


def recipe_reward(*, completions, dish, ingredients, **_):
    """One float per joint action (title, first step)."""
    rewards = []
    for (title, step), name, listed in zip(completions, dish, ingredients):
        short_title = 0.5 if 0 < len(title.split()) <= 8 else 0.0
        names_dish = 0.5 if name.lower() in title.lower() else 0.0
        used = [i.strip() for i in listed.split(",") if i.strip() and i.strip().lower() in step.lower()]
        step_points = min(len(used), 2) * 0.5
        together = 1.0 if names_dish and used else 0.0  # the cooperative part: both agents must deliver
        rewards.append(short_title + names_dish + step_points + together)
    return rewards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(HERE / "data" / "recipes.jsonl"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--output-dir", default="runs/custom-reward")
    args = parser.parse_args()

    items = load_items(args.data, required=("dish", "ingredients"))  # a missing column is named here
    trainer = MAGRPOTrainer(
        agents=["default", "default"],  # the bundled SmolLM2-135M-Instruct, one copy per agent
        reward_func=recipe_reward,
        train_dataset=items,
        eval_dataset=items[:2],
        formatters=[
            lambda x: f"Write a short, catchy title for a recipe of {x['dish']}. Reply with the title only.",
            lambda x: f"Ingredients: {x['ingredients']}. Write the first step of the recipe in one sentence.",
        ],
        args=MAGRPOConfig(
            num_generations=args.num_generations,
            max_steps=args.steps,
            max_new_tokens=args.max_new_tokens,
            learning_rate=1e-5,
            output_dir=args.output_dir,
            save_steps=0,
            save_minutes=0,
        ),
    )
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    print(f"held-out mean joint reward: {before['reward']:.3f} -> {after['reward']:.3f} (max 3.0)")
    print(f"run files: {args.output_dir}")


if __name__ == "__main__":
    main()
