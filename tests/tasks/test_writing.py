"""The writing tasks on ACLSum: items, prompts, the scorer with ROUGE, and the single-model prompt."""

from __future__ import annotations

import pytest

from magrpo.rewards.writing import SUMMARIZE_REWARD, writing_levels
from magrpo.tasks.base import columns_of
from magrpo.tasks.writing import MAX_SOURCE_WORDS, aclsum_items, detokenize, expand_task, summarize_task, truncate_words

approx = lambda x: pytest.approx(x, abs=1e-12)  # noqa: E731


LEVELS = ("level_structure", "level_length", "level_vocabulary", "level_style")


def text(n_content: int, n_total: int, prefix: str = "w") -> str:
    """``n_total`` whitespace tokens: ``n_content`` distinct content words, then "the" fillers."""
    assert n_content <= n_total
    return " ".join([f"{prefix}{i}" for i in range(n_content)] + ["the"] * (n_total - n_content))


CONCISE = "alpha beta gamma delta epsilon the the the the the"  # 10 tokens, C1 = 5 words


def test_detokenize_and_truncate():
    assert (
        detokenize(["Terms ( MT ) , e.g. it 's [ 1 ] fine .", "Do n't stop ."])
        == "Terms (MT), e.g. it's [1] fine. Don't stop."
    )
    long = " ".join(f"t{i}" for i in range(300))
    assert truncate_words(long) == " ".join(f"t{i}" for i in range(MAX_SOURCE_WORDS)) + " ..."
    assert truncate_words("a b  c") == "a b c"


@pytest.fixture(scope="module")
def eval_items():
    return aclsum_items("eval", "summarize")


def test_aclsum_items(eval_items):
    assert len(eval_items) == 100 and len(aclsum_items("train", "expand")) == 100
    assert all(item["source"] and item["reference"] for item in eval_items)
    expand = aclsum_items("eval", "expand")
    assert [i["id"] for i in expand] == [i["id"] for i in eval_items]
    assert expand[0]["reference"] == eval_items[0]["source"]  # the introduction
    with pytest.raises(ValueError, match="unknown split"):
        aclsum_items("val", "summarize")


@pytest.mark.parametrize(
    "factory, roles, label, own, other, max_new",
    [
        (summarize_task, ("tldr", "detailed"), "Introduction:", "TL;DR", "detailed summary", 96),
        (expand_task, ("background", "methods"), "Abstract:", "background and motivation", "proposed methods", 128),
    ],
)
def test_task_objects(factory, roles, label, own, other, max_new):
    task = factory()
    assert task.num_agents == 2 and task.agent_roles == roles
    assert task.required_columns == ("source",)  # the reward never reads a reference
    assert task.optional_columns == {"reference": "ROUGE-1/2/L"}
    assert task.config_overrides == {"max_new_tokens": max_new}
    item = {"source": "Our source text " + " ".join(f"s{i}" for i in range(400)), "reference": "r"}
    first, second = (f(item) for f in task.formatters)
    for prompt in (first, second):
        assert isinstance(prompt, list) and len(prompt) == 1 and prompt[0]["role"] == "user"
        content = prompt[0]["content"]
        assert label in content and "Our source text s0" in content
        assert "s246" in content and "s247" not in content  # cut at MAX_SOURCE_WORDS = 250
    assert own in first[0]["content"] and own not in second[0]["content"]
    assert other in second[0]["content"] and other not in first[0]["content"]


def test_user_items_replace_aclsum():
    mine = [{"source": "s", "reference": "r"}]
    assert summarize_task(items_loader=lambda split: mine).load_split("train") is mine
    assert expand_task(items_loader=lambda split: mine).load_split("eval") is mine


def test_scorer_on_aclsum_batch(eval_items):
    items = eval_items[:2]
    ref = items[0]["reference"].split()
    half = len(ref) // 2
    completions = [
        # the reference split in two halves: the joint answer is the reference itself
        (" ".join(ref[:half]), " ".join(ref[half:])),
        (CONCISE, "however alpha beta in addition the " + text(8, 19, "b")),
    ]
    task = summarize_task()
    prompts = [tuple(f(item) for f in task.formatters) for item in items]
    rows = task.scorer(completions=completions, prompts=prompts, **columns_of(items))
    assert len(rows) == 2
    for row, (first, second) in zip(rows, completions):
        assert set(row) == {"reward", *LEVELS, "rouge1", "rouge2", "rougeL"}
        expected = writing_levels(first, second, SUMMARIZE_REWARD)
        assert {k: row[k] for k in expected} == expected
    assert rows[0]["rouge1"] == rows[0]["rouge2"] == rows[0]["rougeL"] == approx(1.0)
    assert 0.0 <= rows[1]["rougeL"] <= rows[1]["rouge1"] < 0.2 and rows[1]["reward"] == approx(2.0 + 0.4 * 2 / 3 + 0.4)
    assert task.reward_func(completions=completions, prompts=prompts, **columns_of(items)) == [
        r["reward"] for r in rows
    ]
    with pytest.raises(ValueError, match="2 agents"):
        task.scorer(completions=[("a",)], prompts=[None], reference=["r"])


def test_items_without_references_are_scored_without_rouge(eval_items):
    task = summarize_task()
    items = [{"source": eval_items[0]["source"]}, dict(eval_items[1])]
    completions = [(CONCISE, "however alpha beta in addition the " + text(8, 19, "b"))] * 2
    prompts = [tuple(f(item) for f in task.formatters) for item in items]
    rows = task.scorer(completions=completions, prompts=prompts, **columns_of(items))
    assert "rouge1" not in rows[0] and {"rouge1", "rouge2", "rougeL"} <= set(rows[1])
    assert rows[0]["reward"] == rows[1]["reward"]  # the reward is the same with or without a reference
    no_column = task.scorer(completions=completions[:1], prompts=prompts[:1], source=[items[0]["source"]])
    assert no_column == rows[:1]
    assert task.skipped_figures(items) == [
        "ROUGE-1/2/L skipped for 1 of 2 items: no 'reference' column (map one of yours with --columns reference=YOUR_COLUMN)"
    ]
    assert task.skipped_figures(items[1:]) == []


def test_writing_tasks_have_a_single_model_baseline_prompt():
    task = summarize_task(items_loader=lambda split: [])
    prompt = task.single_agent_formatter({"source": "Some introduction."})[0]["content"]
    assert prompt.startswith("Write both parts below, in order, separated by a blank line.\nPart 1: Write a TL;DR")
    assert "Part 2: Write a detailed summary" in prompt and "Some introduction." in prompt


@pytest.mark.parametrize(
    "factory, shown",
    [
        (summarize_task, "The TL;DR your teammate wrote (do not repeat it; add the detail it leaves out):\n"),
        (expand_task, "The first half your teammate wrote (continue from it; do not repeat it):\n"),
    ],
)
def test_taking_turns_the_second_writer_is_shown_the_first_ones_answer(factory, shown):
    from magrpo.envs.reward_env import reward_env_factory

    task = factory(items_loader=lambda split: [])
    item = {"source": "Our source text."}
    env = reward_env_factory(
        task.formatters,
        task.scorer,
        list(task.agent_roles),
        sequential=True,
        show_earlier_answers=task.show_earlier_answers,
    )(item)
    observations, _ = env.reset()
    first_role, second_role = task.agent_roles
    (seen,) = env.observe_after(second_role, observations[second_role], {first_role: "  We cut costs by half. "})
    assert seen["content"] == observations[second_role][0]["content"] + "\n\n" + shown + "We cut costs by half."
