"""Rollouts sampled ahead (``async_rollouts=1``): the engines sample step t+1's tree while step t
updates; every update after the first learns from samples one policy version old (the figures say
so), the importance weights correct for it, the team still learns the cooperative reward, and a
run killed with SIGKILL resumes exactly (tests/test_checkpoint.py's ``async`` variant)."""

from __future__ import annotations

import importlib.util
import threading

import pytest

from magrpo import ConfigError, MAGRPOConfig, MAGRPOTrainer
from magrpo.models import build_agents
from tests.conftest import make_tiny_model

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")


def engine_config(tmp_path, **config) -> MAGRPOConfig:
    return MAGRPOConfig(
        **{
            "rollout_backend": "vllm",
            "vllm_engine_process": "own",
            "vllm_kv_cache_gib": 0.25,
            "vllm_max_model_len": 128,
            "async_rollouts": 1,
            "num_generations": 8,
            "batch_size": 4,
            "max_new_tokens": 3,
            "learning_rate": 3e-3,
            "max_steps": 60,
            "seed": 0,
            "output_dir": str(tmp_path),
            "log_samples_steps": 0,
            "save_steps": 0,
            "save_minutes": 0,
            **config,
        }
    )


def test_rollouts_sampled_ahead_are_one_version_old_and_the_team_still_learns(tiny_tokenizer, tmp_path):
    from tests.test_trainer import both_agents_right

    agents = build_agents([(make_tiny_model(len(tiny_tokenizer), seed=s, hidden=64), tiny_tokenizer) for s in (1, 2)])
    trainer = MAGRPOTrainer(
        agents=agents,
        reward_func=both_agents_right,
        train_dataset=[{"question": "q"}] * 8,
        eval_dataset=[{"question": "q"}],
        formatters=[lambda item: item["question"]] * 2,
        args=engine_config(tmp_path),
    )
    # a rollout runs while an update does: the sampling thread is busy when an optimiser steps
    overlaps = []
    for optimizer in trainer.optimizers:
        step = optimizer.step

        def watched(*args, _step=step, **kwargs):
            overlaps.append(any(t.name.startswith("magrpo-rollout") and t.is_alive() for t in threading.enumerate()))
            return _step(*args, **kwargs)

        optimizer.step = watched
    history = trainer.train(progress=False)
    assert [h["rollout_staleness"] for h in history] == [0] + [1] * 59
    first = history[0]["reward_mean"]
    last = sum(h["reward_mean"] for h in history[-5:]) / 5
    weights = [h["agent_0/is_weight_mean"] for h in history[1:] if "agent_0/is_weight_mean" in h]
    print(f"async: reward first step {first:.3f}, last 5 {last:.3f}; weights {min(weights):.4f}-{max(weights):.4f}")
    assert first < 0.2 and last >= 0.9
    # one version old: the engine's policy is not the updated one, and the weights say by how much
    assert any(abs(w - 1.0) > 1e-3 for w in weights)
    assert any(overlaps)  # (threads only: whether the OS ran them at once is the OS's business)
    assert trainer.evaluate()["reward"] == 1.0


def test_rollouts_sampled_ahead_need_engines_of_their_own_and_the_correction(tmp_path):
    with pytest.raises(ConfigError, match="async_rollouts=1 samples the next step's rollout during the update"):
        MAGRPOConfig(async_rollouts=1, rollout_backend="fast")
    with pytest.raises(ConfigError, match="keep vllm_importance_sampling_correction=True"):
        MAGRPOConfig(async_rollouts=1, rollout_backend="vllm", vllm_importance_sampling_correction=False)
    with pytest.raises(ConfigError, match="the engines must live apart from the training process"):
        engine_config(tmp_path, vllm_engine_process="training")


def test_samples_of_rollouts_sampled_ahead_name_the_items_they_answer(tiny_tokenizer, tmp_path):
    """The tree sampled during the last update keeps the places of its items: each step's samples
    name the items of that step's batch (the seeded order's), and show those items' prompts."""
    import json

    from magrpo.data import ItemOrder

    items = [{"question": q} for q in ("q", "a", "b", "c", "a b", "q c")]
    agents = build_agents([(make_tiny_model(len(tiny_tokenizer), seed=s, hidden=64), tiny_tokenizer) for s in (1, 2)])
    args = engine_config(tmp_path, max_steps=3, batch_size=2, num_generations=2, log_samples_steps=1)
    trainer = MAGRPOTrainer(
        agents=agents,
        reward_func=lambda *, completions, **_: [float(len(c0) - len(c1)) for c0, c1 in completions],
        train_dataset=items,
        formatters=[lambda item: item["question"]] * 2,
        args=args,
    )
    trainer.train(progress=False)
    order = ItemOrder(len(items), args.seed)
    drawn = [[order.next() for _ in range(2)] for _ in range(3)]
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    for step in (1, 2, 3):
        mine = [r for r in rows if r["step"] == step]
        assert [r["item"] for r in mine] == [drawn[step - 1][0]] * 2 + [drawn[step - 1][1]] * 2
        for r in mine:
            assert r["prompts"] == [[{"role": "user", "content": items[r["item"]]["question"]}]] * 2
