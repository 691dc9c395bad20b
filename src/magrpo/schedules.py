"""Learning-rate schedules: transformers' ``get_scheduler``, one per optimiser, stepped once per
training step. Below the config in the imports: the config checks a schedule's arguments by
building one here (:func:`check_schedule`), before any model is set up."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Sequence

import torch

from magrpo.errors import ConfigError

if TYPE_CHECKING:
    from magrpo.config import MAGRPOConfig


def make_schedulers(
    optimizers: Sequence[torch.optim.Optimizer], args: MAGRPOConfig
) -> list[torch.optim.lr_scheduler.LRScheduler]:
    """One transformers schedule per optimiser (``lr_scheduler_type``, the warm-up, over
    ``max_steps`` training steps), each at its own agent's rate."""
    return [
        _schedule(optimizer, args.lr_scheduler_type, args.lr_scheduler_kwargs, args.warmup(), args.max_steps)
        for optimizer in optimizers
    ]


def check_schedule(kind: str, kwargs: dict[str, Any] | None, warmup_steps: int, max_steps: int) -> None:
    """Build the schedule once on a throw-away optimiser: a schedule that needs arguments
    (cosine_with_min_lr, warmup_stable_decay) it was not given fails here, naming them."""
    _schedule(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), kind, kwargs, warmup_steps, max_steps)


def _schedule(
    optimizer: torch.optim.Optimizer, kind: str, kwargs: dict[str, Any] | None, warmup_steps: int, max_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    from transformers import get_scheduler

    try:
        return get_scheduler(
            kind,
            optimizer,
            num_warmup_steps=warmup_steps,
            num_training_steps=max_steps,
            scheduler_specific_kwargs=kwargs,
        )
    except (TypeError, ValueError) as exc:  # a schedule that needs arguments it was not given
        raise ConfigError(f"lr_scheduler_type={kind!r} with lr_scheduler_kwargs={kwargs!r}: {exc}") from exc


def step_schedulers(schedulers: Sequence[torch.optim.lr_scheduler.LRScheduler] | None) -> None:
    """Move every schedule on by one training step (a step without an optimiser step, no agent
    having a signal, still counts: the schedule follows the run's steps)."""
    with warnings.catch_warnings():  # torch warns when a schedule moves before its optimiser's first step
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
        for scheduler in schedulers or []:
            scheduler.step()


__all__ = ["check_schedule", "make_schedulers", "step_schedulers"]
