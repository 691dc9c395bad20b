"""The two writing tasks of the paper, on ACLSum (bundled with the ``aclsum`` package, so
nothing is downloaded): ``summarize`` (TL;DR + detailed summary of a paper's introduction)
and ``expand`` (an introduction written from the abstract, in two halves).

Splits: ``"train"`` is ACLSum train (100 papers); ``"eval"`` is ACLSum test (100 papers, the
split the paper reports on). ACLSum val (50) is left unused.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Callable, Mapping, Sequence

from magrpo.rewards.writing import EXPAND_REWARD, SUMMARIZE_REWARD, WritingRewardConfig, writing_levels
from magrpo.tasks.base import Scorer, Task
from magrpo.types import JointAction, Observation

#: Words of the source an agent sees; the rest is cut so that prompts fit the small context
#: budget of the bundled SmolLM2-135M on CPU (ACLSum introductions average ~675 words).
MAX_SOURCE_WORDS = 250

#: ACLSum split behind each of our splits.
ACLSUM_SPLITS = {"train": "train", "eval": "test"}

#: Columns every item needs: ``source`` goes into the prompts (and the optional content level).
COLUMNS = ("source",)
#: Columns only some figures need: ``reference`` goes into ROUGE, which training never reads.
OPTIONAL_COLUMNS = {"reference": "ROUGE-1/2/L"}

ItemsLoader = Callable[[str], list[dict[str, Any]]]

SUMMARIZE_INSTRUCTIONS = {
    "tldr": "Write a TL;DR of this paper introduction: one sentence of at most 30 words.",
    "detailed": (
        "Write a detailed summary of this paper introduction: one paragraph of about 60 words "
        "covering the problem, the approach and the results."
    ),
}

#: protocol="sequential": how the second writer is shown the first one's answer, by task
SHOWN_FIRST_PART = {
    "summarize": "The TL;DR your teammate wrote (do not repeat it; add the detail it leaves out):\n{answer}",
    "expand": "The first half your teammate wrote (continue from it; do not repeat it):\n{answer}",
}

EXPAND_INSTRUCTIONS = {
    "background": (
        "Write the first half of the introduction for the paper with this abstract: the "
        "background and motivation, in about 60 words. Do not describe the method."
    ),
    "methods": (
        "Write the second half of the introduction for the paper with this abstract: the "
        "proposed methods and their implications, in about 60 words. Do not repeat the background."
    ),
}


def truncate_words(text: str, limit: int = MAX_SOURCE_WORDS) -> str:
    """The first ``limit`` whitespace tokens of ``text``, with " ..." when something was cut."""
    tokens = text.split()
    return " ".join(tokens) if len(tokens) <= limit else " ".join(tokens[:limit]) + " ..."


def detokenize(sentences: Sequence[str]) -> str:
    """Join ACLSum's pre-tokenised sentences ("terms ( MT ) , e.g. it 's") into plain text."""
    text = " ".join(sentences)
    text = re.sub(r" ([.,;:!?%)\]}]|'s\b|n't\b)", r"\1", text)
    return re.sub(r"([(\[{]) ", r"\1", text)


def aclsum_items(split: str, kind: str) -> list[dict[str, Any]]:
    """ACLSum papers as items. ``kind="summarize"``: source = introduction, reference = the
    challenge, approach and outcome summaries joined. ``kind="expand"``: source = abstract,
    reference = introduction. Each item also carries ``id`` and ``title``."""
    if split not in ACLSUM_SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(ACLSUM_SPLITS)}")
    from aclsum import ACLSum  # the `writing` extra; imported here so other tasks don't need it

    items = []
    for doc in ACLSum(ACLSUM_SPLITS[split]):
        introduction = detokenize(doc.sentences["introduction"])
        if kind == "summarize":
            source = introduction
            reference = " ".join(doc.summaries[a] for a in ("challenge", "approach", "outcome"))
        elif kind == "expand":
            source, reference = detokenize(doc.sentences["abstract"]), introduction
        else:
            raise ValueError(f"unknown ACLSum task kind {kind!r}; expected 'summarize' or 'expand'")
        items.append({"id": doc.id, "title": doc.title, "source": source, "reference": reference})
    return items


