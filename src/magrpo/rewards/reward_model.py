"""A reward model as a reward function: a sequence classifier scores each joint answer's text.

    reward = RewardModel("path/to/classifier")          # a local folder, never the hub
    MAGRPOTrainer(..., reward_func=[reward, my_check], reward_weights=[1.0, 0.5])

Each joint action becomes one text, the task (the first agent's prompt, unless
``include_prompt=False``) followed by every agent's part, joined by ``separator``; the classifier's
first logit on it is the reward (as TRL reads a reward model). Rows are scored in batches of
``batch_size`` without gradient, truncated to ``max_length`` tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from magrpo.errors import ModelError
from magrpo.types import observation_text


def _parts(joint: Any) -> list[str]:
    """A joint action's parts: a team's tuple, one agent's string or its assistant message."""
    if isinstance(joint, str):
        return [joint]
    if joint and isinstance(joint[0], dict):  # one agent with a chat prompt: [{"role": "assistant", ...}]
        return [str(message["content"]) for message in joint]
    return list(joint)


def _task(seen: Any) -> str:
    """The task's text: the first agent's prompt (a team's tuple), or the one agent's own."""
    if isinstance(seen, tuple):
        seen = seen[0]
    return observation_text(seen)


class RewardModel:
    """A local ``AutoModelForSequenceClassification`` folder (or a loaded model and tokenizer)
    as a reward function of the joint answer (module docstring)."""

    def __init__(
        self,
        model: str | Path | Any,
        tokenizer: Any = None,
        *,
        batch_size: int = 8,
        device: str | torch.device | None = None,
        max_length: int | None = None,
        separator: str = "\n\n",
        include_prompt: bool = True,
        name: str | None = None,
    ) -> None:
        if isinstance(model, (str, Path)):
            model, tokenizer, name = self._load(Path(model), tokenizer, name)
        elif tokenizer is None:
            raise ModelError("RewardModel: a loaded model needs its tokenizer (RewardModel(model, tokenizer))")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} is not valid; expected an integer >= 1")
        self.model = model.to(device) if device is not None else model
        self.model.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        if self.tokenizer.pad_token is None:  # batches need padding; the classifier finds the last real token
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if getattr(self.model.config, "pad_token_id", None) is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size, self.max_length = batch_size, max_length
        self.separator, self.include_prompt = separator, include_prompt
        #: the name its values are logged under, beside other reward functions (reward/NAME)
        self.__name__ = name or type(self.model).__name__

    @staticmethod
    def _load(path: Path, tokenizer: Any, name: str | None) -> tuple[Any, Any, str]:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not (path / "config.json").is_file():
            raise ModelError(
                f"reward model {str(path)!r} is not a model folder (no config.json): give a local "
                "AutoModelForSequenceClassification directory (save_pretrained), or a loaded model and tokenizer"
            )
        from magrpo.models.store import quiet_library_progress

        with quiet_library_progress():  # transformers' bars only with MAGRPO_VERBOSE, as for the agents
            model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(path, local_files_only=True)
        return model, tokenizer, name or path.name

    def texts(self, completions: Sequence[Any], prompts: Sequence[Any] | None) -> list[str]:
        """The text each joint action is scored on (a team's tuples, or one agent's completions)."""
        texts = []
        for k, joint in enumerate(completions):
            parts = _parts(joint)
            if self.include_prompt and prompts is not None:
                parts = [_task(prompts[k]), *parts]
            texts.append(self.separator.join(parts))
        return texts

    @torch.no_grad()
    def __call__(self, *, completions: Sequence[Sequence[str]], prompts: Any = None, **_: Any) -> list[float]:
        texts = self.texts(completions, prompts)
        device = next(self.model.parameters()).device
        rewards: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=self.max_length is not None,
                max_length=self.max_length,
            ).to(device)
            rewards.extend(self.model(**batch).logits[:, 0].float().tolist())
        return rewards


__all__ = ["RewardModel"]
