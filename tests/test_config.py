import math

import pytest

from magrpo import ConfigError, MAGRPOConfig, MAGRPOTrainer, RewardError
from magrpo.rewards.validation import validate_rewards
from magrpo.trainer import DatasetError


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("num_generations", 1, "num_generations=1 is not valid; expected an integer >= 2"),
        ("temperature", 0.0, "temperature=0.0 is not valid; expected a number > 0.0"),
        ("top_p", 1.5, "top_p=1.5 is not valid; expected a number > 0.0 and <= 1.0"),
        ("joint_mode", "diagonal", "joint_mode='diagonal' is not valid; choose one of 'aligned', 'cross'"),
        ("advantage_scaling", "rank", "advantage_scaling='rank' is not valid; choose one of 'none', 'std'"),
        ("loss_aggregation", "mean", "loss_aggregation='mean' is not valid; choose one of 'sequence', 'token'"),
        ("batch_size", "4", "batch_size='4' is not valid; expected an integer >= 1"),
    ],
)
def test_invalid_values_name_the_field_the_value_and_the_choices(field, value, message):
    with pytest.raises(ConfigError) as err:
        MAGRPOConfig(**{field: value})
    assert str(err.value) == message


def test_unknown_field_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown config field\\(s\\) \\['learning_rat'\\]; valid fields: num_agents"):
        MAGRPOConfig.from_dict({"learning_rat": 1e-5})


def test_plan_over_budget_is_refused_with_the_numbers():
    with pytest.raises(ConfigError, match="samples 1092 completions per agent per step"):
        MAGRPOConfig(num_generations=3, num_turns=3, joint_mode="cross", batch_size=4, max_planned_generations=1000)


def test_yaml_round_trip(tmp_path):
    cfg = MAGRPOConfig(num_generations=6, joint_mode="cross")
    cfg.save_yaml(tmp_path / "c.yaml")
    assert MAGRPOConfig.from_yaml(tmp_path / "c.yaml", learning_rate=2e-5) == MAGRPOConfig(
        num_generations=6, joint_mode="cross", learning_rate=2e-5
    )


def reward_of_length(n):
    def bad_reward(*, completions, prompts, **_):
        return [1.0] * n

    return bad_reward


def test_reward_list_of_the_wrong_length_is_an_error_not_broadcast():
    with pytest.raises(RewardError, match="'bad_reward' returned 1 rewards for 4 joint actions"):
        validate_rewards(reward_of_length(1), [1.0], 4)


@pytest.mark.parametrize(
    "values, fragment",
    [
        ([1.0, math.nan], "returned nan at index 1"),
        ([math.inf, 1.0], "returned inf at index 0"),
        ([1.0, "1"], "returned '1' (str) at index 1"),
        ([None, 1.0], "returned None (NoneType) at index 0"),
        ([True, 1.0], "returned True (bool) at index 0"),
    ],
)
def test_non_finite_or_non_numbers_name_the_index(values, fragment):
    with pytest.raises(RewardError) as err:
        validate_rewards(reward_of_length(2), values, 2)
    assert fragment in str(err.value)


def test_numpy_like_rewards_are_accepted():
    import numpy as np

    assert validate_rewards(reward_of_length(2), np.array([1.0, 2.5]), 2) == [1.0, 2.5]


def test_wrong_length_reward_stops_training(tiny_agents, tmp_path):
    trainer = MAGRPOTrainer(
        agents=tiny_agents,
        reward_func=reward_of_length(1),
        train_dataset=[{"q": "q"}],
        formatters=[lambda x: x["q"]] * 2,
        args=MAGRPOConfig(max_new_tokens=2, max_steps=1, output_dir=str(tmp_path)),
    )
    with pytest.raises(RewardError, match="returned 1 rewards for 4 joint actions"):
        trainer.train(progress=False)


def test_item_missing_a_formatter_field_stops_before_any_compute(tiny_agents):
    with pytest.raises(DatasetError) as err:
        MAGRPOTrainer(
            agents=tiny_agents,
            reward_func=reward_of_length(4),
            train_dataset=[{"question": "q"}, {"text": "q"}],
            formatters=[lambda x: x["question"]] * 2,
            args=MAGRPOConfig(max_new_tokens=2),
        )
    assert str(err.value) == (
        "train_dataset[1]: the formatter of agent_0 needs field 'question', which the item lacks; "
        "the item has fields ['text']"
    )


def test_one_formatter_per_agent(tiny_agents):
    with pytest.raises(ConfigError, match="formatters: 1 given for num_agents=2; give one formatter per agent"):
        MAGRPOTrainer(agents=tiny_agents, reward_func=reward_of_length(4), train_dataset=[{"q": "q"}], formatters=[str])


def test_yaml_style_exponents_are_floats(tmp_path):
    # YAML reads "2e-5" (no dot) as a string; a float field takes it as a number
    assert MAGRPOConfig.from_dict({"learning_rate": "2e-5"}).learning_rate == 2e-5
    path = tmp_path / "run.yaml"
    path.write_text("learning_rate: 1e-5\nmax_grad_norm: 5e-1\n")
    assert MAGRPOConfig.from_yaml(path).max_grad_norm == 0.5


def test_a_run_directorys_config_yaml_is_reusable(tmp_path):
    from magrpo.runlog import RunLog

    cfg = MAGRPOConfig(num_generations=3, learning_rate=3e-6)
    RunLog(tmp_path, cfg, extra={"task": "coding", "models": ["default", "default"]})
    assert MAGRPOConfig.from_yaml(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("adam_beta2", 1.5, "adam_beta2=1.5 is not valid"),
        ("lora_dropout", -0.1, "lora_dropout=-0.1 is not valid"),
        ("num_threads", 0, "num_threads=0 is not valid; expected an integer >= 1"),
        ("early_stop_reward", "high", "early_stop_reward='high' is not valid; expected a number"),
        ("share_prompt_in_update", "no", "share_prompt_in_update='no' is not valid; expected true or false"),
        ("use_lora", 1, "use_lora=1 is not valid; expected true or false"),
    ],
)
def test_optional_and_optimiser_fields_are_checked_too(field, value, fragment):
    with pytest.raises(ConfigError, match=fragment):
        MAGRPOConfig(**{field: value})
