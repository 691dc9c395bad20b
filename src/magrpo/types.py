"""Types shared by every stage of the pipeline.

item (a dataset row, a dict) -> observation (one per agent) -> completion (one per agent)
-> joint action (a tuple of completions, one per agent) -> joint reward (one float).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol, Sequence, Union

#: What one agent sees: a plain string (rendered as one user message with the agent's chat
#: template) or chat messages ``[{"role": ..., "content": ...}, ...]``.
Observation = Union[str, list[dict[str, str]]]


def observation_text(observation: Observation) -> str:
    """An observation as plain text: a string as it is, chat messages' contents one after the
    other (what a model without a chat template reads)."""
    if isinstance(observation, str):
        return observation
    return "\n\n".join(str(message["content"]) for message in observation)


#: Turns a dataset item into one agent's observation.
Formatter = Callable[[Mapping[str, Any]], Observation]

#: One completion per agent, in agent order.
JointAction = tuple[str, ...]


#: ``scorer(completions=..., prompts=..., **columns) -> [{"reward": float, ...}, ...]``: the joint
#: reward and any further figures (tests passed, ROUGE, ...) of each joint action.
Scorer = Callable[..., list[dict[str, Any]]]


class RewardFunction(Protocol):
    """A joint reward in the shape TRL users know, for a team.

    Called with ``completions`` (one tuple of strings per joint action, one string per agent),
    ``prompts`` (the same shape: what each agent saw) and every dataset column as a keyword
    list aligned with them. Returns one float per joint action. With ONE agent the completions
    and prompts come as TRL passes them: each completion a plain string (or
    ``[{"role": "assistant", "content": ...}]`` where the prompt was chat messages), each prompt
    as the agent saw it, so TRL's reward functions run unchanged. A function that raises stops
    the run with a :class:`~magrpo.RewardError` naming it, the step and the items.
    """

    def __call__(
        self, *, completions: Sequence[JointAction], prompts: Sequence[tuple[Observation, ...]], **columns: Any
    ) -> Sequence[float]: ...
