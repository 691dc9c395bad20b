"""Sharded agents (``data_parallel="shard"``): each agent's model split over the ranks with FSDP2.

With ``fully_shard`` on every transformer block and on the whole model, each rank keeps only
its 1/world share of an agent's weights, gradients and AdamW moments; the optimiser steps on that
share. What the loop needs on top of torch's FSDP2:

- **sampling with whole weights**: decoding runs a different number of forward passes on every
  rank (each stops when its own completions end), so it cannot all-gather per pass. ``gathered``
  all-gathers every agent's weights once, keeps them whole through the rollout and frees them
  after: peak memory is one whole copy of the weights (no gradients, no moments) while sampling;
- **the same collectives on every rank**: each forward/backward of the update all-gathers and
  reduce-scatters, so a rank with fewer micro-batches runs ``idle_pass`` (exactly zero gradient)
  until every rank has run as many;
- **gradients summed, not averaged**: the loss is already divided by the whole global step's
  normaliser, as on the replicated path, so the reduce-scatter must add the ranks' shares;
- **checkpoints in the replicated format**: ``full_weights`` and ``full_optimizer_state`` gather
  whole weights and optimiser moments for rank 0 to write, and loading puts the shards of whole
  tensors back, so a sharded run resumes replicated, and the other way round.

Without torchrun (one process) nothing is sharded: the same config runs anywhere.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator, Sequence

import torch

from magrpo import distributed
from magrpo.errors import ConfigError
from magrpo.grouping import distinct_by_identity, group_by_identity


def shard_model(model: torch.nn.Module) -> None:
    """Shard ``model`` over all ranks in place: each transformer block (the classes transformers
    never splits, ``_no_split_modules``) its own FSDP unit, the rest (embeddings, head) the root's."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (distributed.world_size(),))
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    blocks = set(getattr(base, "_no_split_modules", None) or ())
    for module in list(model.modules()):
        if type(module).__name__ in blocks:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)  # a sum over the ranks (see the module docstring)
            module.set_force_sum_reduction_for_comms(True)  # plain SUM: gloo has no pre-multiplied sum
    model.register_load_state_dict_pre_hook(_shard_whole_tensors)


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def gathered(models: Iterable[torch.nn.Module]) -> Iterator[None]:
    """Every sharded model's weights whole on every rank for the block (one all-gather per FSDP
    unit, in the same order on every rank): forward passes inside run no collective, so ranks
    may run different numbers of them. Models that are not sharded pass through."""
    from torch.distributed.fsdp import FSDPModule

    units = [
        m for model in _distinct(models) if is_sharded(model) for m in model.modules() if isinstance(m, FSDPModule)
    ]
    for unit in units:
        unit.unshard()
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for unit in units:
            unit.set_reshard_after_forward(True, recurse=False)
            unit.reshard()


def idle_pass(model: torch.nn.Module, device: torch.device, backward: bool = True) -> None:
    """A forward and backward that adds exactly zero to every gradient (``backward=False``: the
    forward alone, as a pass without gradient makes): the collectives of one micro-batch, for a
    rank that has run out of its own."""
    ids = torch.zeros((1, 1), dtype=torch.long, device=device)
    logits = model(input_ids=ids).logits
    if backward:
        (logits.float().sum() * 0.0).backward()


def full_weights(model: torch.nn.Module, *, only_adapter: bool) -> dict[str, torch.Tensor]:
    """The model's state dict with every tensor whole, on CPU, as a replicated run holds it
    (``only_adapter``: the LoRA weights only). A collective: every rank calls it, in the same order."""
    return {k: _whole(v) for k, v in model.state_dict().items() if not only_adapter or "lora_" in k}


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """``optimizer.state_dict()`` with every moment whole, on CPU. A collective, like ``full_weights``."""
    state = optimizer.state_dict()
    state["state"] = {i: {k: _whole(v) for k, v in sorted(s.items())} for i, s in sorted(state["state"].items())}
    return state


def _whole(value: Any) -> Any:
    from torch.distributed.tensor import DTensor

    return value.full_tensor().cpu() if isinstance(value, DTensor) else value


def shard_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> dict:
    """A whole-tensor optimiser state (a checkpoint's) cut to this rank's shards of the optimiser's
    parameters; unchanged where a parameter is not sharded."""
    from torch.distributed.tensor import DTensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    out = dict(state)
    out["state"] = {}
    for index, values in state["state"].items():
        param = params[int(index)]
        out["state"][index] = {
            k: _shard_like(v, param)
            if isinstance(param, DTensor) and torch.is_tensor(v) and v.shape == param.shape
            else v
            for k, v in values.items()
        }
    return out


def _shard_like(tensor: torch.Tensor, like: Any) -> Any:
    from torch.distributed.tensor import distribute_tensor

    # every rank holds the whole tensor (read from the same file): no communication needed
    return distribute_tensor(
        tensor.to(device=like.device, dtype=like.dtype), like.device_mesh, like.placements, src_data_rank=None
    )


def _shard_whole_tensors(module: torch.nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    # load_state_dict of whole tensors (a checkpoint, a LoRA adapter) into a sharded model
    from torch.distributed.tensor import DTensor

    current = module.state_dict()
    for key, value in list(state_dict.items()):
        target = current.get(key[len(prefix) :] if key.startswith(prefix) else key)
        if isinstance(target, DTensor) and not isinstance(value, DTensor):
            state_dict[key] = _shard_like(value, target)


def _distinct(models: Iterable[torch.nn.Module]) -> list[torch.nn.Module]:
    return distinct_by_identity(list(models))


def check_shardable(agents: Sequence[Any]) -> None:
    """Sharding needs every agent to own its model (one FSDP unit per optimiser)."""
    shared = [indices for indices in group_by_identity(agents, lambda agent: agent.model) if len(indices) > 1]
    if shared:
        # name the first agent (in team order) whose model an earlier agent holds, and that earlier one
        first = min(shared, key=lambda indices: indices[1])
        owner, agent = agents[first[0]], agents[first[1]]
        raise ConfigError(
            f"data_parallel='shard' needs each agent to own its model, but {owner.name!r} and "
            f"{agent.name!r} share one (LoRA adapters on one base); load the model once per agent, or use "
            "data_parallel='replicate'"
        )


__all__ = [
    "check_shardable",
    "full_optimizer_state",
    "full_weights",
    "gathered",
    "idle_pass",
    "is_sharded",
    "shard_model",
    "shard_optimizer_state",
]
