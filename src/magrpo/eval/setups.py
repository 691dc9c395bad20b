"""The prompt-only set-ups a team is compared with, scored by the same reward and figures as the team.

- ``single``: one model (the first agent's) writes the whole joint answer in one reply, which the
  task splits into the same parts (both functions; both summaries); it gets N times one agent's
  new-token budget (N = the team's parts, also when the model is given alone).
- ``parallel``: the team as it is, each agent seeing only its own prompt (the untrained team when
  the models are untrained): what ``evaluate()`` does.
- ``sequential``: a pipeline: agent 2 sees agent 1's answer before it writes, and so on.
- ``discussion``: every agent answers, then sees the others' first answers and revises its own
  part once (its task restated); the revisions are the joint answer.

Greedy decoding, one joint answer per item.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from magrpo.choices import SETUPS, check_choice
from magrpo.data import columns_of
from magrpo.envs.base import with_text_added
from magrpo.envs.reward_env import as_messages
from magrpo.eval.figures import mean_figures
from magrpo.models.agent import AgentPolicy
from magrpo.sampling import greedy_sampler
from magrpo.types import Formatter, JointAction, Observation, Scorer

#: ``split_single(reply, item) -> joint action``: one model's whole answer cut into the agents' parts
SplitSingle = Callable[[str, Mapping[str, Any]], JointAction]

TEAMMATE_ANSWER = "Your teammate ({role}) wrote:\n{answer}"
# the revision restates the agent's own task: shown a teammate's code, a small model otherwise
# rewrites the teammate's part instead of its own, and the team's answer loses a part
DISCUSSION_INSTRUCTION = (
    "Your teammates answered:\n\n{answers}\n\nRevise your own answer so that the team's answers fit together. "
    "Write only your own part ({role}), the one you were asked for:\n\n{task}"
)


def with_note(observation: Observation, note: str) -> Observation:
    """``observation`` as chat messages with ``note`` added to its last user message (or as a new
    user message)."""
    return with_text_added(as_messages(observation), note)


def setup_answers(
    name: str,
    agents: Sequence[AgentPolicy],
    items: Sequence[Mapping[str, Any]],
    *,
    formatters: Sequence[Formatter],
    max_new_tokens: int,
    roles: Sequence[str] | None = None,
    single_formatter: Formatter | None = None,
    split_single: SplitSingle | None = None,
) -> tuple[list[JointAction], list[tuple[Observation, ...]]]:
    """The joint answers of set-up ``name`` for ``items`` and the observations behind them."""
    # the error messages keep the old word "baseline": scripts and tests match their wording
    check_choice("baseline", name, SETUPS)
    roles = list(roles or [a.name for a in agents])
    sampler = greedy_sampler(max_new_tokens)
    first = [[fmt(item) for item in items] for fmt in formatters]  # per agent, per item
    if name == "single":
        if single_formatter is None or split_single is None:
            raise ValueError(
                "the 'single' baseline needs the task's single-model prompt and the way to split its reply"
            )
        # N = the team's parts (formatters), not the agents given: a single trained model comes alone
        whole = greedy_sampler(max_new_tokens * len(formatters))
        prompts = [single_formatter(item) for item in items]
        replies = whole.sample(agents[0], prompts).texts
        return [split_single(reply, item) for reply, item in zip(replies, items)], [(p,) for p in prompts]
    if name == "parallel":
        texts = [r.texts for r in sampler.sample_team(agents, first)]
        return list(zip(*texts)), list(zip(*first))
    if name == "sequential":
        seen: list[list[Observation]] = []
        texts: list[list[str]] = []
        for i, agent in enumerate(agents):  # agent i sees the answers of agents 0..i-1
            observations = [
                with_note(
                    first[i][k],
                    "\n\n".join(TEAMMATE_ANSWER.format(role=roles[j], answer=texts[j][k]) for j in range(i)),
                )
                if i
                else first[i][k]
                for k in range(len(items))
            ]
            seen.append(observations)
            texts.append(sampler.sample(agent, observations).texts)
        return list(zip(*texts)), list(zip(*seen))
    # discussion: a first round apart, then one revision seeing the others' first answers
    drafts = [r.texts for r in sampler.sample_team(agents, first)]

    def revision(i: int, k: int) -> Observation:  # agent i, item k: its first exchange, then the others' drafts
        asked = as_messages(first[i][k])
        others = "\n\n".join(
            TEAMMATE_ANSWER.format(role=roles[j], answer=drafts[j][k]) for j in range(len(agents)) if j != i
        )
        return asked + [
            {"role": "assistant", "content": drafts[i][k]},
            {
                "role": "user",
                "content": DISCUSSION_INSTRUCTION.format(answers=others, role=roles[i], task=asked[-1]["content"]),
            },
        ]

    revise = [[revision(i, k) for k in range(len(items))] for i in range(len(agents))]
    texts = [r.texts for r in sampler.sample_team(agents, revise)]
    return list(zip(*texts)), list(zip(*revise))


def setup_rows(
    name: str,
    agents: Sequence[AgentPolicy],
    items: Sequence[Mapping[str, Any]],
    *,
    formatters: Sequence[Formatter],
    scorer: Scorer,
    max_new_tokens: int,
    roles: Sequence[str] | None = None,
    single_formatter: Formatter | None = None,
    split_single: SplitSingle | None = None,
    batch_size: int = 8,
) -> list[dict[str, float]]:
    """Each item's figures under set-up ``name``, in the items' order: ``{"reward": ..., ...}``
    (every numeric value the scorer returns)."""
    rows: list[dict[str, float]] = []
    for start in range(0, len(items), batch_size):
        batch = list(items[start : start + batch_size])
        joint, observations = setup_answers(
            name,
            agents,
            batch,
            formatters=formatters,
            max_new_tokens=max_new_tokens,
            roles=roles,
            single_formatter=single_formatter,
            split_single=split_single,
        )
        scored = scorer(completions=joint, prompts=observations, **columns_of(batch))
        rows.extend(
            {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for row in scored
        )
    return rows


def evaluate_setup(
    name: str, agents: Sequence[AgentPolicy], items: Sequence[Mapping[str, Any]], **options: Any
) -> dict[str, float]:
    """The mean figures of set-up ``name`` over ``items``: ``{"items": n, "reward": ..., ...}``
    (``options``: those of :func:`setup_rows`)."""
    return setup_figures(setup_rows(name, agents, items, **options))


def setup_figures(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """:func:`evaluate_setup`'s figures from :func:`setup_rows`' rows."""
    return {"items": float(len(rows)), **mean_figures(list(rows))}


__all__ = ["SETUPS", "evaluate_setup", "setup_answers", "setup_figures", "setup_rows", "with_note"]
