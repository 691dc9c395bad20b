"""Checkpoints hold the whole state: a run killed with SIGKILL (or stopped with SIGTERM) and
resumed ends bitwise identical to one that ran straight through; damage is found and named."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import torch

from magrpo import CheckpointError, ConfigError, MAGRPOConfig
from magrpo.checkpoint import checkpoints_of, prune_checkpoints, resolve_resume, verify_checkpoint
from tests.conftest import MACHINE_FIGURES, final_weights

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def ended_with_the_test(proc: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """``proc``, killed if the test ends (passes or fails) while it still runs: a run started beside
    the one under test does not outlive a failure."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)


@contextmanager
def removed_with_the_test(folder: Path) -> Iterator[Path]:
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(out: Path, variant: str, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.tiny_run", str(out), variant, *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})},
    )


# the timeouts guard against a hang, nothing more: a loaded machine (two runs side by side, each with
# vLLM engine processes) may take minutes to reach a step
def finish(proc: subprocess.Popen, timeout: float = 900) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command's name (state first), or None for no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid`` -> its start time (which tells it from a later process given its pid)."""
    found, pending = {}, [pid]
    while pending:
        for task in Path(f"/proc/{pending.pop()}/task").glob("*/children"):
            for child in map(int, task.read_text().split()):
                if (fields := _stat(child)) is not None:
                    found[child] = fields[19]  # starttime, field 22 of stat
                    pending.append(child)
    return found


def running(pid: int, start: str) -> bool:
    """The process that started at ``start`` is alive and not a zombie."""
    fields = _stat(pid)
    return fields is not None and fields[19] == start and fields[0] != "Z"


def state_of(run_dir: Path) -> dict:
    """Final weights, optimiser states and metrics rows (without wall-clock figures) of a run."""
    last = run_dir / "checkpoints" / "step-6"
    optim = {}
    for path in sorted(last.glob("*/optimizer.pt")):  # the agents', and critic models' of their own
        optim[path.parent.name] = torch.load(path, weights_only=True)
    assert {"agent_0", "agent_1"} <= optim.keys()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        "weights": final_weights(run_dir),
        "optim": optim,
        "metrics": [{k: v for k, v in r.items() if k not in MACHINE_FIGURES} for r in rows],
        "samples": [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()],
    }


def assert_same_state(a: dict, b: dict) -> None:
    assert a["metrics"] == b["metrics"] and [r["step"] for r in a["metrics"]] == [1, 2, 3, 4, 5, 6]
    # the samples too, each naming the same item (a rollout sampled ahead keeps its items' places)
    assert a["samples"] == b["samples"] and {r["step"] for r in a["samples"]} == {1, 2, 3, 4, 5, 6}
    assert a["weights"].keys() == b["weights"].keys()
    for key, value in a["weights"].items():
        assert torch.equal(value, b["weights"][key]), key
    for agent, state in a["optim"].items():
        other = b["optim"][agent]
        assert state["param_groups"] == other["param_groups"]
        for index, slot in state["state"].items():
            for name, tensor in slot.items():
                assert torch.equal(tensor, other["state"][index][name]), (agent, index, name)


NO_VLLM = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")


