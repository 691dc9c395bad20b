"""The coding task: HumanEval's fixed split, each agent's own prompt, and the task scorer end to end."""

from __future__ import annotations

import pytest

from magrpo.tasks.coding import HELD_OUT_PROBLEMS, TRAIN_PROBLEMS, coding_task, load_humaneval

HELPER = "```python\ndef aux(xs):\n    total = 0\n    for x in xs:\n        total += x\n    return total\n```"


def test_humaneval_split_is_fixed_and_disjoint():
    train, held_out = load_humaneval("train"), load_humaneval("eval")
    assert (len(train), len(held_out)) == (132, 32) == (len(TRAIN_PROBLEMS), len(HELD_OUT_PROBLEMS))
    assert train[0]["task_id"] == "HumanEval/0" and held_out[0]["task_id"] == "HumanEval/132"


def test_each_agent_sees_the_problem_and_its_own_role_only():
    task = coding_task()
    item = load_humaneval("eval")[0]
    helper_msg, main_msg = (f(item)[0]["content"] for f in task.formatters)
    assert item["prompt"].strip() in helper_msg and item["prompt"].strip() in main_msg
    assert "helper agent" in helper_msg and "main agent" not in helper_msg
    assert "main agent" in main_msg and "helper agent" not in main_msg


def test_canonical_solution_as_main_scores_full_tests_through_the_task_scorer():
    task = coding_task()
    item = load_humaneval("eval")[0]
    main = item["prompt"] + item["canonical_solution"]
    rows = task.scorer(completions=[(HELPER, main)], prompts=[("", "")], **{k: [v] for k, v in item.items()})
    assert rows[0]["tests_passed"] == 1.0 and rows[0]["pass@1"] == 1.0
    assert rows[0]["reward"] == pytest.approx(5.0)  # no call to aux: no bonus
    assert rows[0]["scheme/none"] == 1.0 and sum(v for k, v in rows[0].items() if k.startswith("scheme/")) == 1.0


def test_the_task_scorer_reports_the_cooperation_scheme_of_each_answer():
    task = coding_task()
    item = {
        "prompt": "def add_all(xs):\n",
        "test": "def check(candidate):\n    assert candidate([1, 2]) == 3\n",
        "entry_point": "add_all",
    }
    helper = "def aux(xs):\n    return sum(xs)\n"
    mains = [
        "def add_all(xs):\n    return aux(xs)\n",
        "def add_all(xs):\n    if not xs:\n        return aux(xs)\n    return sum(xs)\n",
        "def add_all(xs):\n    return sum(aux([x]) for x in xs)\n",
    ]
    rows = task.scorer(
        completions=[(helper, m) for m in mains], prompts=[("", "")] * 3, **{k: [v] * 3 for k, v in item.items()}
    )
    assert [next(k for k, v in r.items() if k.startswith("scheme/") and v == 1.0) for r in rows] == [
        "scheme/delegation",
        "scheme/fallback",
        "scheme/coordinator",
    ]  # what the code is written to do


@pytest.mark.parametrize("name", ["coding", "coding-paper"])
def test_taking_turns_the_main_agent_is_shown_the_helpers_code(name):
    from magrpo.envs.reward_env import reward_env_factory
    from magrpo.tasks import get_task

    task = get_task(name)
    item = load_humaneval("eval")[0]
    env = reward_env_factory(
        task.formatters,
        task.scorer,
        ["helper", "main"],
        sequential=True,
        show_earlier_answers=task.show_earlier_answers,
    )(item)
    observations, _ = env.reset()
    reply = "Here it is:\n" + HELPER + "\nHope it helps."
    (shown,) = env.observe_after("main", observations["main"], {"helper": reply})
    code = "def aux(xs):\n    total = 0\n    for x in xs:\n        total += x\n    return total"
    assert shown["content"] == (
        observations["main"][0]["content"]
        + "\n\nYour teammate has already written the helper function `aux` below; call it where it helps:\n"
        + f"```python\n{code}\n```"
    )
    # what the scorer is told each agent saw: the main agent's prompt with the helper's code
    assert env.seen("main", {"helper": reply, "main": ""})[0]["content"] == shown["content"]
    assert env.seen("helper", {"helper": reply, "main": ""}) == observations["helper"]


@pytest.mark.parametrize("name", ["coding", "coding-paper"])
def test_a_helper_may_pass_where_asked_and_the_main_agent_is_told_so(name):
    """--allow-pass helper: an empty helper part is scored by the task's rule (ours: the main
    function alone; the paper's: its own levels, without the helper's 0.4), and a main agent
    answering after it is told there is no helper."""
    from magrpo.tasks import get_task
    from magrpo.tasks.coding import SHOWN_PASS, show_helper_code

    task = get_task(name)
    item = load_humaneval("eval")[0]
    main = item["prompt"] + item["canonical_solution"]
    columns = {k: [v] for k, v in item.items()}
    strict = task.scorer(completions=[("", main)], prompts=[("", "")], **columns)[0]["reward"]
    passing = task.allowing_pass(["helper"])
    allowed = passing.scorer(completions=[("", main)], prompts=[("", "")], **columns)[0]["reward"]
    # ours gives a missing helper nothing unless a pass is allowed; the paper's scores it either way
    assert (strict, allowed) == ((0.0, 5.0) if name == "coding" else (0.6 + 0.5 + 1.0, 0.6 + 0.5 + 1.0))
    assert show_helper_code([""], item) == show_helper_code(["```python\n```"], item) == SHOWN_PASS
    with pytest.raises(ValueError, match="task '.*' has no rule for scoring a pass by its main; roles that may pass"):
        task.allowing_pass(["main"])
    with pytest.raises(ValueError, match=r"--allow-pass 'tldr': task '.*' has the roles \['helper', 'main'\]"):
        task.allowing_pass(["tldr"])


def test_a_writing_task_has_no_pass_rule():
    from magrpo.tasks import get_task

    task = get_task("summarize")
    with pytest.raises(ValueError, match="task 'summarize' has no rule for scoring a pass by its"):
        task.allowing_pass([task.agent_roles[0]])
    shown = task.show_earlier_answers([" "], {})
    assert shown == "Your teammate passed and wrote nothing: write yours in full."
