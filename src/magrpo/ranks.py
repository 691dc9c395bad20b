"""What a step asks of the other data-parallel ranks, behind one small object.

The algorithm (:mod:`magrpo.step`) never calls torch.distributed itself: it asks its ``ranks``
for a sum, a maximum, the gradients summed, whole weights for sampling, idle passes to keep
sharded ranks in step. With one process, :class:`OneProcess` answers every question at once and
talks to nobody, so the step reads the same with or without ``torchrun``:

- :class:`OneProcess`: no other rank; every collective is the identity.
- :class:`ReplicatedRanks`: every rank holds each agent whole; floats and gradients summed over
  the ranks (as DDP does), so every rank takes the same optimiser step.
- :class:`ShardedRanks`: each agent split over the ranks with FSDP2 (:mod:`magrpo.sharding`);
  gradients are summed by each backward's reduce-scatter, weights gathered whole for sampling,
  and a rank with fewer micro-batches runs idle passes so every rank makes the same collectives.

Every rank must call the same methods in the same order: each method that talks to the other
ranks says so.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Sequence

import torch

from magrpo import distributed, sharding


class OneProcess:
    """A run without other ranks: every collective is the identity."""

    sharded = False

    @property
    def rank(self) -> int:
        return 0

    @property
    def world_size(self) -> int:
        return 1

    @property
    def is_main(self) -> bool:
        """The rank that writes files and prints."""
        return self.rank == 0

    def sum(self, value: float, device: torch.device | str = "cpu") -> float:
        """``value`` summed over the ranks (collective)."""
        return float(value)

    def max(self, value: float, device: torch.device | str = "cpu") -> float:
        """The largest ``value`` over the ranks (collective)."""
        return float(value)

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (collective)."""
        return bool(flag)

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order (collective)."""
        return [value]

    def share(self, items: Sequence[Any]) -> Sequence[Any]:
        """This rank's contiguous share of ``items``; gathered in rank order they are ``items``."""
        return items

    def barrier(self) -> None:
        """Wait for every rank (collective)."""

    def sum_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Each parameter's gradient summed over the ranks (collective)."""

    def clip_gradients(self, params: Sequence[torch.nn.Parameter], max_norm: float) -> float:
        """Clip the gradients to ``max_norm`` (their norm over every rank's shards); returns the norm before."""
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def idle_passes(self, passes: int, device: torch.device | str) -> int:
        """How many idle passes this rank runs after its own ``passes`` (collective when sharded)."""
        return 0

    def idle_pass(self, model: torch.nn.Module, device: torch.device, backward: bool = True) -> None:
        """A forward (and backward, adding exactly zero gradient) without data: another rank's
        collectives matched."""
        raise RuntimeError("an idle pass is only needed by sharded ranks")

    def whole_weights(self, models: Iterable[torch.nn.Module]) -> contextlib.AbstractContextManager:
        """Every model's weights whole on this rank for the block (collective when sharded)."""
        return contextlib.nullcontext()

    def whole_states(
        self, agents: Sequence[Any], optimizers: Sequence[torch.optim.Optimizer], *, with_optimizers: bool
    ) -> list[tuple[dict, dict | None]] | None:
        """Per agent (weights, optimiser state or None) gathered whole, for the main rank to write;
        None where the agents hold them whole already (collective when sharded)."""
        return None


class ReplicatedRanks(OneProcess):
    """Ranks that each hold every agent whole (``data_parallel="replicate"``)."""

    @property
    def rank(self) -> int:
        return distributed.rank()

    @property
    def world_size(self) -> int:
        return distributed.world_size()

    def sum(self, value: float, device: torch.device | str = "cpu") -> float:
        return distributed.sum_float(value, device)

    def max(self, value: float, device: torch.device | str = "cpu") -> float:
        return distributed.max_float(value, device)

    def any(self, flag: bool) -> bool:
        return distributed.any_rank(flag)

    def gather(self, value: Any) -> list[Any]:
        return distributed.gather_objects(value)

    def share(self, items: Sequence[Any]) -> Sequence[Any]:
        return distributed.rank_slice(items)

    def barrier(self) -> None:
        distributed.barrier()

    def sum_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        distributed.sum_gradients(params)


class ShardedRanks(ReplicatedRanks):
    """Ranks that each hold 1/world of every agent (``data_parallel="shard"``, FSDP2)."""

    sharded = True

    def sum_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        pass  # each backward's reduce-scatter has summed them already

    def clip_gradients(self, params: Sequence[torch.nn.Parameter], max_norm: float) -> float:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # a norm over every shard

    def idle_passes(self, passes: int, device: torch.device | str) -> int:
        # every forward/backward is a collective: every rank runs as many as the busiest one
        return int(self.max(passes, device)) - passes

    def idle_pass(self, model: torch.nn.Module, device: torch.device, backward: bool = True) -> None:
        sharding.idle_pass(model, device, backward)

    def whole_weights(self, models: Iterable[torch.nn.Module]) -> contextlib.AbstractContextManager:
        return sharding.gathered(models)

    def whole_states(
        self, agents: Sequence[Any], optimizers: Sequence[torch.optim.Optimizer], *, with_optimizers: bool
    ) -> list[tuple[dict, dict | None]] | None:
        return [
            (
                sharding.full_weights(agent.model, only_adapter=agent.adapter is not None),
                sharding.full_optimizer_state(optimizer) if with_optimizers else None,
            )
            for agent, optimizer in zip(agents, optimizers)
        ]


__all__ = ["OneProcess", "ReplicatedRanks", "ShardedRanks"]
