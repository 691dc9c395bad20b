"""One agent of the team: its model (possibly shared with other agents), tokenizer, LoRA adapter,
and the reduced-precision copy that samples for it when ``rollout_dtype`` asks for one."""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Protocol, Sequence

import torch

from magrpo.errors import ModelError
from magrpo.grouping import group_by_identity
from magrpo.types import Observation, observation_text

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class RolloutEngine(Protocol):
    """A serving engine that samples for agents (vLLM); it takes their new weights lazily."""

    def mark_stale(self, agent: "AgentPolicy") -> None: ...


def agent_name(index: int) -> str:
    """The name of agent ``index``: how environments key its observations and the folder of its
    checkpoint (``agent_0``, ``agent_1``, ...)."""
    return f"agent_{index}"


@dataclass
class AgentPolicy:
    """One agent: its model (possibly shared with other agents), tokenizer and LoRA adapter."""

    name: str
    model: "PreTrainedModel"
    tokenizer: "PreTrainedTokenizerBase"
    adapter: str | None = None
    #: a frozen reduced-precision copy that samples instead of ``model`` (see :func:`attach_sampling_copies`)
    sampling_copy: "PreTrainedModel | None" = None
    #: a serving engine that samples for this agent (``rollout_backend="vllm"``); told of every
    #: change of the weights by :meth:`sync_sampling_copy`
    rollout_engine: "RolloutEngine | None" = None
    #: the frozen reference of a fully trained agent's KL term (``beta`` > 0; see :func:`attach_reference_models`)
    reference_model: "PreTrainedModel | None" = None

    @contextlib.contextmanager
    def with_own_adapter(self) -> Iterator["PreTrainedModel"]:
        """The model with this agent's adapter switched on (a no-op for an agent's own model)."""
        if self.adapter is not None:
            self.model.set_adapter(self.adapter)
        yield self.model

    @contextlib.contextmanager
    def as_reference(self) -> Iterator["PreTrainedModel"]:
        """The reference policy of the KL term: a LoRA agent's base with every adapter off (no
        extra weights), a fully trained agent's frozen copy of its initial weights."""
        if self.adapter is not None:
            with self.model.disable_adapter():
                yield self.model
        elif self.reference_model is None:
            raise ModelError(f"agent {self.name!r} trains its whole model and has no reference copy (beta > 0)")
        else:
            yield self.reference_model

    @torch.no_grad()
    def mix_into_reference(self, alpha: float) -> None:
        """TR-DPO's reference update (TRL's ``sync_ref_model``): reference = alpha * policy +
        (1 - alpha) * reference, weight by weight (a fully trained agent's frozen copy)."""
        if self.reference_model is None:
            raise ModelError(f"agent {self.name!r} has no reference copy to move (LoRA agents, or beta = 0)")
        for reference, weight in zip(self.reference_model.parameters(), self.model.parameters(), strict=True):
            reference.mul_(1.0 - alpha).add_(weight.to(reference.device, reference.dtype), alpha=alpha)

    @contextlib.contextmanager
    def generating(self, use_sampling_copy: bool = True) -> Iterator["PreTrainedModel"]:
        """The model that samples (the sampling copy if there is one and ``use_sampling_copy``,
        else the training weights), adapter on, in eval mode (no dropout), its mode restored after."""
        if use_sampling_copy and self.sampling_copy is not None:
            if self.adapter is not None:
                self.sampling_copy.set_adapter(self.adapter)
            yield self.sampling_copy  # always in eval mode, never trained
            return
        with self.with_own_adapter() as model:
            was_training = model.training
            model.eval()
            try:
                yield model
            finally:
                model.train(was_training)

    @property
    def sampling_model(self) -> "PreTrainedModel":
        """The model object that samples during training: the sampling copy, else the model."""
        return self.model if self.sampling_copy is None else self.sampling_copy

    @torch.no_grad()
    def sync_sampling_copy(self) -> None:
        """Bring what samples for this agent up to its weights (after every update, after a
        resume): its sampling copy takes a copy, its engine takes them before its next generation."""
        if self.rollout_engine is not None:
            self.rollout_engine.mark_stale(self)
        if self.sampling_copy is None:
            return
        target = dict(self.sampling_copy.named_parameters())
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
        return observation_text(messages), False


def attach_sampling_copies(agents: Sequence[AgentPolicy], dtype: torch.dtype) -> None:
    """Give every agent a frozen ``dtype`` copy of its model to sample with.

    Agents sharing one model (LoRA on a shared base) share one copy, adapters included, so the
    base is held once more, not once per agent. The copies start equal to the training weights
    rounded to ``dtype``; :meth:`AgentPolicy.sync_sampling_copy` keeps them so after each update.
    Only the weights are rounded: buffers (the rotary frequencies) keep their precision, so the
    copy's positions are the policy's own.
    """
    for indices in group_by_identity(agents, lambda agent: agent.model):
        clone = copy.deepcopy(agents[indices[0]].model)
        for param in clone.parameters():
            param.data = param.data.to(dtype)
        clone.requires_grad_(False)
        clone.eval()
        for i in indices:
            agents[i].sampling_copy = clone


def attach_reference_models(agents: Sequence[AgentPolicy], device: str | None = None) -> None:
    """Give every fully trained agent a frozen copy of its weights as they are now (before the
    first update): the reference of its KL term, on ``device`` (None: the agent's own). LoRA
    agents need none: their reference is their base with the adapter off."""
    for agent in agents:
        if agent.adapter is None and agent.reference_model is None:
            reference = copy.deepcopy(agent.model).requires_grad_(False).eval()
            agent.reference_model = reference if device is None else reference.to(device)


__all__ = ["AgentPolicy", "agent_name", "attach_reference_models", "attach_sampling_copies"]
