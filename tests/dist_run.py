"""A small real training run for the data-parallel tests, under torchrun or alone:
``python -m tests.dist_run OUT_DIR VARIANT BATCH_PER_RANK STEPS [--resume]``, VARIANT one of
aligned, cross, lora. Rank 0 writes OUT_DIR/final and OUT_DIR/checkpoints."""

from __future__ import annotations

import sys

import torch

from magrpo import MAGRPOConfig, MAGRPOTrainer, distributed
from magrpo.models import build_agents
from tests.conftest import make_tiny_model, make_tiny_tokenizer


def reward(*, completions, **_):
    """Differs between almost any two samples of either agent: both agents get a signal."""
    return [float(c0.count("a") - c0.count("b") + c1.count("q") + 0.5 * len(c1.split())) for c0, c1 in completions]


def build(out_dir: str, variant: str, batch: int, steps: int) -> MAGRPOTrainer:
    torch.manual_seed(0)
    tok = make_tiny_tokenizer()
    if variant == "lora":
        agents = build_agents([(make_tiny_model(len(tok), seed=3), tok)] * 2, device="cpu", use_lora=True, lora_r=4)
    else:
        agents = build_agents([(make_tiny_model(len(tok), seed=s), tok) for s in (1, 2)], device="cpu")
    args = MAGRPOConfig(
        num_generations=2 if variant == "cross" else 4, batch_size=batch, max_new_tokens=4, max_steps=steps,
        learning_rate=1e-2, seed=5, joint_mode="cross" if variant == "cross" else "aligned", save_steps=1,
        save_total_limit=None, output_dir=out_dir, log_samples_steps=0,
    )
    items = [{"q": w} for w in ("q a", "b", "c q", "a b c", "b b", "q")]
    return MAGRPOTrainer(agents=agents, reward_func=reward, train_dataset=items,
                         formatters=[lambda x: x["q"], lambda x: x["q"] + " c"], args=args)


if __name__ == "__main__":
    out, variant, batch, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    trainer = build(out, variant, batch, steps)
    trainer.train(progress=False, resume_from_checkpoint=True if "--resume" in sys.argv else None)
    print(f"rank {distributed.rank()} of {distributed.world_size()} finished {trainer.step}", flush=True)
