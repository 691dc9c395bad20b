"""Data parallel on torch.distributed (gloo on CPU, real torchrun processes): 2 ranks x 1 item per
rank train the same weights as 1 rank x 2 items, replicated or sharded (FSDP2), on one machine
and as two "nodes"; a data-parallel run resumes exactly; evaluation splits the items over the
ranks and gives the figures of one process."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from magrpo import distributed
from magrpo.checkpoint import verify_checkpoint
from tests.conftest import MACHINE_FIGURES, final_weights

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]

# The 2-rank step sums the same gradient terms as the 1-rank step, in another order (an
# all-reduce of two halves, or their reduce-scatter when sharded, against one batched backward,
# and matmuls of other shapes), so
# gradients agree to float32 rounding (~1e-7 relative). AdamW divides each step by sqrt(v): for a
# gradient element near zero that ratio magnifies those roundings, bounded by the learning rate
# (1e-2) per step. Measured after 3 steps: at most 3.2e-6 (aligned), 1.2e-5 (cross), 1.1e-4
# (LoRA adapters); sharded 2.7e-6, 1.4e-5 and 1.4e-6 (LoRA, each agent its own base). The bound below is 5% of one step's largest move; the weights move > 10x more.
ATOL = 5e-4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(*procs: subprocess.Popen) -> None:
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out


def rewards(run_dir: Path) -> list[float]:
    return [json.loads(line)["reward_mean"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def held_out_figures(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "eval.json").read_text())


def one_rank(out: Path, variant: str, steps: int = 3) -> subprocess.Popen:
    return run([sys.executable, "-m", "tests.dist_run", str(out), variant, "2", str(steps)])


def two_ranks(out: Path, variant: str, steps: int = 3, *extra: str) -> subprocess.Popen:
    return run(
        [
            *TORCHRUN,
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "tests.dist_run",
            str(out),
            variant,
            "1",
            str(steps),
            *extra,
        ]
    )


def metrics_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


#: the update's float sums (summed over ranks in another order: equal to float32 rounding), and
#: a critic's values (float32 forward passes over other batches)
ROUNDED = ("/loss", "/grad_norm", "/entropy", "/is_weight_mean")
ROUNDED += ("/value_loss", "/value_grad_norm", "/value_mean", "/explained_variance")
#: MADPO's figures: float32 forward passes over other batches (each rank's pairs), summed over ranks
ROUNDED += ("preference/dpo_loss", "preference/margin")
#: MARLHF's reward model: float32 forward passes over other batches, its gradients summed over ranks
ROUNDED += ("reward_model/bt_loss", "reward_model/grad_norm", "reward_model/learnt_reward_mean")
#: the same float64 values summed in another order (every rank's turns, one rank after the other)
REORDERED = ("/advantage_mean", "/advantage_std")


def assert_same_metrics(single: Path, parallel: Path) -> None:
    """Every logged figure of the ranks is the global one: the one process's (the per-turn
    rewards, the scorer's figures, the advantages' statistics exactly; the update's sums to rounding)."""
    for one, two in zip(metrics_rows(single), metrics_rows(parallel), strict=True):
        assert one.keys() == two.keys()
        # a critic's advantages hold its values, MADPO's its margins: float32 forward passes over other batches
        scored = any("critic/" in key or key.startswith(("preference/", "reward_model/")) for key in one)
        rounded = ROUNDED + (REORDERED if scored else ())
        for key in one.keys() - MACHINE_FIGURES:
            if key.endswith(rounded):
                assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), key
            elif key.endswith(REORDERED):
                assert two[key] == pytest.approx(one[key], rel=1e-12, abs=1e-15), key
            elif key == "preference/accuracy" and abs(one["preference/margin"]) < 1e-6:
                # the first step's policy is its reference: every margin is rounding noise around
                # 0, and the share of positive ones is the noise's (a copy's kernels round apart)
                continue
            else:
                assert two[key] == one[key], key


def samples(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]


def assert_same_training(single: Path, parallel: Path) -> None:
    assert rewards(single) == rewards(parallel)  # the same samples: each item drew from its own stream
    assert_same_metrics(single, parallel)
    a, b = final_weights(single), final_weights(parallel)
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= ATOL, worst
    # greedy answers of 5 items, 3 + 2 on two ranks: the figures of one process answering all 5
    assert held_out_figures(single) == held_out_figures(parallel)
    assert held_out_figures(single)["items"] == 5.0
    # and the answers behind them, gathered in the items' order whichever rank gave them
    answers = [json.loads((run_dir / "eval_samples.json").read_text()) for run_dir in (single, parallel)]
    assert answers[0] == answers[1] and [(r["item"], r["turn"]) for r in answers[0] if r["turn"] == 1] == [
        (k, 1) for k in range(5)
    ]


