"""Steps that give no agent a learning signal are said at once, and their likely causes after a few."""

from __future__ import annotations

import warnings

import pytest

from magrpo import MAGRPOConfig, MAGRPOTrainer


def trl_length_reward(completions, **_):
    """TRL's documented example, written for one model: a team's completions are tuples."""
    return [-abs(20 - len(c)) for c in completions]


def run(agents, reward, tmp_path, steps: int = 3):
    trainer = MAGRPOTrainer(
        agents=agents,
        reward_func=reward,
        train_dataset=[{"q": "q a"}, {"q": "b"}],
        formatters=[lambda x: x["q"]] * 2,
        args=MAGRPOConfig(max_new_tokens=3, max_steps=steps, output_dir=str(tmp_path), log_samples_steps=0),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train(progress=False)
    return [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def test_a_one_model_reward_given_a_teams_tuples_is_said_at_step_one_then_explained(tiny_agents, tmp_path):
    said = run(tiny_agents, trl_length_reward, tmp_path)
    assert said[0] == (
        "step 1: every group's joint actions got the same joint reward (first turn: rewards -18), so every "
        "advantage is 0 and no agent learns from this step"
    )
    (explained,) = [s for s in said if "in a row" in s]
    assert explained.startswith("3 steps in a row (1-3) gave no agent a learning signal (3 so far)")
    assert "got -18." in explained and "write it as [f(c0, c1) for c0, c1 in completions]" in explained
    assert len(said) == 2  # once, then once explained: not a warning per step


def test_a_reward_that_varies_says_nothing(tiny_agents, tmp_path):
    from tests.conftest import letter_count_reward

    assert [
        s for s in run(tiny_agents, letter_count_reward, tmp_path) if "learning signal" in s or "step 1:" in s
    ] == []


@pytest.mark.parametrize("steps", [2])
def test_fewer_silent_steps_than_the_patience_are_said_once_and_not_explained(tiny_agents, tmp_path, steps):
    said = run(tiny_agents, trl_length_reward, tmp_path, steps=steps)
    assert len(said) == 1 and said[0].startswith("step 1:")
