"""A small real training run for the data-parallel tests, under torchrun or alone:
``python -m tests.dist_run OUT_DIR VARIANT BATCH_PER_RANK STEPS [--resume] [--shard]``, VARIANT one
of aligned, cross, lora (two adapters on one base), lora-own (each agent its own base), turns (two
turns with feedback, best-k), critic (turns with IAC: a value head per agent, TD(lambda) targets,
advantages normalised over the step), critic-model (MAAC with a Q critic on a LoRA critic model of its own), vllm
(the aligned team sampling on vLLM engines, each rank its own), sequential (the agents taking turns
in a cross tree, counterfactual credit); --shard:
data_parallel="shard". Rank 0 writes OUT_DIR/final and OUT_DIR/checkpoints."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from magrpo import MAGRPOConfig, MAGRPOTrainer, distributed
from magrpo.feedback import CallableFeedback
from magrpo.models import build_agents
from tests.conftest import make_tiny_model, make_tiny_tokenizer, save_tiny_model


def reward(*, completions, **_):
    """Differs between almost any two samples of either agent: both agents get a signal."""
    return [float(c0.count("a") - c0.count("b") + c1.count("q") + 0.5 * len(c1.split())) for c0, c1 in completions]


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor  # a shard's own part


ITEMS = [{"q": w} for w in ("q a", "b", "c q", "a b c", "b b", "q")]


def build(out_dir: str, variant: str, batch: int, steps: int, data_parallel: str = "replicate") -> MAGRPOTrainer:
    torch.manual_seed(0)
    tok = make_tiny_tokenizer()
    if variant == "lora":
        agents = build_agents([(make_tiny_model(len(tok), seed=3), tok)] * 2, device="cpu", use_lora=True, lora_r=4)
    elif variant == "lora-own":
        agents = build_agents(
            [(make_tiny_model(len(tok), seed=s), tok) for s in (3, 4)], device="cpu", use_lora=True, lora_r=4
        )
    else:  # vLLM's CPU attention serves heads of 32
        shape = dict(hidden=64) if variant == "vllm" else {}
        agents = build_agents([(make_tiny_model(len(tok), seed=s, **shape), tok) for s in (1, 2)], device="cpu")
    engines = dict(
        rollout_backend="vllm", vllm_kv_cache_gib=0.125, vllm_max_model_len=64, vllm_engine_process="training"
    )
    args = MAGRPOConfig(
        num_generations=2 if variant in ("cross", "sequential") else 4,
        batch_size=batch,
        max_new_tokens=4,
        max_steps=steps,
        learning_rate=1e-2,
        seed=5,
        joint_mode="cross" if variant in ("cross", "sequential") else "aligned",
        save_steps=1,
        save_total_limit=None,
        output_dir=out_dir,
        log_samples_steps=1,  # every rank's samples gathered every step
        data_parallel=data_parallel,
        autocast="no",  # ranks against one process agree to float32 rounding, not bf16's
        **(engines if variant == "vllm" else {}),
        **(dict(num_turns=2, expand="best-k", expand_k=2) if variant in ("turns", "critic", "madpo") else {}),
        # MADPO: the step's pairs, their count and the DPO loss's mean are every rank's
        **(
            dict(algorithm="madpo", dpo_beta=0.5, pair_selection="random", pairs_per_node=3)
            if variant == "madpo"
            # MARLHF: the reward model's step on every rank's pairs, then MAGRPO on its rewards
            else dict(algorithm="marlhf", reward_model_steps=1, critic_learning_rate=1e-2)
            if variant == "marlhf"
            else {}
        ),
        **(dict(protocol="sequential", credit="counterfactual") if variant == "sequential" else {}),
        **(
            dict(algorithm="iac", critic_lambda=0.5, normalise_critic_advantages=True, critic_learning_rate=1e-2)
            if variant == "critic"
            else {}
        ),
        **(
            dict(
                algorithm="maac",
                critic_type="q",
                # each rank its own copy of the same weights: ranks writing one folder at once would race
                critic_model=save_tiny_model(f"{out_dir}-critic-rank{os.environ.get('RANK', '0')}", 6, hidden=48),
                critic_use_lora=True,
                lora_r=4,
                critic_learning_rate=1e-2,
            )
            if variant == "critic-model"
            else {}
        ),
    )
    feedback = (
        CallableFeedback(lambda request: ("more a", f"turn {request.turn}: more q"))
        if variant in ("turns", "critic", "madpo")
        else None
    )
    return MAGRPOTrainer(
        agents=agents,
        reward_func=reward,
        train_dataset=ITEMS,
        formatters=[lambda x: x["q"], lambda x: x["q"] + " c"],
        args=args,
        feedback=feedback,
    )


if __name__ == "__main__":
    out, variant, batch, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    trainer = build(out, variant, batch, steps, "shard" if "--shard" in sys.argv else "replicate")
    trainer.train(progress=False, resume_from_checkpoint=True if "--resume" in sys.argv else None)
    # what this rank holds of the trainable weights and their AdamW moments, against the whole
    local = sum(_local(p).numel() for agent in trainer.agents for p in agent.trainable_parameters())
    whole = sum(p.numel() for agent in trainer.agents for p in agent.trainable_parameters())
    moments = sum(
        _local(v).numel()
        for opt in trainer.optimizers
        for s in opt.state.values()
        for k, v in s.items()
        if k in ("exp_avg", "exp_avg_sq")
    )
    Path(out, f"held-by-rank-{distributed.rank()}.json").write_text(
        json.dumps({"local": local, "whole": whole, "moments": moments})
    )
    figures = trainer.evaluate(ITEMS[:5])  # every rank answers its share (3 + 2 items on 2 ranks)
    if distributed.is_main():
        (Path(out) / "eval.json").write_text(json.dumps(figures))
        (Path(out) / "eval_samples.json").write_text(json.dumps(trainer.eval_samples))  # every rank's answers
    print(f"rank {distributed.rank()} of {distributed.world_size()} finished {trainer.step}", flush=True)
    # a sharded model held until the interpreter's teardown keeps the gloo group alive into it,
    # which can abort a finished rank: the trainer lets go of its models here
    trainer.close()