def assert_trained(run_dir: Path, **shape) -> None:
    """The run moved each agent's weights well beyond ATOL (by half an AdamW step of lr 1e-2 at
    least, 10 x ATOL): agreement is not two unchanged models."""
    from tests.conftest import make_tiny_model, make_tiny_tokenizer

    trained, vocab = final_weights(run_dir), len(make_tiny_tokenizer())
    for agent, seed in (("agent_0", 1), ("agent_1", 2)):  # each agent's weights before training
        start = make_tiny_model(vocab, seed=seed, **shape).state_dict()
        moved = max((trained[f"{agent}/{k}"] - v).abs().max().item() for k, v in start.items())
        assert moved > 10 * ATOL, (agent, moved)


def assert_adapters_trained(run_dir: Path) -> None:
    """Each agent's LoRA B matrices (zero at the start) moved well beyond ATOL, as above."""
    trained = final_weights(run_dir)
    for agent in ("agent_0", "agent_1"):
        moved = max(v.abs().max().item() for k, v in trained.items() if k.startswith(agent) and "lora_B" in k)
        assert moved > 10 * ATOL, (agent, moved)


@pytest.mark.parametrize(
    "variant", ["aligned", "cross", "lora", "turns", "critic", "critic-model", "madpo", "marlhf", "sequential"]
)
def test_two_ranks_with_one_item_each_train_as_one_rank_with_two(tmp_path, variant):
    single, parallel = tmp_path / "one", tmp_path / "two"
    finish(one_rank(single, variant), two_ranks(parallel, variant))
    assert_same_training(single, parallel)
    # samples.jsonl holds both ranks' items, numbered as the one process numbers them; advantages
    # made of scores (a critic's values, DPO's margins, a learnt reward) are rounded otherwise in a
    # batch of one item than of two, so they agree to float32 rounding, the rest exactly
    ones, twos = samples(single), samples(parallel)
    assert [without_advantages(r) for r in ones] == [without_advantages(r) for r in twos]
    scored = variant.startswith("critic") or variant in ("madpo", "marlhf")
    for one, two in zip(ones, twos):
        assert one["advantages"] == (pytest.approx(two["advantages"], abs=1e-5) if scored else two["advantages"])
    assert_adapters_trained(parallel) if variant == "lora" else assert_trained(parallel)


def without_advantages(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "advantages"}


@pytest.mark.parametrize("variant", ["aligned", "cross", "lora-own"])
def test_two_sharded_ranks_train_as_one_rank_with_two_items(tmp_path, variant):
    """FSDP2: each rank holds half of every weight, gradient and moment, and the run is the same."""
    single, sharded = tmp_path / "one", tmp_path / "sharded"
    finish(one_rank(single, variant), two_ranks(sharded, variant, 3, "--shard"))
    assert_same_training(single, sharded)
    assert_adapters_trained(sharded) if variant == "lora-own" else assert_trained(sharded)
    # each rank held about half of every trainable weight and AdamW moment; the two halves, all of them
    held = [json.loads((sharded / f"held-by-rank-{r}.json").read_text()) for r in (0, 1)]
    whole = held[0]["whole"]
    assert held[0]["local"] + held[1]["local"] == whole and max(h["local"] for h in held) <= 0.55 * whole
    assert all(h["moments"] == 2 * h["local"] for h in held)
    replicated = json.loads((single / "held-by-rank-0.json").read_text())
    assert replicated == {"local": whole, "whole": whole, "moments": 2 * whole}


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_two_sharded_ranks_sample_on_vllm_engines_what_one_unsharded_process_samples(tmp_path):
    """Each rank's engine takes its agents' weights gathered one tensor at a time after every
    update: the same samples, rewards and metrics rows as one process, each item from its own seeds."""
    single, sharded = tmp_path / "one", tmp_path / "sharded"
    finish(one_rank(single, "vllm"), two_ranks(sharded, "vllm", 3, "--shard"))
    assert_same_training(single, sharded)
    assert_trained(sharded, hidden=64)
    held = [json.loads((sharded / f"held-by-rank-{r}.json").read_text()) for r in (0, 1)]
    assert max(h["local"] for h in held) <= 0.55 * held[0]["whole"]  # each rank held half of every weight


