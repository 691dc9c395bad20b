"""TRL's names where the meaning is the same: ``model=`` for one agent, ``reward_funcs=``, the
dataset's ``prompt`` column without formatters (``prompt_<i>`` for agent i), and ``num_agents``
following the agents given."""

from __future__ import annotations

import pytest

from magrpo import ConfigError, MAGRPOConfig, MAGRPOTrainer
from magrpo.trainer import prompt_column_formatters


def reward_len(completions, **kwargs):
    """TRL's documented example reward, unchanged."""
    return [-abs(20 - len(completion)) for completion in completions]


def test_one_agent_trains_with_trls_names_and_its_prompt_column(tiny_agents, tmp_path):
    trainer = MAGRPOTrainer(
        model=tiny_agents[0],
        reward_funcs=reward_len,
        train_dataset=[{"prompt": "q a"}, {"prompt": "b"}],
        args=MAGRPOConfig(max_new_tokens=3, max_steps=1, output_dir=str(tmp_path), log_samples_steps=0),
    )
    assert trainer.args.num_agents == 1  # the config's default of 2 follows the one agent given
    metrics, samples = trainer.train_step(trainer.next_batch())
    assert {s["prompts"][0][-1]["content"] for s in samples} <= {"q a", "b"}  # the prompt column is the observation
    assert metrics["reward_std"] > 0  # lengths differ between completions: a signal


def test_a_team_reads_each_agents_prompt_column_else_the_shared_one():
    items = [{"prompt": "shared", "prompt_1": "second's own"}]
    first, second = prompt_column_formatters(items, 2)
    assert (first(items[0]), second(items[0])) == ("shared", "second's own")
    assert prompt_column_formatters([{"question": "x"}], 2) is None  # neither column: formatters are needed


def test_the_team_and_its_reward_are_given_once(tiny_agents):
    with pytest.raises(ConfigError, match=r"give the team as agents=\[...\] .* or one agent as model=..."):
        MAGRPOTrainer(reward_func=reward_len, train_dataset=[{"prompt": "q"}])
    with pytest.raises(ConfigError, match="not both"):
        MAGRPOTrainer(agents=tiny_agents, model=tiny_agents[0], reward_func=reward_len)
    with pytest.raises(ConfigError, match="give reward_func or reward_funcs \\(TRL's name for the same\\), not both"):
        MAGRPOTrainer(agents=tiny_agents, reward_func=reward_len, reward_funcs=reward_len)


def test_a_per_agent_setting_of_another_length_than_the_team_is_named(tiny_agents):
    with pytest.raises(ConfigError, match=r"learning_rate=\[0.001, 0.002, 0.003\] is not valid; expected .* 2 of them"):
        MAGRPOTrainer(
            agents=tiny_agents,
            reward_func=reward_len,
            train_dataset=[{"prompt": "q"}],
            args=MAGRPOConfig(num_agents=3, learning_rate=[1e-3, 2e-3, 3e-3]),
        )
