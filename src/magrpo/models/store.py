"""The model store (not the KV cache): where converted models live, and the one-time GGUF ->
safetensors conversion.

A GGUF file is de-quantised by transformers once (tens of seconds for a small model) and saved
as safetensors with its tokenizer, so that later loads take about a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
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


def causal_lm_architectures(model) -> list[str]:
    """What a config.json's ``architectures`` names for ``model`` (a peft model: its base): its
    transformers class, as ``save_pretrained`` writes it (a user's subclass: the transformers class
    it extends, the one other loaders know). vLLM picks its model class from this; without it, it
    guesses from ``model_type``, and takes a Gemma-3 for an embedding model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for cls in type(base).__mro__:
        if cls.__module__.startswith("transformers."):
            return [cls.__name__]
    return [type(base).__name__]


def ensure_architectures(directory: str | os.PathLike, model=None) -> bool:
    """Make the model folder's config.json name its causal-LM class: ``model``'s (what the folder
    holds, written from it), else, where the config names none (a model converted by an older
    magrpo), the class transformers' AutoModelForCausalLM loads for its ``model_type``. Returns
    whether the file changed; replaced atomically, its permissions kept."""
    path = Path(directory) / "config.json"
    config = json.loads(path.read_text())
    if model is not None:
        architectures = causal_lm_architectures(model)
    elif config.get("architectures"):
        return False
    else:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.get("model_type"))
        if name is None:  # no causal-LM class of that type: nothing to name
            return False
        architectures = [name]
    if config.get("architectures") == architectures:
        return False
    config["architectures"] = architectures
    fd, tmp = tempfile.mkstemp(prefix=".config.", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(config, indent=2, sort_keys=True) + "\n")
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def mend_converted(directory: Path) -> Path:
    """A cache entry converted by an older magrpo, whose config.json names no architecture, gets
    it now (no reconversion). A cache the user may not write is left as it is: transformers loads
    it all the same, and an engine's own model folder names the class of the loaded model."""
    with contextlib.suppress(OSError):
        ensure_architectures(directory)
    return directory


def is_converted(directory: Path) -> bool:
    """Whether ``directory`` holds a whole converted model: its config and its weights."""
    return (directory / "config.json").is_file() and any(directory.glob("*.safetensors"))


def untied_state_dict(model) -> dict:
    """The model's weights with each tied tensor once, under its first name (the input embedding,
    as save_pretrained writes it: loaders, vLLM's among them, tie the output head back to it)."""
    seen: set[int] = set()
    weights = {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            weights[name] = tensor.contiguous()
    return weights


def convert_gguf(gguf_path: Path, destination: Path) -> Path:
    """De-quantise a GGUF file once into a safetensors directory with its tokenizer. Atomic, and
    one process at a time (a lock beside it): the ranks of a data-parallel run all ask for it."""
    import torch
    from filelock import FileLock
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    destination.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(destination.parent / f".{destination.name}.lock")):
        if is_converted(destination):  # another process converted it while this one waited
            return destination
        tmp = Path(tempfile.mkdtemp(prefix=destination.name + ".", dir=destination.parent))
        try:
            with quiet_library_progress():
                tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
                model = AutoModelForCausalLM.from_pretrained(
                    gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
                )
                strip_gguf_quantization(model)
                model.config.architectures = causal_lm_architectures(model)  # vLLM reads its model class here
                # not save_pretrained: once a process group exists it writes weights on rank 0 only
                save_file(untied_state_dict(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
                model.config.save_pretrained(tmp)
                if model.generation_config is not None:
                    model.generation_config.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
            for path in (tmp, *tmp.iterdir()):  # mkdtemp makes it private; the cache is meant to be shared
                path.chmod(0o755 if path.is_dir() else 0o644)
            if destination.exists():  # an entry left incomplete (by an older version): replace it
                shutil.rmtree(destination)
            tmp.rename(destination)
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
    if not is_converted(destination):
        return convert_gguf(gguf_path, destination)
    return mend_converted(destination)


__all__ = [
    "cache_dir",
    "causal_lm_architectures",
    "convert_gguf",
    "converted_gguf_dir",
    "ensure_architectures",
    "is_converted",
    "library_progress_shown",
    "mend_converted",
    "quiet_library_progress",
    "strip_gguf_quantization",
]
