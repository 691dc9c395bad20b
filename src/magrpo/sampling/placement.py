"""Where a vLLM engine runs (``vllm_devices``): on the CPU, on a share of its cores, or on named
GPUs (tensor parallel over several). An engine in a process of its own is started with only its
devices visible: vLLM's GPU worker takes the first GPU its process sees and makes it current, so
naming the GPU is done by what the process sees, not by an index vLLM would ignore."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import torch

from magrpo.errors import ConfigError

FORMS = "'cpu', 'cpu:0-3' or 'cpu:0,2' (cores), 'cuda', 'cuda:2' or 'cuda:2,3' (GPUs: tensor parallel over them)"


@dataclass(frozen=True)
class EnginePlacement:
    """An engine's devices: ``device_type`` "cpu" (``indices``: the cores it runs on; none: all, or
    its share when engines split them) or "cuda" (``indices``: its GPUs in the trainer's numbering;
    none: the trainer's current one)."""

    device_type: str
    indices: tuple[int, ...] = ()

    @classmethod
    def parse(cls, spec: str) -> "EnginePlacement":
        """``"cpu"``, ``"cpu:0-3"``, ``"cpu:0,2"``, ``"cuda"``, ``"cuda:2"``, ``"cuda:2,3"``."""
        kind, _, rest = str(spec).partition(":")
        if kind not in ("cpu", "cuda"):
            raise ConfigError(f"engine placement {spec!r} is not valid; use {FORMS}")
        indices: list[int] = []
        for part in filter(None, rest.split(",")):
            low, dash, high = part.partition("-")
            if not low.isdigit() or (dash and not high.isdigit()):
                raise ConfigError(f"engine placement {spec!r} is not valid; use {FORMS}")
            indices += list(range(int(low), int(high) + 1)) if dash else [int(low)]
        if len(set(indices)) != len(indices):
            raise ConfigError(f"engine placement {spec!r} names a device twice; use {FORMS}")
        return cls(kind, tuple(indices))

    @classmethod
    def beside(cls, device: torch.device) -> "EnginePlacement":
        """An engine on its agent's device."""
        if device.type == "cuda":
            return cls("cuda", (device.index if device.index is not None else 0,))
        return cls("cpu")

    @property
    def gpus(self) -> tuple[int, ...]:
        """The GPUs it runs on (the trainer's numbering); none on the CPU."""
        if self.device_type != "cuda":
            return ()
        return self.indices or (torch.cuda.current_device() if torch.cuda.is_available() else 0,)

    @property
    def tensor_parallel_size(self) -> int:
        return max(1, len(self.gpus))

    def environment(self) -> dict[str, str]:
        """What the engine's own process is started with: only its GPUs visible (named as the
        trainer's ``CUDA_VISIBLE_DEVICES`` names them), or its cores for vLLM's CPU threads."""
        if self.device_type == "cuda":
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            names = [name.strip() for name in visible.split(",")] if visible else None
            if names is not None and any(i >= len(names) for i in self.gpus):
                raise ConfigError(
                    f"engine placement cuda:{','.join(map(str, self.gpus))} names a GPU this process does not see "
                    f"(CUDA_VISIBLE_DEVICES={visible!r})"
                )
            return {"CUDA_VISIBLE_DEVICES": ",".join(names[i] if names else str(i) for i in self.gpus)}
        if self.indices:
            return {"VLLM_CPU_OMP_THREADS_BIND": ",".join(str(core) for core in self.indices)}
        return {}

    def __str__(self) -> str:
        return self.device_type + (":" + ",".join(map(str, self.indices)) if self.indices else "")


def engine_placements(
    agents: Sequence, groups: Sequence[Sequence[int]], devices: Sequence[str] | None
) -> list[EnginePlacement]:
    """One placement per engine (``groups``: the agents each engine serves): from ``devices`` (one
    spec per agent; the agents of one engine must agree), else beside the engine's agents."""
    if devices is None:
        return [EnginePlacement.beside(agents[group[0]].device) for group in groups]
    if len(devices) != len(agents):
        raise ConfigError(f"vllm_devices={list(devices)!r} has {len(devices)} entries for {len(agents)} agents")
    placements = []
    for group in groups:
        specs = {EnginePlacement.parse(devices[i]) for i in group}
        if len(specs) > 1:
            names = ", ".join(f"{agents[i].name}={devices[i]!r}" for i in group)
            raise ConfigError(f"vllm_devices: {names} share one model and so one engine; give them the same placement")
        placements.append(specs.pop())
    return placements


__all__ = ["FORMS", "EnginePlacement", "engine_placements"]
