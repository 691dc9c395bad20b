"""The model store (not the KV cache): where converted models live, and the one-time GGUF ->
safetensors conversion.

A GGUF file is de-quantised by transformers once (tens of seconds for a small model) and saved
as safetensors with its tokenizer, so that later loads take about a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def cache_dir() -> Path:
    """Where converted models live: ``$MAGRPO_CACHE`` or ``$XDG_CACHE_HOME/magrpo`` (~/.cache/magrpo)."""
    if os.environ.get("MAGRPO_CACHE"):
        return Path(os.environ["MAGRPO_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "magrpo"


def library_progress_shown() -> bool:
    """Whether transformers' own progress bars (loading weights, de-quantising, writing shards)
    are shown: only with ``MAGRPO_VERBOSE=1`` (the CLI's ``--verbose``); magrpo shows its own."""
    return os.environ.get("MAGRPO_VERBOSE", "") not in ("", "0")


@contextlib.contextmanager
def quiet_library_progress() -> Iterator[None]:
    """Hide transformers' progress bars for the duration, unless :func:`library_progress_shown`."""
    if library_progress_shown():
        yield
        return
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    # the GGUF de-quantiser uses plain tqdm, which transformers' switch does not reach
    import functools

    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    plain_tqdm = getattr(gguf_utils, "tqdm", None)
    if plain_tqdm is not None:
        gguf_utils.tqdm = functools.partial(plain_tqdm, disable=True)
    try:
        yield
    finally:
        if plain_tqdm is not None:
            gguf_utils.tqdm = plain_tqdm
        if was_enabled:
            hf_logging.enable_progress_bar()


def strip_gguf_quantization(model):
    """A model de-quantised from GGUF still says it is quantised, which blocks training and
    save_pretrained; its weights are plain float tensors, so drop the marker."""
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            setattr(model, attr, None)
    model.is_quantized = False
    return model


def convert_gguf(gguf_path: Path, destination: Path) -> Path:
    """De-quantise a GGUF file once into a safetensors directory with its tokenizer (atomic)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=destination.name + ".", dir=destination.parent))
    try:
        with quiet_library_progress():
            tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
            model = AutoModelForCausalLM.from_pretrained(
                gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
            )
            strip_gguf_quantization(model)
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared
        try:
            tmp.rename(destination)
        except OSError:  # another process finished first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return destination


def converted_gguf_dir(gguf_path: Path) -> Path:
    """A user's GGUF file as a safetensors directory in the cache, converted on first use. The
    cache entry is keyed by the file's resolved path, size and modification time, so a changed
    file is converted again and two files of one name never collide."""
    gguf_path = gguf_path.resolve()
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    destination = cache_dir() / "models" / "gguf" / f"{gguf_path.stem}-{key}"
    if not (destination / "config.json").is_file():
        convert_gguf(gguf_path, destination)
    return destination


__all__ = [
    "cache_dir",
    "convert_gguf",
    "converted_gguf_dir",
    "library_progress_shown",
    "quiet_library_progress",
    "strip_gguf_quantization",
]