@pytest.mark.parametrize(
    "variant",
    [
        "full",
        "lora",
        "turns",
        "objective",
        "critic",
        "critic-model",
        "madpo",
        "madpo-frozen",
        "marlhf",
        "sequential",
        # the team on vLLM engines of their own, each rollout sampled during the update before it:
        # after the resume the engines start from the checkpoint's weights and the rollout it kept
        # (an engine in the trainer's process takes its weights by the same sync: test_vllm_engine.py)
        pytest.param("async", marks=NO_VLLM),
    ],
)
def test_a_run_killed_with_sigkill_then_resumed_equals_the_straight_run(tmp_path, variant):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    # the straight run beside the killed one: the two share nothing; the killed run's temporary
    # folder its own, to see that its engine's copy of the weights does not outlive it (a short
    # path: vLLM's sockets go there too)
    with (
        removed_with_the_test(Path(tempfile.mkdtemp(prefix="kill-", dir="/tmp"))) as scratch,
        ended_with_the_test(run(straight, variant)) as straight_run,
        ended_with_the_test(run(killed, variant, env={"MAGRPO_SLOW_REWARD": "0.3", "TMPDIR": str(scratch)})) as proc,
    ):
        wait_for(killed / "checkpoints" / "step-3" / "manifest.json", proc)
        children = descendants(proc.pid)
        assert children or variant != "async"  # its engines live in processes of their own
        assert list(scratch.glob("magrpo-vllm-*")) or variant != "async"  # with their copies of the weights
        proc.send_signal(signal.SIGKILL)  # a real kill -9: nothing of the run gets to react
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        deadline = time.monotonic() + 60
        while (left := [pid for pid, start in children.items() if running(pid, start)]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, f"processes of the killed run still running: {left}"
        while list(scratch.glob("magrpo-*")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not list(scratch.glob("magrpo-*")), "the killed run's engine folders were left behind"
        resumed_from = resolve_resume(killed)
        assert 3 <= int(resumed_from.name.split("-")[1]) < 6
        out = finish(run(killed, variant, "--resume"))
        assert f"resumed from {resumed_from}" in out and "finished 6" in out
        finish(straight_run)
        assert_same_state(state_of(straight), state_of(killed))


def test_sigterm_finishes_the_step_saves_and_names_the_command_that_resumes(tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    # beside the stopped one: the two share nothing
    with (
        ended_with_the_test(run(straight, "full")) as straight_run,
        ended_with_the_test(run(stopped, "full", env={"MAGRPO_SLOW_REWARD": "0.3"})) as proc,
    ):
        wait_for(stopped / "metrics.jsonl", proc)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 128 + signal.SIGTERM, out
        step = len((stopped / "metrics.jsonl").read_text().splitlines())
        assert (
            f"stopped after step {step}" in out
            and f"resume with: python -m tests.tiny_run {stopped} full --resume" in out
        )
        verify_checkpoint(stopped / "checkpoints" / f"step-{step}")
        assert not any(p.name.endswith("-interrupted") for p in (stopped / "checkpoints").iterdir())
        finish(run(stopped, "full", "--resume"))
        finish(straight_run)
        assert_same_state(state_of(straight), state_of(stopped))


def test_a_first_ctrl_c_stops_cleanly_and_a_second_aborts_at_once(tmp_path):
    clean, aborted = tmp_path / "clean", tmp_path / "aborted"
    proc = run(clean, "full", env={"MAGRPO_SLOW_REWARD": "0.3"})
    wait_for(clean / "metrics.jsonl", proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode in (-signal.SIGINT, 128 + signal.SIGINT), out  # KeyboardInterrupt, as Python ends on it
    step = len((clean / "metrics.jsonl").read_text().splitlines())
    assert "Ctrl-C again to abort at once" in out and f"stopped after step {step}" in out
    verify_checkpoint(clean / "checkpoints" / f"step-{step}")

    proc = run(aborted, "full", env={"MAGRPO_SLOW_REWARD": "2"})
    wait_for(aborted / "checkpoints" / "step-1" / "manifest.json", proc)
    time.sleep(0.3)  # inside step 2's reward, which takes 2 s
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)  # no waiting for the step to end
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode in (-signal.SIGINT, 128 + signal.SIGINT), out
    assert "KeyboardInterrupt" in out and "stopped after step" not in out
    assert len((aborted / "metrics.jsonl").read_text().splitlines()) == 1
    assert not (aborted / "checkpoints" / "step-2").exists()  # the step it was in never finished


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    finish(run(out, "full"))
    return out


def test_damage_is_named_and_a_run_folder_falls_back_to_the_previous_complete_checkpoint(finished_run, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    newest = run_dir / "checkpoints" / "step-6"
    optimizer = newest / "agent_1" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match=f"checkpoint file '{optimizer}' is truncated or changed"):
        verify_checkpoint(newest)
    with pytest.warns(UserWarning, match="skipping checkpoint step-6"):
        assert resolve_resume(run_dir) == run_dir / "checkpoints" / "step-5"
    (run_dir / "checkpoints" / "step-5" / "manifest.json").unlink()  # as a kill during a save would leave it
    with pytest.raises(CheckpointError, match="is incomplete: it has no manifest.json"):
        verify_checkpoint(run_dir / "checkpoints" / "step-5")
    with pytest.warns(UserWarning):
        assert resolve_resume(run_dir) == run_dir / "checkpoints" / "step-4"
    with pytest.raises(CheckpointError, match="nothing to resume"):
        resolve_resume(tmp_path / "empty")


def test_a_resume_that_would_change_the_maths_is_refused_naming_the_fields(finished_run, tmp_path):
    import shutil

    sys.path.insert(0, str(ROOT))
    from tests.tiny_run import build

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    trainer = build(str(run_dir), "full")
    trainer.args.learning_rate, trainer.args.max_steps, trainer.args.num_generations = 0.5, 8, 4
    with pytest.raises(
        ConfigError, match=r"with a different learning_rate \(learning_rate: 0.01 in the checkpoint, 0.5 now\)"
    ):
        trainer.train(progress=False, resume_from_checkpoint=True)
    # a checkpoint written before a field existed ran at that field's default
    import yaml

    from magrpo.checkpoint import check_resumable_config

    older = tmp_path / "older"
    older.mkdir()
    saved = yaml.safe_load((run_dir / "checkpoints" / "step-6" / "config.yaml").read_text())
    (older / "config.yaml").write_text(yaml.safe_dump({k: v for k, v in saved.items() if k != "advantage_baseline"}))
    with pytest.raises(ConfigError, match=r"different learning_rate \(learning_rate"):  # and nothing else differs
        check_resumable_config(older, trainer.args)
    trainer.args.learning_rate = 1e-2  # more steps are fine: the run goes on from step 6
    history = trainer.train(progress=False, resume_from_checkpoint=True)
    assert [h["step"] for h in history] == list(range(1, 9))
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == list(
        range(1, 9)
    )


def test_only_the_newest_checkpoints_are_kept(finished_run, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    assert [p.name for p in checkpoints_of(run_dir)] == [f"step-{i}" for i in range(1, 7)]
    leftovers = run_dir / "checkpoints"
    (leftovers / ".step-7.k2j4x" / "agent_0").mkdir(parents=True)  # a save killed half-way
    (leftovers / "step-4-interrupted").mkdir()  # weights of a run that died, since checkpointed past
    (leftovers / "step-9-interrupted").mkdir()  # newer than every checkpoint: still the best there is
    prune_checkpoints(run_dir, keep=2)
    assert [p.name for p in checkpoints_of(run_dir)] == ["step-5", "step-6"]
    assert sorted(p.name for p in leftovers.iterdir()) == ["step-5", "step-6", "step-9-interrupted"]
    prune_checkpoints(run_dir, keep=None)
    assert len(checkpoints_of(run_dir)) == 2


def test_a_log_line_torn_by_a_kill_is_dropped_on_resume(finished_run, tmp_path):
    import shutil

    from magrpo.report import RunLog

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    metrics = run_dir / "metrics.jsonl"
    rows = metrics.read_text().splitlines()
    metrics.write_text("\n".join(rows[:4]) + "\n" + rows[4][: len(rows[4]) // 2])  # killed while writing step 5
    log = RunLog(run_dir, MAGRPOConfig(output_dir=str(run_dir)), resume=True)
    assert [r["step"] for r in log.resume_at(4)] == [1, 2, 3, 4]
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2, 3, 4]
    metrics.write_text("\n".join([rows[0], "{torn", rows[2]]) + "\n")  # damage inside the log is not a kill
    with pytest.raises(ValueError, match="metrics.jsonl' line 2 is not valid JSON"):
        log.resume_at(4)


def test_checkpoint_fields_are_checked():
    with pytest.raises(ConfigError, match="save_total_limit=0 is not valid"):
        MAGRPOConfig(save_total_limit=0)
    with pytest.raises(ConfigError, match="save_minutes=-1 is not valid"):
        MAGRPOConfig(save_minutes=-1)


def test_no_resumable_checkpoint_when_both_save_intervals_are_zero(tiny_agents, tmp_path):
    from magrpo import MAGRPOTrainer
    from tests.conftest import letter_count_reward

    args = MAGRPOConfig(
        num_generations=2,
        max_new_tokens=2,
        max_steps=2,
        save_steps=0,
        save_minutes=0,
        output_dir=str(tmp_path),
        log_samples_steps=0,
    )
    MAGRPOTrainer(
        agents=tiny_agents,
        reward_func=letter_count_reward,
        train_dataset=[{"q": "q"}],
        formatters=[lambda x: x["q"]] * 2,
        args=args,
    ).train(progress=False)
    assert not (tmp_path / "checkpoints").exists()
    assert {"agent_0", "agent_1"} <= {p.name for p in (tmp_path / "final").iterdir()}


def rewrite_state(checkpoint: Path, state: dict) -> None:
    """Replace a checkpoint's trainer state, its manifest updated (as another machine wrote it)."""
    from magrpo.checkpoint import _sha256

    path = checkpoint / "trainer_state.pt"
    torch.save(state, path)
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["files"]["trainer_state.pt"] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))


def test_a_resume_on_other_devices_or_ranks_that_would_change_the_maths_is_refused(finished_run, tmp_path):
    import shutil

    sys.path.insert(0, str(ROOT))
    from magrpo.run import precision_policy
    from tests.tiny_run import build

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    newest = run_dir / "checkpoints" / "step-6"
    state = torch.load(newest / "trainer_state.pt", weights_only=True)
    trainer = build(str(run_dir), "full")
    assert state["world_size"] == 1 and state["precision"] == precision_policy(trainer.team.precision)
    # what "auto" resolves to here is not what it resolved to there (as on a GPU after a CPU)
    state["precision"] = {"autocast": "float16", "rollout_dtype": "float16"}
    rewrite_state(newest, state)
    now = precision_policy(trainer.team.precision)
    with pytest.raises(ConfigError) as err:
        trainer.train(progress=False, resume_from_checkpoint=newest)
    assert str(err.value) == (
        "this checkpoint ran with autocast=float16, rollout_dtype=float16; here the config resolves to "
        f"autocast={now['autocast']}, rollout_dtype={now['rollout_dtype']} (other devices): resume with "
        "--set autocast=float16 --set rollout_dtype=float16 to run as it ran"
    )
    state["precision"], state["world_size"] = now, 2  # written by a run on two ranks
    rewrite_state(newest, state)
    with pytest.raises(
        ConfigError, match=r"this checkpoint ran on 2 rank\(s\) .*here there are 1: resume with --nproc 2"
    ):
        trainer.train(progress=False, resume_from_checkpoint=newest)
