"""MAGRPOConfig: every bad value is refused with the field, the value and what is accepted."""

from __future__ import annotations

import dataclasses

import pytest

from magrpo import MAGRPOConfig
from magrpo.config import ConfigError


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("num_generations", 0, "num_generations=0 is not valid; expected an integer >= 1"),
        (
            "temperature",
            0.0,
            "temperature=0.0 is not valid; expected a number > 0, or a list of 2 of them (one per agent)",
        ),
        (
            "temperature",
            [0.7],
            "temperature=[0.7] is not valid; expected a number > 0, or a list of 2 of them (one per agent)",
        ),
        ("top_p", 1.5, "top_p=1.5 is not valid; expected a number in (0, 1], or a list of 2 of them (one per agent)"),
        (
            "max_new_tokens",
            [16, 0],
            "max_new_tokens=[16, 0] is not valid; expected an integer >= 1, or a list of 2 of them (one per agent)",
        ),
        (
            "eval_temperature",
            -1,
            "eval_temperature=-1 is not valid; expected a number >= 0 (0: greedy), or a list of 2 of them (one per agent)",
        ),
        (
            "stop",
            "###",
            'stop=\'###\' is not valid; expected a list of non-empty strings (e.g. ["\\n\\n", "###"]), or a list of 2 such lists (one per agent, None for none)',
        ),
        (
            "stop",
            [["###"]],
            'stop=[[\'###\']] is not valid; expected a list of non-empty strings (e.g. ["\\n\\n", "###"]), or a list of 2 such lists (one per agent, None for none)',
        ),
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


def test_an_unknown_field_is_named_with_the_closest_field_not_with_all_of_them():
    with pytest.raises(ConfigError) as err:
        MAGRPOConfig.from_dict({"learning_rat": 1e-5})
    assert str(err.value) == (
        "unknown config field(s) ['learning_rat']; did you mean 'learning_rate'? (`magrpo train --help` lists the fields)"
    )


def test_several_unknown_fields_each_get_their_closest_field_and_one_like_no_field_gets_none():
    with pytest.raises(ConfigError) as err:
        MAGRPOConfig.from_dict({"tempratur": 0.5, "lerning_rate": 1e-5, "zzz": 1})
    assert str(err.value) == (
        "unknown config field(s) ['lerning_rate', 'tempratur', 'zzz']; did you mean 'learning_rate' for "
        "'lerning_rate', 'temperature' for 'tempratur'? (`magrpo train --help` lists the fields)"
    )
    with pytest.raises(ConfigError) as err:
        MAGRPOConfig.from_dict({"zzz": 1})
    assert str(err.value) == "unknown config field(s) ['zzz'] (`magrpo train --help` lists the fields)"


