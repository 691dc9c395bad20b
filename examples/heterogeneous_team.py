"""A heterogeneous team: two different models, one fully fine-tuned and one trained with LoRA.

Any model spec works per agent: "default" (the bundled SmolLM2-135M-Instruct), a preset such as
"qwen2.5-coder-0.5b", a local transformers folder, or a GGUF file (converted once into the cache).
Here agent 1 writes the TL;DR and agent 2 the detailed summary of ACL paper introductions (the
built-in summarize task: its formatters, reward and data); agent 2 trains a LoRA adapter while
agent 1 is fully fine-tuned. Each agent keeps its own tokenizer and chat template.

    python examples/heterogeneous_team.py --models default /path/to/other-model.gguf
"""

from __future__ import annotations

import argparse

from magrpo import MAGRPOConfig, MAGRPOTrainer
from magrpo.tasks import get_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs=2, default=["default", "default"], metavar=("TLDR_MODEL", "SUMMARY_MODEL"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--eval-items", type=int, default=4)
    parser.add_argument("--output-dir", default="runs/heterogeneous")
    args = parser.parse_args()

    task = get_task("summarize")
    trainer = MAGRPOTrainer(
        agents=args.models,
        scorer=task.scorer,  # the task's joint reward, with its figures (levels, ROUGE) for evaluation
        formatters=task.formatters,
        train_dataset=task.load_split("train"),
        eval_dataset=task.load_split("eval")[: args.eval_items],
        args=MAGRPOConfig(
            use_lora=[False, True],  # agent 1 full fine-tuning, agent 2 a LoRA adapter
            lora_r=8,
            num_generations=args.num_generations,
            max_steps=args.steps,
            max_new_tokens=args.max_new_tokens,
            learning_rate=1e-5,
            output_dir=args.output_dir,
            save_steps=0,
            save_minutes=0,
        ),
    )
    for agent in trainer.agents:
        trainable = sum(p.numel() for p in agent.trainable_parameters())
        print(f"{agent.name}: {type(agent.model).__name__}, {trainable:,} trainable parameters")
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    for key in ("reward", "rougeL"):
        print(f"held-out {key}: {before[key]:.3f} -> {after[key]:.3f}")
    print(f"agents saved in {args.output_dir}/final (agent_0: a full model, agent_1: a LoRA adapter)")


if __name__ == "__main__":
    main()
