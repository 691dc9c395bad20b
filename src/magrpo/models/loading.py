"""Loading the agents' models: named models (the bundled default, presets), local directories,
Hub ids and loaded objects; one shared base with a LoRA adapter per agent; saving an agent."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Any, Sequence, Union

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from magrpo.errors import ModelError
from magrpo.models.agent import AgentPolicy, agent_name
from magrpo.models.presets import model_names, named_model_dir
from magrpo.models.store import converted_gguf_dir, quiet_library_progress

#: what ``agents=[...]`` accepts per agent
AgentSpec = Union[str, os.PathLike, PreTrainedModel, tuple]


def resolve_model_source(spec: str | os.PathLike) -> str:
    """A string spec -> a directory or Hub id that ``from_pretrained`` takes; errors name the choices.

    A ``.gguf`` file, or a directory holding exactly one, is de-quantised once into the cache (as
    the bundled model is) and its converted directory returned."""
    text = os.fspath(spec)
    named = named_model_dir(text)
    if named is not None:
        return str(named)
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelError(f"model file {text!r} is not a GGUF file (.gguf); give a .gguf file or a model directory")
        return str(converted_gguf_dir(path))
    if path.is_dir():
        if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
            return str(path)
        ggufs = sorted(p.name for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".gguf")
        if len(ggufs) == 1:
            return str(converted_gguf_dir(path / ggufs[0]))
        if ggufs:
            raise ModelError(
                f"model directory {text!r} holds several GGUF files ({', '.join(ggufs)}); name the one to use"
            )
        raise ModelError(f"model directory {text!r} holds no config.json (nor adapter_config.json, nor a .gguf file)")
    looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~")) and " " not in text
    if looks_like_hub_id:
        return text
    choices = ", ".join(map(repr, model_names()))
    raise ModelError(
        f"model {text!r} is not a known name ({choices}), an existing directory, or a Hub id of the form 'org/name'"
    )


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device={device!r} but CUDA is not available here; use 'cpu' or 'auto'")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        # float32 master weights everywhere: in bf16, AdamW steps below a weight's rounding step
        # vanish; on GPUs the speed of bf16 comes from autocast and the bf16 sampling copy instead
        return torch.float32
    return getattr(torch, dtype)


def load_model_and_tokenizer(
    spec: str | os.PathLike, *, device: torch.device, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    source = resolve_model_source(spec)
    offline = bool(os.environ.get("HF_HUB_OFFLINE"))
    try:
        with quiet_library_progress():
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
            if (Path(source) / "adapter_config.json").is_file():
                # a LoRA checkpoint: its base with the adapter merged in, a plain model from here on
                from peft import AutoPeftModelForCausalLM

                model = AutoPeftModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=offline)
                # peft froze the base; merged, it is a plain model a full agent trains
                model = model.merge_and_unload().requires_grad_(True)
            else:
                model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=offline)
    except OSError as exc:
        raise ModelError(f"could not load model {os.fspath(spec)!r} from {source!r}: {exc}") from exc
    return model.to(device), tokenizer


def build_agents(
    specs: Sequence[AgentSpec],
    *,
    device: str | Sequence[str] = "auto",
    dtype: str = "auto",
    use_lora: bool | Sequence[bool] = False,
    lora_r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.0,
    lora_target_modules: Any = "all-linear",
    gradient_checkpointing: bool = False,
) -> list[AgentPolicy]:
    """One :class:`AgentPolicy` per spec.

    A full agent gets its own copy of its weights (full fine-tuning, as in the paper). LoRA
    agents (``use_lora``: for all, or one bool per agent) whose specs name the same model (or pass
    the same object) share one frozen base in memory, each with its own adapter. ``device``: one
    for the whole team, or one per agent (agent placement: a team of two large models on two GPUs;
    LoRA agents sharing a base must share its device).
    """
    lora = [bool(use_lora)] * len(specs) if isinstance(use_lora, bool) else [bool(v) for v in use_lora]
    if len(lora) != len(specs):
        raise ModelError(f"use_lora has {len(lora)} entries for {len(specs)} agents; give one per agent")
    devices = [device] * len(specs) if isinstance(device, str) else list(device)
    if len(devices) != len(specs):
        raise ModelError(f"{len(devices)} devices for {len(specs)} agents; give one device, or one per agent")
    torch_devices = [pick_device(d) for d in devices]
    keys = [_share_key(spec) for spec in specs]
    full_keys = {key for key, with_lora in zip(keys, lora) if not with_lora}
    lora_bases: dict[Any, tuple[Any, PreTrainedTokenizerBase]] = {}  # spec -> peft model with the adapters so far
    taken: set[Any] = set()  # objects a full agent already trains: the next one needs its own copy
    agents: list[AgentPolicy] = []
    for index, (spec, key, with_lora) in enumerate(zip(specs, keys, lora)):
        name = agent_name(index)
        torch_device = torch_devices[index]
        torch_dtype = pick_dtype(dtype, torch_device)
        if with_lora and key in lora_bases:
            model, tokenizer = lora_bases[key]
            if next(model.parameters()).device != torch_device:
                raise ModelError(
                    f"{name} shares a LoRA base with an agent on {next(model.parameters()).device}; "
                    f"it cannot sit on {torch_device}"
                )
            _add_adapter(model, name, lora_r, lora_alpha, lora_dropout, lora_target_modules)
            agents.append(AgentPolicy(name, model, tokenizer, adapter=name))
            continue
        # peft injects its layers into the model it wraps: a LoRA base never wraps an object a full agent trains
        fresh = key in full_keys if with_lora else key in taken
        model, tokenizer = _materialise(spec, torch_device, torch_dtype, fresh_copy=fresh)
        if not with_lora:
            taken.add(key)
        if with_lora:
            model = _new_peft_model(model, name, lora_r, lora_alpha, lora_dropout, lora_target_modules)
            lora_bases[key] = (model, tokenizer)
        if gradient_checkpointing:
            model.gradient_checkpointing_enable()
            if with_lora:
                model.enable_input_require_grads()
        agents.append(AgentPolicy(name, model, tokenizer, adapter=name if with_lora else None))
    for agent in agents:
        if agent.tokenizer.pad_token_id is None:
            agent.tokenizer.pad_token = agent.tokenizer.eos_token
    return agents


def _share_key(spec: AgentSpec) -> Any:
    if isinstance(spec, (str, os.PathLike)):
        return ("path", os.fspath(spec))
    if isinstance(spec, tuple):
        return ("object", id(spec[0]))
    return ("object", id(spec))


def _materialise(
    spec: AgentSpec, device: torch.device, dtype: torch.dtype, *, fresh_copy: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if isinstance(spec, (str, os.PathLike)):
        return load_model_and_tokenizer(spec, device=device, dtype=dtype)
    if isinstance(spec, tuple):
        if len(spec) != 2:
            raise ModelError("an agent given as a tuple must be (model, tokenizer)")
        model, tokenizer = spec
    elif isinstance(spec, PreTrainedModel):
        model = spec
        try:
            tokenizer = AutoTokenizer.from_pretrained(model.name_or_path)
        except (OSError, ValueError) as exc:
            raise ModelError(
                f"agent model {type(model).__name__} came without a tokenizer and none loads from "
                f"{model.name_or_path!r}; pass (model, tokenizer)"
            ) from exc
    else:
        raise ModelError(
            f"an agent must be 'default', a model directory, a Hub id, a PreTrainedModel or (model, tokenizer); "
            f"got {type(spec).__name__}"
        )
    if fresh_copy:  # the same object listed twice must still give two independent policies
        model = copy.deepcopy(model)
    return model.to(device), tokenizer


def _lora_config(r: int, alpha: int, dropout: float, targets: Any):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM")


def _new_peft_model(model: PreTrainedModel, adapter: str, r: int, alpha: int, dropout: float, targets: Any):
    from peft import get_peft_model

    return get_peft_model(model, _lora_config(r, alpha, dropout, targets), adapter_name=adapter)


def _add_adapter(model: Any, adapter: str, r: int, alpha: int, dropout: float, targets: Any) -> None:
    model.add_adapter(adapter, _lora_config(r, alpha, dropout, targets))


def save_agent(agent: AgentPolicy, directory: str | Path, state_dict: dict[str, Any] | None = None) -> Path:
    """Save one agent so that transformers (full) or peft (adapter) loads it directly;
    ``state_dict``: the weights to write instead of the model's own (gathered from shards)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with quiet_library_progress():
        if agent.adapter is None:
            agent.model.save_pretrained(directory, safe_serialization=True, state_dict=state_dict)
        else:
            agent.model.save_pretrained(
                directory, selected_adapters=[agent.adapter], safe_serialization=True, state_dict=state_dict
            )
    if agent.adapter is not None:
        # peft nests a non-default adapter in a sub-folder; flatten so PeftModel.from_pretrained(dir) works
        nested = directory / agent.adapter
        if nested.is_dir():
            for item in nested.iterdir():
                shutil.move(str(item), directory / item.name)
            nested.rmdir()
    agent.tokenizer.save_pretrained(directory)
    return directory


__all__ = [
    "AgentSpec",
    "build_agents",
    "load_model_and_tokenizer",
    "pick_device",
    "pick_dtype",
    "resolve_model_source",
    "save_agent",
]
