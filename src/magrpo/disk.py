"""Disk space for a run's checkpoints: a checkpoint's size, known before step 1; the check that
the output folder can hold the checkpoints the run keeps; and the one message of a save that
ran out of space.

A checkpoint holds each agent's trainable weights as saved (a full agent: its whole state dict;
a LoRA agent: its adapter), its optimiser state (before the first step, when AdamW has none yet:
its two moments, each the size of the trainable weights), its tokenizer's files, the critics'
heads and models, and a rollout sampled ahead (``async_rollouts``). The vLLM engines' files (the
model they start from, the adapters they load) go to a temporary folder, not to the run's.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from magrpo.errors import ConfigError

if TYPE_CHECKING:
    from magrpo.trainer import MAGRPOTrainer

#: what a file costs beyond its bytes at most: a file system's block, a zip or safetensors header
FILE_OVERHEAD = 8 << 10
#: files per agent folder besides its tokenizer's: weights, config, generation config, optimiser state
AGENT_FILES = 4
#: the run's own small files in a checkpoint: trainer_state.pt, config.yaml, manifest.json
RUN_FILES_BYTES = 64 << 10
#: the longest prompt a rollout sampled ahead is reckoned with, in tokens (vLLM's default room)
PROMPT_TOKENS = 2048

#: what shrinks a run's checkpoints, named by every message about space
SHRINK = (
    "LoRA agents (use_lora=True; magrpo train --lora: a checkpoint of adapters is a few percent of a full one), "
    "fewer checkpoints kept (save_total_limit=1), checkpoints less often (a larger save_steps or save_minutes), "
    "checkpoints of the weights only (save_only_model=True: a third of a full agent's, not resumable), "
    "or an output folder on a larger disk"
)


@dataclass(frozen=True)
class CheckpointSize:
    """A checkpoint's bytes by part (an estimate from the tensors' sizes and the tokenizers' files)."""

    weights: int
    optimizer: int
    other: int  # tokenizers, critics' heads, the run's state, a rollout sampled ahead, file overheads

    @property
    def total(self) -> int:
        return self.weights + self.optimizer + self.other

    def describe(self) -> str:
        return (
            f"{human(self.total)} (weights {human(self.weights)}, optimiser states {human(self.optimizer)}, "
            f"the rest {human(self.other)})"
        )


def human(size: float) -> str:
    """Bytes as a short figure: 512 B, 3.4 MiB, 2.9 GiB."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(size) >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{int(size)} B"


def _tensor_bytes(tensors: Any) -> int:
    """Bytes of the distinct storages among ``tensors`` (a weight tied to another counts once)."""
    seen, total = set(), 0
    for tensor in tensors:
        if not isinstance(tensor, torch.Tensor):
            continue
        try:
            key = (tensor.data_ptr(), tensor.numel(), tensor.dtype) if tensor.device.type != "meta" else id(tensor)
        except RuntimeError:  # a tensor without storage of its own (a shard's view): counted by identity
            key = id(tensor)
        if key in seen:
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    return total


def _optimizer_bytes(
    optimizer: torch.optim.Optimizer | None, trainable: Sequence[torch.Tensor], current: bool = False
) -> int:
    """The optimiser state's bytes: its tensors, or where it has none yet (before its first step)
    AdamW's two moments (``current``: none)."""
    if optimizer is None:
        return 0
    state = [t for per_param in optimizer.state.values() for t in per_param.values()]
    if state or current:
        return _tensor_bytes(state) + FILE_OVERHEAD * len(state) // 8
    return 2 * _tensor_bytes(trainable) + FILE_OVERHEAD * max(1, len(trainable)) // 8


def _tokenizer_bytes(tokenizer: Any) -> int:
    """The bytes of the files a tokenizer saves (written once to a temporary folder)."""
    if tokenizer is None or not hasattr(tokenizer, "save_pretrained"):
        return 0
    with tempfile.TemporaryDirectory(prefix="magrpo-size-") as folder:
        tokenizer.save_pretrained(folder)
        files = [p for p in Path(folder).rglob("*") if p.is_file()]
        return sum(p.stat().st_size + FILE_OVERHEAD for p in files)


def _saved_weights(agent: Any) -> list[torch.Tensor]:
    """The tensors ``save_agent`` writes for an agent: its whole state dict, or its adapter."""
    if agent.adapter is not None:
        return agent.trainable_parameters()
    return list(agent.model.state_dict().values())


def checkpoint_size(trainer: "MAGRPOTrainer", current: bool = False) -> CheckpointSize:
    """What one full checkpoint of this run takes on disk, about: once its optimisers hold their
    states (before the first step too), or with ``current`` as they are now (an optimiser that
    has not stepped yet, for want of a gradient, saves almost nothing)."""
    team, args = trainer.team, trainer.args
    weights = optimizer = other = 0
    tokenizers: dict[int, int] = {}
    for agent, opt in zip(team.agents, team.optimizers):
        weights += _tensor_bytes(_saved_weights(agent)) + FILE_OVERHEAD * AGENT_FILES
        optimizer += 0 if args.save_only_model else _optimizer_bytes(opt, agent.trainable_parameters(), current)
        key = id(agent.tokenizer)
        if key not in tokenizers:
            tokenizers[key] = _tokenizer_bytes(agent.tokenizer)
        other += tokenizers[key]
    for critic in team.critics:
        other += _tensor_bytes(critic.head.parameters()) + FILE_OVERHEAD
        if critic.model is not None:
            weights += _tensor_bytes(_saved_weights(critic.model)) + FILE_OVERHEAD * AGENT_FILES
            optimizer += 0 if args.save_only_model else _optimizer_bytes(critic.optimizer, critic.parameters(), current)
    # a rollout sampled ahead: ids, masks and log-probs of every completion
    if trainer.ahead is not None and not args.save_only_model:
        rows = args.batch_size * args.num_generations * len(team.agents) * args.num_turns
        other += rows * (PROMPT_TOKENS + args.longest_completion()) * 24
    return CheckpointSize(weights=weights, optimizer=optimizer, other=other + RUN_FILES_BYTES)


