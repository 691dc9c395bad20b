"""A small real training run in its own process, for the checkpoint tests (which kill it):
``python -m tests.tiny_run OUT_DIR VARIANT [--resume]``, VARIANT one of full, lora, turns, async
(the full team sampling on vLLM engines of their own, each rollout sampled during the update
before it: async_rollouts=1), server (the full team on the engines of the rollout server at
``$MAGRPO_SERVER_URL``), critic (IAC over two turns: a value head per agent,
TD(lambda) targets, a clipped value loss over two updates per rollout, normalised advantages),
critic-model (MAAC with a Q critic on a model of its own, fully trained), madpo (MADPO over two
turns: random pairs of each node's joint actions, DPO against frozen reference copies), madpo-frozen
(MADPO's team against its frozen initial self, CoMLRL's comparator_reward pairs), marlhf
(three steps of a reward model copied from the first agent, then MAGRPO on its rewards), objective (the full team with a learning-rate schedule and warm-up, a rate per agent, two
clipped updates per rollout, a KL term to frozen reference copies, TRL's grpo loss type and
truncated completions masked), sequential (LoRA agents on one base taking turns over two turns of
feedback: a sequential cross tree, two continuations per answer, best-2 expansion, counterfactual
credit).

With ``MAGRPO_SLOW_REWARD=s`` every reward call sleeps s seconds (time to kill the run mid-way;
the numbers do not change)."""

from __future__ import annotations

import os
import sys
import time

import torch

from magrpo import MAGRPOConfig, MAGRPOTrainer
from magrpo.feedback import CallableFeedback
from magrpo.models import build_agents
from tests.conftest import (
    BF16_ENGINE_SHAPE,
    letter_count_reward,
    make_tiny_model,
    make_tiny_tokenizer,
    save_tiny_model,
)

STEPS = 6


def reward(*, completions, **columns):
    time.sleep(float(os.environ.get("MAGRPO_SLOW_REWARD", "0")))
    return letter_count_reward(completions=completions, **columns)


def build(out_dir: str, variant: str) -> MAGRPOTrainer:
    torch.manual_seed(0)
    tok = make_tiny_tokenizer()
    if variant in ("lora", "sequential"):
        base = make_tiny_model(len(tok), seed=3)
        agents = build_agents([(base, tok)] * 2, device="cpu", use_lora=True, lora_r=4)
    else:  # the vLLM engines sample in bf16 where the CPU computes it in hardware
        shape = BF16_ENGINE_SHAPE if variant in ("async", "server") else {}
        agents = build_agents([(make_tiny_model(len(tok), seed=s, **shape), tok) for s in (1, 2)], device="cpu")
    turns = 2 if variant in ("turns", "critic", "madpo", "sequential") else 1
    engine = {}
    if variant == "async":
        engine = dict(
            rollout_backend="vllm",
            vllm_kv_cache_gib=0.25,
            vllm_max_model_len=128,
            vllm_engine_process="own",
            async_rollouts=1,
        )
    if variant == "server":
        engine = dict(rollout_backend="vllm", vllm_mode="server", vllm_server_url=os.environ["MAGRPO_SERVER_URL"])
    objective = (
        dict(
            learning_rate=[1e-2, 5e-3],
            lr_scheduler_type="cosine",
            warmup_steps=2,
            num_iterations=2,
            epsilon_high=0.28,
            beta=0.05,
            loss_type="grpo",
            mask_truncated_completions=True,
        )
        if variant == "objective"
        else dict(
            algorithm="iac",
            learning_rate=1e-2,
            critic_lambda=0.5,
            critic_value_clip=0.2,
            num_iterations=2,
            normalise_critic_advantages=True,
        )
        if variant == "critic"
        else dict(
            algorithm="maac",
            critic_type="q",
            learning_rate=1e-2,
            critic_model=save_tiny_model(f"{out_dir}-critic-model", seed=4, hidden=48),
            critic_learning_rate=1e-2,
        )
        if variant == "critic-model"
        else dict(algorithm="madpo", learning_rate=1e-2, dpo_beta=0.5, pair_selection="random", pairs_per_node=3)
        if variant == "madpo"
        else dict(
            algorithm="madpo",
            learning_rate=1e-2,
            preference_comparator="frozen",
            pair_selection="comparator_reward",
            pairs_per_node=3,
        )
        if variant == "madpo-frozen"
        else dict(algorithm="marlhf", learning_rate=1e-2, reward_model_steps=3, critic_learning_rate=1e-2)
        if variant == "marlhf"
        else dict(
            learning_rate=1e-2,
            protocol="sequential",
            joint_mode="cross",
            num_continuations=2,
            credit="counterfactual",
            expand="best-k",
            expand_k=2,
        )
        if variant == "sequential"
        else dict(learning_rate=1e-2)
    )
    args = MAGRPOConfig(
        num_generations=4,
        batch_size=2,
        max_new_tokens=4,
        max_steps=STEPS,
        seed=5,
        num_turns=turns,
        save_steps=1,
        save_total_limit=None,
        output_dir=out_dir,
        **engine,
        **objective,
    )
    feedback = CallableFeedback(lambda request: (f"turn {request.turn}: more a", "more b")) if turns > 1 else None
    items = [{"q": w} for w in ("q a", "b", "c q", "a b c")]
    return MAGRPOTrainer(
        agents=agents,
        reward_func=reward,
        train_dataset=items,
        formatters=[lambda x: x["q"]] * 2,
        args=args,
        feedback=feedback,
    )


if __name__ == "__main__":
    out, variant = sys.argv[1], sys.argv[2]
    trainer = build(out, variant)
    trainer.resume_hint = f"python -m tests.tiny_run {out} {variant} --resume"
    trainer.train(progress=False, resume_from_checkpoint=True if "--resume" in sys.argv else None)
    print("finished", trainer.step, flush=True)