def _formatter(instruction: str, source_label: str) -> Callable[[Mapping[str, Any]], Observation]:
    def format_item(item: Mapping[str, Any]) -> Observation:
        body = f"{instruction}\n\n{source_label}:\n{truncate_words(str(item['source']))}"
        return [{"role": "user", "content": body}]

    return format_item


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def writing_scorer(cfg: WritingRewardConfig) -> Scorer:
    """A scorer giving, per joint action, the levels and ``reward`` of :func:`writing_levels`
    and, where the item has a ``reference``, the ROUGE-1/2/L F1 of the joint answer (part 1, blank
    line, part 2) against it. The reward never reads the reference."""

    def score(
        *, completions: Sequence[JointAction], prompts: Sequence[tuple[Observation, ...]], **columns: Any
    ) -> list[dict[str, float]]:
        references = columns.get("reference") or [None] * len(completions)
        if len(references) != len(completions):
            raise ValueError(
                "the writing scorer needs one 'reference' entry per joint action where the column is given"
            )
        sources = columns.get("source") or [None] * len(completions)
        rouge = _rouge()
        rows = []
        for joint, reference, source in zip(completions, references, sources):
            if len(joint) != 2:
                raise ValueError(f"writing tasks have 2 agents; got a joint action with {len(joint)} parts")
            first, second = joint
            row = writing_levels(first, second, cfg, source=None if source is None else str(source))
            if reference not in (None, ""):
                answer = f"{first.strip()}\n\n{second.strip()}"
                for name, value in rouge.score(str(reference), answer).items():
                    row[name] = value.fmeasure
            rows.append(row)
        return rows

    return score


def first_part_shown(template: str) -> Callable[[Sequence[str], Mapping[str, Any]], str]:
    """The second writer's view of the first writer's answer (``template`` has ``{answer}``), or
    that it passed (wrote nothing)."""

    def show(answers: Sequence[str], item: Mapping[str, Any]) -> str:
        answer = answers[0].strip()
        return (
            template.format(answer=answer) if answer else "Your teammate passed and wrote nothing: write yours in full."
        )

    return show


def _task(
    name: str,
    description: str,
    instructions: dict[str, str],
    source_label: str,
    cfg: WritingRewardConfig,
    loader: ItemsLoader,
    max_new_tokens: int,
) -> Task:
    return Task(
        name=name,
        description=description,
        agent_roles=tuple(instructions),
        formatters=[_formatter(text, source_label) for text in instructions.values()],
        scorer=writing_scorer(cfg),
        load_split=loader,
        required_columns=COLUMNS,
        optional_columns=dict(OPTIONAL_COLUMNS),
        task_column="source",
        config_overrides={"max_new_tokens": max_new_tokens},
        single_agent_formatter=_formatter(_whole_answer_instruction(instructions), source_label),
        split_single_answer=split_two_parts,
        max_reward=cfg.max_reward,
        show_earlier_answers=first_part_shown(SHOWN_FIRST_PART[name]),
    )


_PART_LABEL = re.compile(r"^\s*(?:\*\*)?part\s*[12]\s*(?:\*\*)?\s*[:.)-]?\s*(?:\*\*)?", re.IGNORECASE)


def split_two_parts(reply: str, item: Mapping[str, Any] | None = None) -> tuple[str, str]:
    """One model's reply to the whole-answer prompt, as (part 1, part 2): split at the first blank
    line (else at a "Part 2" label), the "Part N:" labels removed; no second part gives ""."""
    text = reply.strip()
    pieces = re.split(r"\n\s*\n", text, maxsplit=1)
    if len(pieces) == 1:
        pieces = re.split(r"(?im)^(?=\s*(?:\*\*)?part\s*2\b)", text, maxsplit=1)
    first, second = (pieces + [""])[:2]
    return _PART_LABEL.sub("", first.strip()).strip(), _PART_LABEL.sub("", second.strip()).strip()


def _whole_answer_instruction(instructions: dict[str, str]) -> str:
    """One instruction for the single-model baseline: both parts, in order, in one reply."""
    parts = [f"Part {i}: {text}" for i, text in enumerate(instructions.values(), start=1)]
    return "Write both parts below, in order, separated by a blank line.\n" + "\n".join(parts)


def summarize_task(items_loader: ItemsLoader | None = None, reward: WritingRewardConfig = SUMMARIZE_REWARD) -> Task:
    """TL;DR (agent 1) + detailed summary (agent 2) of a paper introduction. ``items_loader``
    (``split -> items`` with ``source``, and ``reference`` for ROUGE) replaces the ACLSum data."""
    return _task(
        "summarize",
        "Two agents summarise a paper introduction: a one-sentence TL;DR and a detailed paragraph.",
        SUMMARIZE_INSTRUCTIONS,
        "Introduction",
        reward,
        items_loader or (lambda split: aclsum_items(split, "summarize")),
        max_new_tokens=96,
    )


def expand_task(items_loader: ItemsLoader | None = None, reward: WritingRewardConfig = EXPAND_REWARD) -> Task:
    """Background and motivation (agent 1) + methods and implications (agent 2): together, an
    introduction written from the abstract. ``items_loader`` replaces the ACLSum data."""
    return _task(
        "expand",
        "Two agents expand a paper abstract into an introduction: background, then methods.",
        EXPAND_INSTRUCTIONS,
        "Abstract",
        reward,
        items_loader or (lambda split: aclsum_items(split, "expand")),
        max_new_tokens=128,
    )
