"""Data-parallel training on torch.distributed, as launched by ``torchrun``.

Every rank runs the same loop on its own slice of each step's items (``batch_size`` items per
rank: the step's global batch is ``batch_size x world_size`` items of one shared, seeded order).
A group (one item, one tree node) never spans ranks, so advantages need nothing from other ranks.
Each agent's loss normaliser (completions or tokens of the whole global step) and its gradients
are summed over the ranks before clipping and the optimiser step, so every rank takes the same
step on the same weights: the result is that of one process running the global batch, up to the
order of float additions. Rank 0 alone writes logs, samples, plots and checkpoints; every rank
resumes from them. NCCL on GPUs (each rank on ``cuda:LOCAL_RANK``), gloo on CPUs.

With one process (no ``torchrun``, or ``WORLD_SIZE=1``) every function here is a no-op.
"""

from __future__ import annotations

import atexit
import datetime
import os
from typing import Iterable, Sequence

import torch


def init_from_env(device: str = "auto") -> None:
    """Join the process group torchrun describes in the environment (once); nothing without it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not torch.distributed.is_available():
        return
    if torch.distributed.is_initialized():
        return
    on_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if on_cuda:
        torch.cuda.set_device(local_rank())
    torch.distributed.init_process_group(backend="nccl" if on_cuda else "gloo")
    # leaving the group before the interpreter exits: a gloo group torn down at exit can abort
    # the process ("terminate called without an active exception") after a finished run. A
    # sharded model holds the group too: MAGRPOTrainer.close() lets go of it before this runs
    atexit.register(_leave)


def _leave() -> None:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    if torch.distributed.get_backend() == "gloo" and world_size() > 1:
        # every rank past its last collective before any tears its group down: a gloo group torn
        # down while a peer still finishes one can abort that peer. Bounded: a peer that died
        # never comes, and the rank leaves anyway.
        try:
            torch.distributed.monitored_barrier(timeout=datetime.timedelta(seconds=60))
        except RuntimeError:
            pass
    torch.distributed.destroy_process_group()


def active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and world_size() > 1


def rank() -> int:
    return (
        torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
    )


def world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0: the one that writes files."""
    return rank() == 0


def rank_device(device: str) -> str:
    """``device`` for this rank: "auto" on a GPU machine is this rank's own GPU."""
    if device == "auto" and active() and torch.cuda.is_available():
        return f"cuda:{local_rank()}"
    return device


def sum_float(value: float, device: torch.device | str = "cpu") -> float:
    """``value`` summed over the ranks."""
    return _reduce_float(value, device, "SUM")


def max_float(value: float, device: torch.device | str = "cpu") -> float:
    """The largest ``value`` over the ranks."""
    return _reduce_float(value, device, "MAX")


def _reduce_float(value: float, device: torch.device | str, op: str) -> float:
    if not active():
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device(device))
    torch.distributed.all_reduce(tensor, op=getattr(torch.distributed.ReduceOp, op))
    return float(tensor.item())


def sum_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Each parameter's gradient summed over the ranks, in one flat buffer (a rank without a
    gradient for a parameter contributes zeros)."""
    if not active():
        return
    params = list(params)
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    flat = flat.to(_comm_device(flat.device))
    torch.distributed.all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(g).to(device=p.device, dtype=g.dtype)
        offset += n


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any (a stop signal that reached one rank)."""
    return sum_float(1.0 if flag else 0.0) > 0 if active() else flag


def gather_tensors(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``tensor`` (any shape), on CPU, in rank order."""
    return gather_objects(tensor.cpu())


def gather_objects(value: object) -> list:
    """Every rank's ``value`` (anything picklable), in rank order."""
    if not active():
        return [value]
    out: list = [None] * world_size()
    torch.distributed.all_gather_object(out, value)
    return out


def rank_slice(items: Sequence) -> Sequence:
    """This rank's contiguous slice of ``items`` (the first ranks take one more when it does not
    divide): gathered in rank order, the slices are ``items`` again."""
    size, extra = divmod(len(items), world_size())
    start = rank() * size + min(rank(), extra)
    return items[start : start + size + (rank() < extra)]


def barrier() -> None:
    if active():
        torch.distributed.barrier()


def _comm_device(device: torch.device | str) -> torch.device:
    # NCCL reduces CUDA tensors only, gloo CPU tensors only
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


__all__ = [
    "active",
    "any_rank",
    "barrier",
    "gather_objects",
    "gather_tensors",
    "init_from_env",
    "is_main",
    "local_rank",
    "max_float",
    "rank_slice",
    "rank",
    "rank_device",
    "sum_float",
    "sum_gradients",
    "world_size",
]
