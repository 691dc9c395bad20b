"""The prompt-only set-ups a team is compared with: who sees what, and the same reward as the team."""

from __future__ import annotations

import pytest

from magrpo.eval.setups import (
    DISCUSSION_INSTRUCTION,
    evaluate_setup,
    setup_answers,
    setup_figures,
    setup_rows,
    with_note,
)
from magrpo.rewards.coding import combine_program, score_coding_batch, split_whole_program
from magrpo.sampling import make_sampler
from magrpo.tasks.writing import split_two_parts

ITEMS = [{"q": "q a"}, {"q": "b c"}, {"q": "a"}]
FORMATTERS = [lambda x: x["q"], lambda x: x["q"] + " c"]


def greedy(agent, observation, max_new_tokens=4):
    sample = make_sampler(num_generations=1, max_new_tokens=max_new_tokens, temperature=0.0, use_sampling_copy=False)
    return sample.sample(agent, [observation]).texts[0]


def content(observation):
    return observation[-1]["content"] if isinstance(observation, list) else observation


def test_parallel_agents_see_only_their_own_prompts(peaked_team):
    joint, seen = setup_answers("parallel", peaked_team, ITEMS, formatters=FORMATTERS, max_new_tokens=4)
    for item, answer, observations in zip(ITEMS, joint, seen):
        assert observations == (item["q"], item["q"] + " c")
        assert answer == tuple(greedy(a, o) for a, o in zip(peaked_team, observations))


def test_sequential_agent_two_sees_agent_ones_answer(peaked_team):
    joint, seen = setup_answers(
        "sequential", peaked_team, ITEMS, formatters=FORMATTERS, max_new_tokens=4, roles=("first", "second")
    )
    for item, (a0, a1), (o0, o1) in zip(ITEMS, joint, seen):
        assert o0 == item["q"] and a0 == greedy(peaked_team[0], item["q"])
        assert content(o1) == f"{item['q']} c\n\nYour teammate (first) wrote:\n{a0}"
        assert a1 == greedy(peaked_team[1], o1)


def test_discussion_revises_after_seeing_the_others_first_answers(peaked_team):
    joint, seen = setup_answers(
        "discussion", peaked_team, ITEMS, formatters=FORMATTERS, max_new_tokens=4, roles=("first", "second")
    )
    for item, answer, observations in zip(ITEMS, joint, seen):
        drafts = [greedy(a, fmt(item)) for a, fmt in zip(peaked_team, FORMATTERS)]
        for i, observation in enumerate(observations):
            other = 1 - i
            assert observation[1] == {"role": "assistant", "content": drafts[i]}  # its own first answer
            assert content(observation) == DISCUSSION_INSTRUCTION.format(
                role=("first", "second")[i],
                task=FORMATTERS[i](item),  # its own task, restated
                answers=f"Your teammate ({('first', 'second')[other]}) wrote:\n{drafts[other]}",
            )
            assert content(observation).endswith(
                f"({('first', 'second')[i]}), the one you were asked for:\n\n{FORMATTERS[i](item)}"
            )
            assert answer[i] == greedy(peaked_team[i], observation)


def test_single_model_writes_the_whole_answer_with_the_team_budget(peaked_team):
    joint, seen = setup_answers(
        "single",
        peaked_team,
        ITEMS,
        formatters=FORMATTERS,
        max_new_tokens=3,
        single_formatter=lambda x: x["q"] + " b",
        split_single=lambda reply, item: (reply, item["q"]),
    )
    for item, answer, observations in zip(ITEMS, joint, seen):
        assert observations == (item["q"] + " b",)
        assert answer == (greedy(peaked_team[0], item["q"] + " b", max_new_tokens=6), item["q"])  # 2 agents x 3 tokens
    # one model alone (single-agent GRPO's) still gets the budget of the team's two parts
    alone, _ = setup_answers(
        "single",
        peaked_team[:1],
        ITEMS,
        formatters=FORMATTERS,
        max_new_tokens=3,
        single_formatter=lambda x: x["q"] + " b",
        split_single=lambda reply, item: (reply, item["q"]),
    )
    assert alone == joint
    with pytest.raises(ValueError, match="the 'single' baseline needs the task's single-model prompt"):
        setup_answers("single", peaked_team, ITEMS, formatters=FORMATTERS, max_new_tokens=3)
    with pytest.raises(ValueError, match="baseline='solo' is not valid; choose one of 'single', 'parallel'"):
        setup_answers("solo", peaked_team, ITEMS, formatters=FORMATTERS, max_new_tokens=3)


def test_a_setup_is_scored_by_the_task_scorer_over_every_item(peaked_team):
    seen_columns = []

    def scorer(*, completions, prompts, q, **_):
        seen_columns.extend(q)
        return [{"reward": float(len(a) - len(b)), "note": "text is not a figure"} for a, b in completions]

    figures = evaluate_setup(
        "parallel", peaked_team, ITEMS, formatters=FORMATTERS, scorer=scorer, max_new_tokens=4, batch_size=2
    )
    joint, _ = setup_answers("parallel", peaked_team, ITEMS, formatters=FORMATTERS, max_new_tokens=4)
    assert seen_columns == [x["q"] for x in ITEMS]
    assert figures == {"items": 3.0, "reward": pytest.approx(sum(len(a) - len(b) for a, b in joint) / 3)}
    # each item's own figures, in the items' order (what a study keeps per item)
    rows = setup_rows(
        "parallel", peaked_team, ITEMS, formatters=FORMATTERS, scorer=scorer, max_new_tokens=4, batch_size=2
    )
    assert rows == [{"reward": float(len(a) - len(b))} for a, b in joint]
    assert setup_figures(rows) == figures


def test_with_note_appends_to_the_last_user_message():
    assert with_note("task", "note") == [{"role": "user", "content": "task\n\nnote"}]
    chat = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
    assert with_note(chat, "note") == chat + [{"role": "user", "content": "note"}]


def test_one_models_reply_is_split_into_the_writing_parts():
    assert split_two_parts("Part 1: A short one.\n\nPart 2: The long one.\nMore.") == (
        "A short one.",
        "The long one.\nMore.",
    )
    assert split_two_parts("**Part 1:** A.\n**Part 2:** B.") == ("A.", "B.")
    assert split_two_parts("Only one part.") == ("Only one part.", "")


def test_one_models_program_is_split_into_the_coding_parts_that_rebuild_it():
    reply = (
        "Here it is:\n```python\nimport math\n\ndef aux(xs):\n    return sum(xs)\n\n"
        "def add_all(xs):\n    return aux(xs)\n```\n"
    )
    helper, main = split_whole_program(reply, "add_all")
    assert helper == "import math\n\ndef aux(xs):\n    return sum(xs)"
    assert main == "import math\n\ndef add_all(xs):\n    return aux(xs)"
    assert combine_program(helper, main, "add_all") == (
        "import math\n\ndef aux(xs):\n    return sum(xs)\n\nimport math\n\ndef add_all(xs):\n    return aux(xs)\n"
    )
    problem = {
        "prompt": "def add_all(xs):\n",
        "test": "def check(candidate):\n    assert candidate([1, 2]) == 3\n",
        "entry_point": "add_all",
    }
    [score] = score_coding_batch([(helper, main)], [problem])
    assert (score.reward, score.helper_usage) == (5.5, "used")  # the whole program, graded as a team's
    assert split_whole_program("def broken(:", "add_all") == ("def broken(:", "def broken(:")
