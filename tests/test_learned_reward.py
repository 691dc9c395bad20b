"""MARLHF (magrpo.learned_reward, docs/preference.md): the Bradley-Terry loss against the hand
formula, the phases (the reward model learns from the pairs while the agents wait, then the team
learns from its rewards alone), and a team that learns the task it never saw the reward of."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from magrpo import ConfigError, MAGRPOConfig
from magrpo.learned_reward import bradley_terry_loss
from tests.test_preference import SAME_QUESTION, team_trainer


def team_a_count(*, completions, **_):
    # the team's reward: how many "a" its joint answer holds (0 to 6 in two answers of 3 tokens),
    # a bag of words a small reward model reads off its last position
    return [float(c0.split().count("a") + c1.split().count("a")) for c0, c1 in completions]


def test_the_bradley_terry_loss_is_the_hand_formula():
    winners = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    losers = torch.tensor([0.25, 1.0, 2.0], dtype=torch.float64)
    hand = [math.log1p(math.exp(-(w - lo))) for w, lo in zip(winners.tolist(), losers.tolist())]
    torch.testing.assert_close(
        bradley_terry_loss(winners, losers), torch.tensor(hand, dtype=torch.float64), rtol=1e-15, atol=1e-15
    )
    assert bradley_terry_loss(winners, losers)[2].item() == math.log(2)  # a tie: even odds


def test_a_team_learns_from_a_reward_model_it_taught_on_preferences(tiny_agents, tmp_path):
    steps = 30
    trainer = team_trainer(
        tiny_agents,
        tmp_path,
        team_a_count,
        SAME_QUESTION,
        algorithm="marlhf",
        reward_model_steps=steps,
        pair_selection="all",  # every pair of a node: the most the reward model can learn from a step
        pairs_per_node=None,
        critic_learning_rate=1e-2,
        advantage_scaling="std",  # the learnt reward has a scale of its own: the group std sets it
        num_generations=8,
        batch_size=4,
        max_steps=steps + 50,
    )
    with warnings.catch_warnings():  # the agents wait by design: no "no learning signal" warning
        warnings.simplefilter("error", RuntimeWarning)
        history = trainer.train(progress=False)
    learning, frozen = history[:steps], history[steps:]
    # the reward-model phase: one AdamW step of it per training step, none of the agents'
    assert [h["reward_model/steps"] for h in learning] == [float(k) for k in range(1, steps + 1)]
    assert all("reward_model/learnt_reward_mean" in h for h in frozen)
    # no agent moves while the reward model learns
    assert all(h[f"{a.name}/grad_norm"] == 0.0 for h in learning for a in tiny_agents)
    assert learning[-1]["reward_model/bt_loss"] < 0.2 and learning[-1]["reward_model/accuracy"] > 0.9
    assert learning[0]["reward_model/bt_loss"] == pytest.approx(math.log(2), rel=1e-6)  # a zero head: all ties
    first = sum(h["reward_mean"] for h in learning) / steps
    last = sum(h["reward_mean"] for h in frozen[-5:]) / 5
    print(f"task reward over the reward-model phase {first:.3f}, last 5 steps {last:.3f}")
    assert first < 1.0  # the agents wait while the reward model learns: chance
    assert last >= 3.0  # half the task's best, from a reward model that never saw the task's reward
    assert trainer.evaluate()["reward"] >= 3.0  # evaluation scores the task's reward, never the model's


def test_marlhf_settings_are_refused_by_name():
    with pytest.raises(ConfigError, match="reward_model_steps=3 is for algorithm='marlhf', not algorithm='madpo'"):
        MAGRPOConfig(algorithm="madpo", reward_model_steps=3)
    with pytest.raises(ConfigError, match="dpo_beta=0.5 is for algorithm='madpo', not algorithm='marlhf'"):
        MAGRPOConfig(algorithm="marlhf", dpo_beta=0.5)
    with pytest.raises(ConfigError, match="num_generations=1 with algorithm='marlhf'"):
        MAGRPOConfig(algorithm="marlhf", num_generations=1)
    MAGRPOConfig(algorithm="marlhf", pair_selection="all", pairs_per_node=None, critic_model="some/folder")
