"""The feedback protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence


@dataclass(frozen=True)
class FeedbackRequest:
    """Everything a feedback source may look at for one joint action."""

    item: Mapping[str, Any]  # the dataset item
    completions: tuple[str, ...]  # one per agent
    score: Mapping[str, Any]  # the scorer's row: "reward", figures, and task details
    turn: int  # 1-based turn that produced the joint action
    agent_roles: tuple[str, ...]


class Feedback(Protocol):
    """Per joint action, one feedback text per agent (each agent told what concerns it)."""

    def __call__(self, requests: Sequence[FeedbackRequest]) -> list[tuple[str, ...]]: ...


class CallableFeedback:
    """A user function ``fn(request) -> tuple of one text per agent`` as a feedback source."""

    def __init__(self, fn: Callable[[FeedbackRequest], Sequence[str]]) -> None:
        self.fn = fn

    def __call__(self, requests: Sequence[FeedbackRequest]) -> list[tuple[str, ...]]:
        out = []
        for request in requests:
            texts = tuple(self.fn(request))
            if len(texts) != len(request.completions) or not all(isinstance(t, str) for t in texts):
                name = getattr(self.fn, "__name__", type(self.fn).__name__)
                raise ValueError(
                    f"feedback function {name!r} must return {len(request.completions)} strings (one per agent), "
                    f"got {texts!r}"
                )
            out.append(texts)
        return out