def test_an_unknown_field_in_a_yaml_file_gets_the_closest_field(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("num_generations: 4\nbatchsize: 2\n")
    with pytest.raises(ConfigError) as err:
        MAGRPOConfig.from_yaml(path)
    assert str(err.value) == (
        "unknown config field(s) ['batchsize']; did you mean 'batch_size'? (`magrpo train --help` lists the fields)"
    )


def test_every_field_has_help_text_in_the_comment_above_it():
    from magrpo.config import field_help

    helps = field_help()
    assert list(helps) == MAGRPOConfig.field_names()  # every field, in declaration order
    assert [name for name, text in helps.items() if not text] == []


def test_help_and_the_api_reference_show_every_field_with_its_help_and_default():
    from magrpo.config import field_help

    doc = MAGRPOConfig.__doc__
    declared = {f.name: f for f in dataclasses.fields(MAGRPOConfig)}  # as declared (None: resolved later)
    for name, text in field_help().items():
        f = declared[name]
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        assert f"        {name} (" in doc and f"): {text} Default: ``{default!r}``." in doc, name


def test_plan_over_budget_is_refused_with_the_numbers():
    with pytest.raises(ConfigError, match="samples 1092 completions per agent per step"):
        MAGRPOConfig(num_generations=3, num_turns=3, joint_mode="cross", batch_size=4, max_planned_generations=1000)


def test_yaml_round_trip(tmp_path):
    cfg = MAGRPOConfig(num_generations=6, joint_mode="cross")
    cfg.save_yaml(tmp_path / "c.yaml")
    assert MAGRPOConfig.from_yaml(tmp_path / "c.yaml", learning_rate=2e-5) == MAGRPOConfig(
        num_generations=6, joint_mode="cross", learning_rate=2e-5
    )


def test_yaml_style_exponents_are_floats(tmp_path):
    # YAML reads "2e-5" (no dot) as a string; a float field takes it as a number
    assert MAGRPOConfig.from_dict({"learning_rate": "2e-5"}).learning_rate == 2e-5
    path = tmp_path / "run.yaml"
    path.write_text("learning_rate: 1e-5\nmax_grad_norm: 5e-1\n")
    assert MAGRPOConfig.from_yaml(path).max_grad_norm == 0.5


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


def test_config_refuses_a_copy_without_sampling_logprobs_and_a_cap_below_one():
    with pytest.raises(ConfigError, match=r"rollout_dtype='bfloat16' needs rollout_backend='fast'.*'plain'"):
        MAGRPOConfig(rollout_dtype="bfloat16", rollout_backend="plain")
    with pytest.raises(ConfigError, match=r"rollout_is_cap=0.5 is not valid; expected a number >= 1.0"):
        MAGRPOConfig(rollout_dtype="bfloat16", rollout_is_cap=0.5)
    with pytest.raises(ConfigError, match=r"rollout_dtype='int8' is not valid; choose one of 'auto', 'same'"):
        MAGRPOConfig(rollout_dtype="int8")


def test_agent_devices_are_checked():
    assert MAGRPOConfig(agent_devices=["cpu", "cpu"]).agent_devices == ["cpu", "cpu"]
    with pytest.raises(ConfigError, match=r"agent_devices=\['cpu'\] has 1 entries for num_agents=2"):
        MAGRPOConfig(agent_devices=["cpu"])
    with pytest.raises(ConfigError, match="agent_devices='tpu' is not valid; expected 'auto', 'cpu' or 'cuda"):
        MAGRPOConfig(agent_devices=["cpu", "tpu"])


def test_data_parallel_is_checked_with_what_sharding_excludes():
    assert MAGRPOConfig(data_parallel="shard").data_parallel == "shard"
    with pytest.raises(ConfigError, match="data_parallel='fsdp' is not valid; choose one of 'replicate', 'shard'"):
        MAGRPOConfig(data_parallel="fsdp")
    with pytest.raises(ConfigError, match=r"data_parallel='shard' .* agent_devices=\['cpu', 'cpu'\]"):
        MAGRPOConfig(data_parallel="shard", agent_devices=["cpu", "cpu"])
    with pytest.raises(
        ConfigError, match="data_parallel='shard' .* rollout_dtype='bfloat16' .* use rollout_dtype='same'"
    ):
        MAGRPOConfig(data_parallel="shard", rollout_dtype="bfloat16")


def test_the_vllm_backend_settings_are_checked_and_sharded_agents_may_sample_on_engines():
    config = MAGRPOConfig(rollout_backend="vllm", rollout_dtype="bfloat16")  # the engine's dtype
    assert config.vllm_importance_sampling_correction and config.vllm_max_model_len is None
    with pytest.raises(
        ConfigError, match="rollout_backend='sglang' is not valid; choose one of 'fast', 'plain', 'vllm'"
    ):
        MAGRPOConfig(rollout_backend="sglang")
    # an engine holds its own copy: a sharded agent's weights reach it one tensor at a time, in its dtype
    sharded = MAGRPOConfig(rollout_backend="vllm", data_parallel="shard", rollout_dtype="bfloat16")
    assert (sharded.data_parallel, sharded.rollout_dtype) == ("shard", "bfloat16")
    with pytest.raises(ConfigError, match="vllm_kv_cache_gib=0 is not valid; expected a number > 0.0"):
        MAGRPOConfig(vllm_kv_cache_gib=0)
    with pytest.raises(
        ConfigError, match="vllm_gpu_memory_utilization=1.5 is not valid; expected a number > 0.0 and <= 1.0"
    ):
        MAGRPOConfig(vllm_gpu_memory_utilization=1.5)
    with pytest.raises(ConfigError, match="vllm_max_model_len=8 is not valid; expected an integer >= 16"):
        MAGRPOConfig(vllm_max_model_len=8)
    with pytest.raises(
        ConfigError, match="vllm_importance_sampling_correction='yes' is not valid; expected true or false"
    ):
        MAGRPOConfig(vllm_importance_sampling_correction="yes")


def test_an_unquoted_no_from_yaml_is_autocast_no(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("autocast: no\n")  # YAML 1.1 reads it as false, as --set autocast=no does
    assert MAGRPOConfig.from_yaml(path).autocast == "no"
    assert MAGRPOConfig(autocast=False).autocast == "no"


@pytest.mark.parametrize(
    "field, value, message",
    [
        (
            "loss_type",
            "ppo",
            "loss_type='ppo' is not valid; choose one of 'sequence', 'token', 'grpo', 'dr_grpo', 'dapo', 'bnpo', 'cispo'",
        ),
        ("num_iterations", 0, "num_iterations=0 is not valid; expected an integer >= 1"),
        ("epsilon", 0.0, "epsilon=0.0 is not valid; expected a number > 0.0 and <= 1.0"),
        ("epsilon_high", -0.1, "epsilon_high=-0.1 is not valid; expected a number > 0.0"),
        (
            "importance_sampling_level",
            "batch",
            "importance_sampling_level='batch' is not valid; choose one of 'token', 'sequence'",
        ),
        ("beta", -0.01, "beta=-0.01 is not valid; expected a number >= 0.0"),
        ("reference_device", "tpu", "reference_device='tpu' is not valid; expected 'auto', 'cpu' or 'cuda[:N]'"),
        ("lr_scheduler_type", "step", "lr_scheduler_type='step' is not valid; choose one of 'constant', "),
        ("lr_scheduler_kwargs", [1], "lr_scheduler_kwargs=[1] is not valid; expected a mapping of name: value"),
        ("warmup_steps", -1, "warmup_steps=-1 is not valid; expected an integer >= 0"),
        ("warmup_ratio", 1.0, "warmup_ratio=1.0 is not valid; expected a number >= 0 and < 1"),
        (
            "learning_rate",
            [1e-5],
            "learning_rate=[1e-05] is not valid; expected a number >= 0, or a list of 2 of them (one per agent)",
        ),
        ("mask_truncated_completions", "yes", "mask_truncated_completions='yes' is not valid; expected true or false"),
    ],
)
def test_the_objectives_knobs_name_the_value_and_what_is_accepted(field, value, message):
    with pytest.raises(ConfigError) as err:
        MAGRPOConfig(**{field: value})
    assert str(err.value).startswith(message)


def test_loss_aggregation_is_the_old_name_of_loss_type():
    assert MAGRPOConfig(loss_aggregation="token").loss_type == "token"
    assert MAGRPOConfig(loss_aggregation="token").loss_aggregation is None  # saved under the new name only
    with pytest.raises(
        ConfigError, match="loss_aggregation='token' is the old name of loss_type, and loss_type='grpo'"
    ):
        MAGRPOConfig(loss_aggregation="token", loss_type="grpo")


def test_warmup_and_clip_bounds_and_rates_per_agent():
    cfg = MAGRPOConfig(max_steps=10, warmup_ratio=0.25, epsilon=0.2)
    assert cfg.warmup() == 3 and cfg.epsilon_bounds() == (0.2, 0.2)  # ceil(2.5); epsilon_high None is epsilon
    assert MAGRPOConfig(max_steps=10, warmup_ratio=0.25, warmup_steps=1).warmup() == 1  # steps win, as transformers
    assert MAGRPOConfig(epsilon_high=0.28).epsilon_bounds() == (0.2, 0.28)
    assert MAGRPOConfig(learning_rate=1e-5).learning_rate_per_agent() == [1e-5, 1e-5]
    assert MAGRPOConfig(learning_rate=(1e-5, 2e-5)).learning_rate_per_agent() == [1e-5, 2e-5]


def test_every_knob_of_the_objective_is_reachable_with_set():
    from magrpo.cli import resolve_config

    pairs = [
        "loss_type=dr_grpo",
        "num_iterations=2",
        "epsilon=0.1",
        "epsilon_high=0.28",
        "importance_sampling_level=sequence",
        "beta=0.04",
        "reference_device=cpu",
        "lr_scheduler_type=cosine_with_min_lr",
        "lr_scheduler_kwargs={min_lr_rate: 0.1}",
        "warmup_ratio=0.1",
        "learning_rate=[1e-5, 2e-5]",  # YAML reads 1e-5 (no dot) as a string: taken as the float
        "mask_truncated_completions=true",
    ]
    cfg = resolve_config("summarize", None, {}, pairs)
    assert (cfg.loss_type, cfg.num_iterations, cfg.epsilon_bounds()) == ("dr_grpo", 2, (0.1, 0.28))
    assert (cfg.importance_sampling_level, cfg.beta, cfg.reference_device) == ("sequence", 0.04, "cpu")
    assert (cfg.lr_scheduler_type, cfg.lr_scheduler_kwargs, cfg.warmup_ratio) == (
        "cosine_with_min_lr",
        {"min_lr_rate": 0.1},
        0.1,
    )
    assert cfg.learning_rate == [1e-5, 2e-5] and cfg.mask_truncated_completions is True


def test_a_schedule_missing_its_arguments_is_refused_when_the_config_is_built():
    with pytest.raises(
        ConfigError, match="lr_scheduler_type='cosine_with_min_lr' with lr_scheduler_kwargs=None: .*min_lr"
    ):
        MAGRPOConfig(lr_scheduler_type="cosine_with_min_lr")


@pytest.mark.parametrize(
    "field, value, message",
    [
        (
            "loss_type",
            "gspo",
            "loss_type='gspo' is not valid; choose one of 'sequence', 'token', 'grpo', 'dr_grpo', 'dapo', 'bnpo', "
            "'cispo', 'sapo', 'luspo', 'vespo'",
        ),
        ("delta", 1.0, "delta=1.0 is not valid; expected a number > 1.0"),
        ("sapo_temperature_neg", 0, "sapo_temperature_neg=0 is not valid; expected a number > 0.0"),
        ("vespo_lambda_pos", 0.0, "vespo_lambda_pos=0.0 is not valid; expected a number > 0.0"),
        ("vespo_k_neg", -1.0, "vespo_k_neg=-1.0 is not valid; expected a number >= 0.0"),
        ("off_policy_mask_threshold", -0.5, "off_policy_mask_threshold=-0.5 is not valid; expected a number >= 0.0"),
        ("top_entropy_quantile", 1.2, "top_entropy_quantile=1.2 is not valid; expected a number >= 0.0 and <= 1.0"),
        ("entropy_coef", -0.1, "entropy_coef=-0.1 is not valid; expected a number >= 0.0"),
        ("use_adaptive_entropy", "on", "use_adaptive_entropy='on' is not valid; expected true or false"),
        ("use_bias_correction_kl", 1, "use_bias_correction_kl=1 is not valid; expected true or false"),
        ("ref_model_mixup_alpha", 0.0, "ref_model_mixup_alpha=0.0 is not valid; expected a number > 0.0 and <= 1.0"),
        ("ref_model_sync_steps", 0, "ref_model_sync_steps=0 is not valid; expected an integer >= 1"),
        (
            "vllm_importance_sampling_mode",
            "truncate",
            "vllm_importance_sampling_mode='truncate' is not valid; choose one of 'token_truncate', 'token_mask', "
            "'sequence_truncate', 'sequence_mask'",
        ),
        (
            "vllm_importance_sampling_clip_min",
            1.5,
            "vllm_importance_sampling_clip_min=1.5 is not valid; expected a number >= 0.0 and <= 1.0",
        ),
        (
            "top_k",
            -1,
            "top_k=-1 is not valid; expected an integer >= 0 (0: off), or a list of 2 of them (one per agent)",
        ),
        ("top_k", [5], "top_k=[5] is not valid; expected an integer >= 0 (0: off), or a list of 2 of them"),
        ("min_p", 2.0, "min_p=2.0 is not valid; expected None or a number in [0, 1], or a list of 2 of them"),
        ("repetition_penalty", 0.0, "repetition_penalty=0.0 is not valid; expected a number > 0 (1: off), or a list"),
        (
            "multi_objective_aggregation",
            "sum",
            "multi_objective_aggregation='sum' is not valid; choose one of 'sum_then_normalize', 'normalize_then_sum'",
        ),
    ],
)
def test_trls_options_name_the_value_and_what_is_accepted(field, value, message):
    with pytest.raises(ConfigError) as err:
        MAGRPOConfig(**{field: value})
    assert str(err.value).startswith(message)


@pytest.mark.parametrize(
    "config, message",
    [
        (
            {"loss_type": "cispo", "delta": 2.0},
            "delta=2.0 caps r in the clipped surrogate, which loss_type='cispo' does not use: choose one of "
            "'sequence', 'token', 'grpo', 'dr_grpo', 'dapo', 'bnpo', 'luspo', or leave delta unset",
        ),
        (
            {"loss_type": "vespo", "vllm_importance_sampling_mode": "sequence_mask"},
            "loss_type='vespo' folds each token's sampler weight into its sequence weight; "
            "vllm_importance_sampling_mode='sequence_mask' leaves it one per completion: choose 'token_truncate' "
            "or 'token_mask'",
        ),
        (
            {"vllm_importance_sampling_clip_min": 1.0, "rollout_is_cap": 1.0},
            "vllm_importance_sampling_clip_min=1.0 must be below rollout_is_cap=1.0 (the weight's bounds)",
        ),
        (
            {"use_adaptive_entropy": True, "entropy_coef_min": 0.5, "entropy_coef_max": 0.1},
            "entropy_coef_min=0.5 is above entropy_coef_max=0.1: the adaptive coefficient moves between them",
        ),
        (
            {"sync_ref_model": True},
            "sync_ref_model=True moves the reference of the KL term, and beta=0 has none: set beta > 0, or leave "
            "sync_ref_model off",
        ),
        (
            {"sync_ref_model": True, "beta": 0.1, "use_lora": [False, True]},
            "sync_ref_model=True mixes the policy into a frozen reference copy; use_lora=[False, True]: a LoRA "
            "agent's reference is its own base with the adapter off",
        ),
    ],
)
def test_trls_options_that_do_not_go_together_are_refused_with_the_reason(config, message):
    with pytest.raises(ConfigError) as err:
        MAGRPOConfig(**config)
    assert str(err.value).startswith(message)


def test_trls_options_take_their_values_and_per_agent_lists():
    cfg = MAGRPOConfig(
        loss_type="sapo",
        top_k=[0, 20],
        min_p=[None, 0.05],
        repetition_penalty=1.1,
        vllm_importance_sampling_mode="sequence_mask",
        vllm_importance_sampling_clip_min=0.5,
        sync_ref_model=True,
        beta=0.04,
    )
    assert (cfg.top_k, cfg.min_p, cfg.repetition_penalty) == ([0, 20], [None, 0.05], 1.1)
    assert MAGRPOConfig(loss_type="grpo", delta=1.5).delta == 1.5
    assert MAGRPOConfig().use_bias_correction_kl is True  # TRL's default