def checkpoints_planned(args: Any, step: int) -> int:
    """How many checkpoints the run writes from ``step`` on: every ``save_steps`` steps and, with
    ``save_final_checkpoint``, one at the end (every step at most where ``save_minutes`` may be due
    sooner)."""
    left = max(0, args.max_steps - step)
    if not (args.save_steps or args.save_minutes):
        return 1  # a clean stop still writes one
    if args.save_minutes:
        return max(1, left)
    every = len(range(step + args.save_steps, args.max_steps + 1, args.save_steps))
    return every + (args.save_final_checkpoint and args.max_steps % args.save_steps != 0)  # one at the end if asked


def check_free_space(trainer: "MAGRPOTrainer", existing: Sequence[Path] = ()) -> CheckpointSize:
    """Before step 1: refuse to start where the output folder's file system cannot hold even one
    checkpoint, warn where it cannot hold the checkpoints the run keeps at their peak
    (``save_total_limit`` of them and one being written), naming both figures and what shrinks
    them. ``existing``: this run's complete checkpoints (a resumed run), already on the disk.
    Returns the checkpoint's size."""
    args = trainer.args
    size = checkpoint_size(trainer)
    folder = Path(args.output_dir)
    free = shutil.disk_usage(_existing_parent(folder)).free
    planned = checkpoints_planned(args, trainer.state.step)
    kept = args.save_total_limit if args.save_total_limit is not None else len(existing) + planned
    peak = min(max(1, kept) + 1, len(existing) + planned)  # checkpoints on the disk at once
    existing_bytes = sum(folder_bytes(p) for p in existing[-peak:]) if existing else 0
    needed = max(size.total, peak * size.total - existing_bytes)
    if free < size.total:
        raise ConfigError(
            f"the output folder {str(folder)!r} has {human(free)} free on its file system, less than one checkpoint of "
            f"this run needs: about {size.describe()}; {SHRINK}"
        )
    if free < needed:
        there = f", less the {len(existing)} already there" if existing else ""
        warnings.warn(
            f"the output folder {str(folder)!r} has {human(free)} free on its file system; this run's checkpoints need "
            f"about {human(needed)} at their peak ({peak} of {human(size.total)} each: save_total_limit="
            f"{args.save_total_limit} kept and one being written{there}): the run may stop when the disk is full "
            f"(it keeps its newest complete checkpoint). To need less: {SHRINK}",
            RuntimeWarning,
            stacklevel=3,
        )
    return size


def is_out_of_space(exc: BaseException, folder: Path, needed: int) -> bool:
    """Whether a failed write failed for lack of space: ENOSPC or EDQUOT somewhere in the chain
    of exceptions, a message that says so (safetensors and torch.save put the OS error in their
    own messages), or a write that failed with less free space left than it needed."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(current)
        if any(s in text for s in ("No space left on device", "StorageFull", "Disk quota exceeded", "QuotaExceeded")):
            return True
        if "file write failed" in text or "unexpected pos" in text:  # torch.save's writer names no errno
            try:
                return shutil.disk_usage(_existing_parent(folder)).free < needed
            except OSError:
                return False
        current = current.__cause__ or current.__context__
    return False


def _existing_parent(path: Path) -> Path:
    """``path`` or its nearest existing ancestor (whose file system it will be on)."""
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def folder_bytes(folder: Path) -> int:
    """The bytes of the files under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def out_of_space_message(
    what: str, folder: Path, needed: int, newest: Path | None, newest_step: int | None, hint: str
) -> str:
    """The one message of a save that ran out of space: what ran out, how much was needed,
    which checkpoint is complete, and what to run next."""
    try:
        free = f"{human(shutil.disk_usage(_existing_parent(folder)).free)} free"
    except OSError:
        free = "its free space unknown"
    if newest is not None:
        kept = f"the newest complete checkpoint is {newest} (step {newest_step}); free space, then resume with: {hint}"
    else:
        kept = "no complete checkpoint was written; free space and start the run again"
    return (
        f"out of disk space: {what} could not be written, the file system of {folder} is full "
        f"({os.strerror(errno.ENOSPC)}); it needs about {human(needed)}, {free}. Nothing of it is left on the disk; "
        f"{kept}. To need less: {SHRINK}"
    )


__all__ = [
    "CheckpointSize",
    "check_free_space",
    "checkpoint_size",
    "checkpoints_planned",
    "folder_bytes",
    "human",
    "is_out_of_space",
    "out_of_space_message",
]
