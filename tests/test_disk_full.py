"""A full disk, said plainly. Before step 1 a run knows what a checkpoint takes and refuses to
start where its output folder cannot hold one, or warns where it cannot hold the checkpoints it
keeps, naming both figures and the settings that shrink them; a save that runs out of space ends
the run with one message (what ran out, how much was needed, the newest complete checkpoint, the
resume command) and leaves nothing a resume could take for a complete checkpoint.

The full disk is a small tmpfs the test mounts itself (skipped where mounting is not allowed), or
a checkpoint writer that fails as a full disk makes it fail (everywhere)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from magrpo import ConfigError, DiskFullError, MAGRPOConfig, MAGRPOTrainer
from magrpo.checkpoint import resolve_resume, verify_checkpoint
from magrpo.disk import checkpoint_size
from tests.conftest import letter_count_reward


def trainer(agents, output: Path, **config) -> MAGRPOTrainer:
    settings = dict(num_generations=4, max_new_tokens=4, max_steps=6, save_steps=1, save_total_limit=2)
    args = MAGRPOConfig(output_dir=str(output), log_samples_steps=0, **{**settings, **config})
    return MAGRPOTrainer(
        agents=agents,
        reward_func=letter_count_reward,
        train_dataset=[{"q": "q a"}],
        formatters=[lambda x: x["q"]] * 2,
        args=args,
    )


@contextlib.contextmanager
def small_filesystem(path: Path, size: int):
    """A tmpfs of ``size`` bytes mounted at ``path`` for the block (skips the test where it cannot be)."""
    path.mkdir(parents=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small file system needs root and mount(8)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def estimate(agents, tmp_path: Path) -> int:
    """What the run reckons one checkpoint of these agents takes (more than a real one)."""
    return checkpoint_size(trainer(agents, tmp_path / "unused")).total


def left_behind(run: Path) -> list[str]:
    """What a save left in the checkpoints folder besides complete step-N folders."""
    folder = run / "checkpoints"
    return sorted(p.name for p in folder.iterdir() if not (p / "manifest.json").is_file()) if folder.is_dir() else []


def test_a_run_whose_output_folder_cannot_hold_one_checkpoint_is_refused_before_step_1(tiny_agents, tmp_path):
    with small_filesystem(tmp_path / "small", estimate(tiny_agents, tmp_path) // 2) as small:
        run = trainer(tiny_agents, small / "run")
        with pytest.raises(ConfigError) as refused:
            run.train(progress=False)
        assert run.state.step == 0
    message = str(refused.value)
    assert message.startswith(f"the output folder '{small / 'run'}' has ")
    assert "free on its file system, less than one checkpoint of this run needs: about " in message
    assert "(weights " in message and "optimiser states " in message
    for setting in ("use_lora=True", "save_total_limit=1", "save_steps", "a larger disk"):
        assert setting in message


def test_a_save_that_runs_out_of_space_ends_the_run_with_one_message_and_leaves_no_torn_checkpoint(
    tiny_agents, tmp_path
):
    # room for one checkpoint as reckoned (a real one is smaller) and the run's logs, not for the
    # three that save_total_limit=2 needs while it saves
    with small_filesystem(tmp_path / "small", int(1.6 * estimate(tiny_agents, tmp_path))) as small:
        run = trainer(tiny_agents, small / "run")
        run.resume_hint = "magrpo train --resume RUN"
        with pytest.warns(RuntimeWarning, match=r"this run's checkpoints need about .* at their peak \(3 of "):
            with pytest.raises(DiskFullError) as full:
                run.train(progress=False)
        message = str(full.value)
        newest = resolve_resume(small / "run")
        verify_checkpoint(newest)
        assert left_behind(small / "run") == []  # no hidden half-written folder, no -interrupted weights
        assert not (small / "run" / "final").exists()
    failed = f"step-{run.state.step}"
    assert message.startswith(
        f"out of disk space: checkpoint {failed} could not be written, the file system of {small / 'run' / 'checkpoints'} "
        "is full (No space left on device); it needs about "
    )
    assert (
        f"the newest complete checkpoint is {newest} (step {run.state.step - 1}); free space, then resume with: magrpo train --resume RUN"
        in message
    )
    assert "Nothing of it is left on the disk" in message and "save_total_limit=1" in message


def test_a_writer_failing_as_a_full_disk_does_ends_the_run_the_same_way(tiny_agents, tmp_path, monkeypatch):
    """No mount needed: the third checkpoint's optimiser state fails to write with ENOSPC."""
    saves = []
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if str(f).endswith("optimizer.pt"):
            saves.append(f)
            if len(saves) > 4:  # two agents a checkpoint: the third checkpoint's first file
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    run = trainer(tiny_agents, tmp_path / "run")
    with pytest.raises(DiskFullError, match="out of disk space: checkpoint step-3 could not be written") as full:
        run.train(progress=False)
    assert f"the newest complete checkpoint is {tmp_path / 'run' / 'checkpoints' / 'step-2'} (step 2)" in str(
        full.value
    )
    assert "resume with: trainer.train(resume_from_checkpoint=" in str(full.value)
    assert left_behind(tmp_path / "run") == [] and resolve_resume(tmp_path / "run").name == "step-2"