def test_a_sharded_run_resumes_exactly_and_its_checkpoints_resume_replicated(tmp_path):
    straight, resumed, replicated = tmp_path / "straight", tmp_path / "resumed", tmp_path / "replicated"
    finish(two_ranks(straight, "aligned", 3, "--shard"), two_ranks(resumed, "aligned", 2, "--shard"))
    shutil.copytree(resumed, replicated)
    finish(two_ranks(resumed, "aligned", 3, "--shard", "--resume"))
    assert rewards(straight) == rewards(resumed)
    a, b = final_weights(straight), final_weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the checkpoint holds whole tensors, as a replicated run writes them: the run goes on replicated
    finish(two_ranks(replicated, "aligned", 3, "--resume"))
    assert_same_training(straight, replicated)


def test_two_nodes_on_loopback_train_and_checkpoint(tmp_path):
    port = free_port()
    nodes = [
        run(
            [
                *TORCHRUN,
                "--nnodes",
                "2",
                "--node-rank",
                str(r),
                "--nproc-per-node",
                "1",
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                f"127.0.0.1:{port}",
                "--rdzv-id",
                "loopback",
                "-m",
                "tests.dist_run",
                str(tmp_path / "run"),
                "aligned",
                "1",
                "3",
            ]
        )
        for r in (0, 1)
    ]
    single = one_rank(tmp_path / "one", "aligned")
    finish(*nodes, single)
    for step in (1, 2, 3):
        verify_checkpoint(tmp_path / "run" / "checkpoints" / f"step-{step}")
    assert_same_training(tmp_path / "one", tmp_path / "run")


def test_a_data_parallel_run_resumes_exactly(tmp_path):
    finish(two_ranks(tmp_path / "straight", "aligned", 3), two_ranks(tmp_path / "resumed", "aligned", 2))
    finish(two_ranks(tmp_path / "resumed", "aligned", 3, "--resume"))
    assert rewards(tmp_path / "straight") == rewards(tmp_path / "resumed")
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_without_torchrun_every_collective_is_the_identity():
    assert (
        not distributed.active() and distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    )
    assert distributed.sum_float(2.5) == 2.5 and distributed.any_rank(True) and not distributed.any_rank(False)
    assert [t.tolist() for t in distributed.gather_tensors(torch.tensor([1.0, 2.0]))] == [[1.0, 2.0]]
    assert distributed.rank_device("auto") == "auto"
    assert distributed.max_float(3.0) == 3.0 and distributed.gather_objects({"a": 1}) == [{"a": 1}]
    assert distributed.rank_slice([1, 2, 3]) == [1, 2, 3]


@pytest.mark.slow
def test_the_cli_launches_torchrun_for_nproc(tmp_path):
    exe = Path(sys.executable).with_name("magrpo")
    out = subprocess.run(
        [
            str(exe),
            "train",
            "--task",
            "coding",
            "--nproc",
            "2",
            "--steps",
            "1",
            "-G",
            "2",
            "--max-new-tokens",
            "8",
            "--eval-items",
            "0",
            "--output-dir",
            str(tmp_path / "run"),
            "--no-progress",
            "--set",
            "save_final_checkpoint=true",  # the checkpoint of the last step, checked below
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**ENV, "COLUMNS": "200"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "torch.distributed.run --standalone --nproc-per-node 2 -m magrpo.cli train" in out.stdout
    assert "on 2 ranks" in out.stdout
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [1]
    verify_checkpoint(tmp_path / "run" / "checkpoints" / "step-1")


def test_sharding_refuses_agents_that_share_one_model(tiny_tokenizer):
    from magrpo.errors import ConfigError
    from magrpo.models import build_agents
    from magrpo.sharding import check_shardable
    from tests.conftest import make_tiny_model

    tok = tiny_tokenizer
    own = build_agents(
        [(make_tiny_model(len(tok), seed=s), tok) for s in (1, 2)], device="cpu", use_lora=True, lora_r=2
    )
    check_shardable(own)  # each agent its own model: fine
    shared = build_agents([(make_tiny_model(len(tok), seed=1), tok)] * 2, device="cpu", use_lora=True, lora_r=2)
    with pytest.raises(ConfigError, match="'agent_0' and 'agent_1' share one .* load the model once per agent"):
        check_shardable(shared)
