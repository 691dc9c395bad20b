"""The weight channel to an engine: an agent's weights as the engine loads them (its checkpoint's
names, in the engine's dtype), written as safetensors one tensor at a time.

One format for every route: a file in memory (/dev/shm) for an engine in a process of its own,
the bytes of an HTTP request for a rollout server. Written tensor by tensor, a sharded (FSDP2)
agent's weights are gathered one tensor at a time (each ``full_tensor()`` a collective every rank
makes in the same order), never the whole model at once, and a file or a request never needs a
second copy of the model in memory.

The format (safetensors): 8 bytes of header length (little-endian), the JSON header naming each
tensor's dtype, shape and byte range, then the tensors' bytes in order.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

#: safetensors' names of the dtypes an engine takes
SAFETENSORS_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


@dataclass(frozen=True)
class TensorSource:
    """One tensor to send: its name, global shape and dtype as sent, and how to fetch it whole on
    the CPU (a sharded tensor is gathered then, not before)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    fetch: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * torch.empty((), dtype=self.dtype).element_size()


def engine_weights(
    model: torch.nn.Module, dtype: torch.dtype | None = None, device: str | None = "cpu"
) -> list[TensorSource]:
    """``model``'s weights as an engine loads them: a peft model's base (adapters left out,
    ``base_layer`` unwrapped), a tied output head left out (the engine reads it from the
    embeddings), each in ``dtype`` (None: its own) on ``device`` (None: where it is, no copy),
    gathered whole when fetched."""
    state = dict(model.state_dict())
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    tied = getattr(base.config, "tie_word_embeddings", False)
    sources = []
    for name, tensor in state.items():
        if hasattr(model, "get_base_model"):
            if "lora_" in name:
                continue
            name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        if tied and name == "lm_head.weight":
            continue
        target = dtype or tensor.dtype
        sources.append(TensorSource(name, tuple(tensor.shape), target, _fetcher(tensor, target, device)))
    return sources


def _fetcher(tensor: torch.Tensor, dtype: torch.dtype, device: str | None) -> Callable[[], torch.Tensor]:
    def fetch() -> torch.Tensor:
        whole = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor  # a DTensor: a collective
        return whole.detach().to(device or whole.device, dtype).contiguous()

    return fetch


def safetensors_header(sources: Sequence[TensorSource]) -> bytes:
    """The 8-byte length and the JSON header (padded to 8 bytes, as safetensors writes it)."""
    header, offset = {}, 0
    for source in sources:
        header[source.name] = {
            "dtype": SAFETENSORS_DTYPES[source.dtype],
            "shape": list(source.shape),
            "data_offsets": [offset, offset + source.nbytes],
        }
        offset += source.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def safetensors_chunks(sources: Sequence[TensorSource]) -> Iterator[bytes]:
    """The safetensors bytes of ``sources``: the header, then each tensor's bytes as it is fetched."""
    yield safetensors_header(sources)
    for source in sources:
        tensor = source.fetch()
        if tuple(tensor.shape) != source.shape or tensor.dtype != source.dtype:
            raise ValueError(
                f"{source.name}: fetched {tuple(tensor.shape)} {tensor.dtype}, announced {source.shape} {source.dtype}"
            )
        yield tensor.reshape(-1).view(torch.uint8).numpy().tobytes()


def write_safetensors(path: str | Path, sources: Sequence[TensorSource]) -> int:
    """Write ``sources`` to ``path`` tensor by tensor; returns the bytes written."""
    written = 0
    with open(path, "wb") as out:
        for chunk in safetensors_chunks(sources):
            out.write(chunk)
            written += len(chunk)
    return written


__all__ = ["TensorSource", "engine_weights", "safetensors_chunks", "safetensors_header", "write_safetensors"]
