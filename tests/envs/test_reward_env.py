"""Reward functions as an environment: weighted sums with each function's value kept, one scorer
call per batch of joint actions, and each agent's history as its next observation."""

from __future__ import annotations

import pytest

from magrpo import RewardError
from magrpo.envs import RewardFunctionEnv, scorer_from_reward_funcs, step_batch
from magrpo.feedback import CallableFeedback

NAMES = ["agent_0", "agent_1"]


def length_of_first(*, completions, **_):
    return [float(len(c[0])) for c in completions]


def one(*, completions, **_):
    return [1.0 for _ in completions]


def test_reward_functions_are_summed_with_their_weights_and_kept_as_figures():
    scorer = scorer_from_reward_funcs([length_of_first, one], weights=[0.5, 2.0])
    rows = scorer(completions=[("abcd", "x"), ("", "y")], prompts=[("p", "q")] * 2)
    assert rows == [
        {"reward": 0.5 * 4 + 2.0, "reward/length_of_first": 4.0, "reward/one": 1.0},
        {"reward": 2.0, "reward/length_of_first": 0.0, "reward/one": 1.0},
    ]
    assert scorer_from_reward_funcs([one])(completions=[("a", "b")], prompts=[("p", "q")]) == [{"reward": 1.0}]
    with pytest.raises(ValueError, match="1 reward weights for 2 reward functions"):
        scorer_from_reward_funcs([one, one], weights=[1.0])


def test_a_batch_is_scored_in_one_call_with_the_items_columns():
    calls = []

    def scorer(*, completions, prompts, **columns):
        calls.append((list(completions), columns))
        return [{"reward": float(q == c[1])} for c, q in zip(completions, columns["answer"])]

    items = [{"q": "1+1", "answer": "2"}, {"q": "2+2", "answer": "4"}]
    envs = [RewardFunctionEnv(item, [lambda x: x["q"]] * 2, scorer, NAMES) for item in items]
    for env in envs:
        env.reset()
    results = step_batch(envs, [{"agent_0": "", "agent_1": "2"}, {"agent_0": "", "agent_1": "5"}])
    assert [r.joint_reward for r in results] == [1.0, 0.0]
    assert len(calls) == 1 and calls[0][1] == {"q": ["1+1", "2+2"], "answer": ["2", "4"]}
    assert all(r.done for r in results)  # single turn: every joint action ends its episode


def test_a_scorer_row_without_a_finite_reward_is_refused():
    env = RewardFunctionEnv({}, [lambda x: "q"] * 2, lambda **_: [{"reward": float("nan")}], NAMES)
    env.reset()
    with pytest.raises(RewardError, match="nan at index 0"):
        env.step({"agent_0": "a", "agent_1": "b"})


def test_with_feedback_each_agent_sees_its_history_then_its_feedback():
    feedback = CallableFeedback(lambda request: (f"helper, turn {request.turn}", f"main, turn {request.turn}"))
    env = RewardFunctionEnv(
        {"q": "task"},
        [lambda x: x["q"] + " A", lambda x: x["q"] + " B"],
        lambda **kw: [{"reward": 0.0}],
        NAMES,
        feedback=feedback,
        is_solved=lambda row: False,
        num_turns=3,
    )
    env.reset()
    twin = env.branch()
    result = env.step({"agent_0": "a1", "agent_1": "b1"})
    assert not result.done
    assert result.observations["agent_1"] == [
        {"role": "user", "content": "task B"},
        {"role": "assistant", "content": "b1"},
        {"role": "user", "content": "Feedback on your last answer:\nmain, turn 1\n\nWrite your improved answer."},
    ]
    assert twin.observations == {"agent_0": "task A", "agent_1": "task B"}  # the sibling is untouched
