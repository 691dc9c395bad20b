"""A custom multi-turn environment with its own feedback (PettingZoo ParallelEnv style).

Two agents plan a trip: agent 1 names a destination, agent 2 writes the packing list. The
environment scores every joint answer and, when the team falls short, tells each agent what was
missing; the agents revise in the next turn. Training is MAGRPO over the rollout tree: the return
of a first answer is its reward plus the discounted mean of its revisions' returns.

    python examples/custom_env.py --steps 20
"""

from __future__ import annotations

import argparse

from magrpo import MAGRPOConfig, MAGRPOTrainer, MultiAgentEnv, StepResult, check_env

ITEMS = [
    {"season": "winter", "must_pack": "coat"},
    {"season": "summer", "must_pack": "hat"},
    {"season": "spring", "must_pack": "umbrella"},
    {"season": "autumn", "must_pack": "boots"},
]


class TripEnv(MultiAgentEnv):
    possible_agents = ["agent_0", "agent_1"]

    def __init__(self, item: dict, num_turns: int):
        self.item, self.num_turns, self.turn = item, num_turns, 0

    def reset(self, seed=None, options=None):
        self.turn = 0
        season = self.item["season"]
        observations = {
            "agent_0": f"Name one city to visit in {season}. Reply with the city and one reason, in one sentence.",
            "agent_1": f"Write a packing list of at most five items for a trip in {season}.",
        }
        return observations, {a: {} for a in self.possible_agents}

    def step(self, actions):
        self.turn += 1
        destination, packing = actions["agent_0"], actions["agent_1"].lower()
        has_reason = " because " in f" {destination.lower()} " or "," in destination
        packs_it = self.item["must_pack"] in packing
        short = 0 < len(packing.split()) <= 30
        reward = 0.5 * has_reason + 1.0 * packs_it + 0.5 * short + (1.0 if has_reason and packs_it else 0.0)
        done = self.turn >= self.num_turns or reward == 3.0
        # the environment's own feedback, one message per agent
        notes = {
            "agent_0": "Good." if has_reason else "Give a reason, starting with 'because'.",
            "agent_1": ("Good." if packs_it else f"The list must include a {self.item['must_pack']}.")
            + ("" if short else " Keep it under 30 words."),
        }
        observations = {
            a: f"Your last answer: {actions[a]}\nFeedback: {notes[a]}\nWrite your improved answer." for a in actions
        }
        return StepResult(
            observations,
            {a: reward for a in actions},  # one joint reward, received by every agent
            {a: done for a in actions},
            {a: False for a in actions},
            {a: {"packs_it": float(packs_it)} for a in actions},  # numeric infos become evaluation figures
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--num-generations", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--output-dir", default="runs/custom-env")
    args = parser.parse_args()

    turns = 2
    check_env(TripEnv(ITEMS[0], turns), ["agent_0", "agent_1"])  # the contract, before any compute
    trainer = MAGRPOTrainer(
        agents=["default", "default"],
        env_factory=lambda item: TripEnv(item, turns),
        train_dataset=ITEMS,
        eval_dataset=ITEMS[:2],
        args=MAGRPOConfig(
            num_generations=args.num_generations,
            num_turns=turns,
            discount=0.9,
            max_steps=args.steps,
            max_new_tokens=args.max_new_tokens,
            learning_rate=1e-5,
            output_dir=args.output_dir,
            save_steps=0,
            save_minutes=0,
        ),
    )
    print(f"each step: {trainer.args.plan().describe()}")
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    for key in ("turn_1/reward", "turn_2/reward", "packs_it"):
        print(f"held-out {key}: {before[key]:.3f} -> {after[key]:.3f}")
    print(f"run files: {args.output_dir}")


if __name__ == "__main__":
    main()
