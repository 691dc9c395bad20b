"""The memory planner (magrpo.memory_plan, ``magrpo plan``): its arithmetic on hand-computed
cases, its activation formula against the tensors autograd really keeps, the published model
sizes, and the command's output."""

from __future__ import annotations

import contextlib

import pytest
from typer.testing import CliRunner

from magrpo.cli import app
from magrpo.config import MAGRPOConfig
from magrpo.errors import ConfigError
from magrpo.memory_plan import (
    GPU_OVERHEAD,
    KNOWN_MODELS,
    Device,
    GiB,
    ModelShape,
    Placement,
    Workload,
    activation_bytes,
    model_shape,
    parse_devices,
    parse_size,
    plan_memory,
    suggest_placements,
)

#: vocab 10, hidden 4, 2 layers, 2 heads of 2 (q 4), 1 kv head of 2 (kv 2), MLP 8, tied embeddings.
#: Parameters: embedding 40; a layer q 16 + k 8 + v 8 + o 16 + gate 32 + up 32 + down 32 + 2 norms 8
#: = 152; 40 + 2 x 152 + the final norm 4 = 348.
TINY = ModelShape(
    "tiny", vocab=10, hidden=4, layers=2, heads=2, kv_heads=1, head_dim=2, intermediate=8, tied=True, max_positions=64
)


def tiny_config(**fields) -> MAGRPOConfig:
    values = dict(num_agents=1, num_generations=2, max_new_tokens=3, batch_size=1, device="cpu")
    values.update(fields)
    return MAGRPOConfig(**values)


def term(plan, prefix: str, device: int = 0) -> int:
    [found] = [t.bytes for t in plan.devices[device].terms if t.what.startswith(prefix)]
    return found


CPU = Device("cpu", 24 * GiB)


def test_a_tiny_model_has_its_hand_counted_parameters():
    assert TINY.params == 348
    assert TINY.lora_params(2, "all-linear") == 2 * 2 * (8 + 6 + 6 + 8 + 12 + 12 + 12)  # r x (in + out), 2 layers
    assert TINY.lora_params(2, ["q_proj", "v_proj"]) == 2 * 2 * (8 + 6)
    assert TINY.kv_bytes_per_token(4) == 2 * 2 * 2 * 4


def test_each_term_of_a_tiny_float32_run_is_the_hand_computed_bytes():
    plan = plan_memory(tiny_config(), [TINY], [CPU], Workload(prompt_tokens=5))
    assert term(plan, "weights") == 348 * 4
    assert term(plan, "master copy") == 0
    assert term(plan, "AdamW moments") == 2 * 348 * 4
    assert term(plan, "gradients") == 348 * 4
    # 2 rows (G) x (5 prompt + 3 new) tokens x 2 (K, V) x 2 layers x kv 2 x 4 B
    assert term(plan, "sampling KV cache") == 2 * 8 * 2 * 2 * 2 * 4
    # one prompt shared by 2 rows: queries 5 + 2 x (3 - 1) = 9, keys 5 + 2 x (5 + 3 - 1) = 19.
    # A query keeps 2 norms x (4 B x 4 input + 4 B x 4 normalised + 4 B rsqrt) + 2 linear inputs x 4 x 4 B
    # + queries and attention output 2 x 4 x 4 B + logsumexp 2 heads x 4 B + MLP 4 x 8 x 4 B = 272 B;
    # a key its keys and values repeated to both heads, 2 x 4 x 4 B = 32 B.
    # and the attention mask, converted to float32 in every layer: 5 x 5 for the prompt, 2 rows x 2 x 7
    layers = 2 * (9 * 272 + 19 * 32 + (25 + 2 * 2 * 7) * 4)
    tail = 9 * (4 + 4) * 4 + 2 * 3 * 4 * 4  # the final norm, the output layer's input
    gathered = 2 * 2 * (5 + 3) * 2 * 2 * 4  # layers x rows x tokens x (K, V) x kv x 4 B
    assert term(plan, "activations") == layers + tail + gathered == 7432
    # 2 rows x 3 positions x vocab 10 x 4 B x 2 (logits, gradient) + one chunk of 3 x 8 B
    assert term(plan, "logits") == 2 * 3 * 10 * 4 * 2 + 2 * 3 * 10 * 8
    assert term(plan, "AdamW step temporaries") == 2 * 40 * 4  # two copies of the embedding, the largest tensor


def test_the_peak_is_the_largest_phase_over_what_is_held():
    plan = plan_memory(tiny_config(), [TINY], [CPU], Workload(prompt_tokens=5))
    device = plan.devices[0]
    held = sum(t.bytes for t in device.terms if "held" in t.phases)
    update = held + sum(t.bytes for t in device.terms if "update of agent_0" in t.phases)
    assert device.phase_bytes()["update of agent_0"] == update
    assert device.peak == update and device.peak_phase == "update of agent_0"
    assert device.fits and device.margin == CPU.memory - update


def test_gradients_are_alive_with_the_activations_only_where_the_update_takes_several_passes():
    one_pass = plan_memory(tiny_config(), [TINY], [CPU], Workload(5)).devices[0]
    phases = {t.what.split(" (")[0]: t.phases for t in one_pass.terms}
    assert phases["gradients"] == ("optimiser step of agent_0",)
    assert phases["output layer's gradient"] == ("update of agent_0",)
    assert term(plan_memory(tiny_config(), [TINY], [CPU], Workload(5)), "output layer's gradient") == 10 * 4 * 4
    # 2 rows in micro-batches of 1: the second pass adds to every gradient the first made
    two_passes = plan_memory(tiny_config(update_micro_batch_size=1), [TINY], [CPU], Workload(5)).devices[0]
    phases = {t.what.split(" (")[0]: t.phases for t in two_passes.terms}
    assert phases["gradients"] == ("update of agent_0", "optimiser step of agent_0")
    assert "output layer's gradient" not in phases


def test_the_plain_pass_runs_every_rows_prompt():
    shared = activation_bytes(
        TINY, rows=2, prompts=1, prompt=5, completion=3, weight_bytes=4, compute_bytes=4, autocast=False
    )
    plain = activation_bytes(
        TINY, rows=2, prompts=None, prompt=5, completion=3, weight_bytes=4, compute_bytes=4, autocast=False
    )
    assert plain.per_layer == 2 * 8 * 272 + 2 * 8 * 32 + 2 * 8 * 8 * 4 and plain.gathered == 0
    assert shared.per_layer == 9 * 272 + 19 * 32 + (25 + 2 * 2 * 7) * 4


def test_sharding_divides_weights_gradients_and_moments_by_the_ranks():
    config = tiny_config(data_parallel="shard")
    whole = plan_memory(config, [TINY], [CPU], Workload(5), Placement(("cpu",)))
    sharded = plan_memory(config, [TINY], [CPU], Workload(5), Placement(("cpu",), ranks=4, shard=True))
    for prefix in ("weights", "gradients", "AdamW moments"):
        assert term(sharded, prefix) == term(whole, prefix) // 4
    # the rollout samples with the whole weights: the other three quarters are gathered for it
    assert term(sharded, "gathered weights") == 348 * 4 * 3 // 4


def test_lora_counts_only_the_adapter_for_gradients_and_moments():
    config = tiny_config(num_agents=2, use_lora=True, lora_r=2)
    plan = plan_memory(config, [TINY, TINY], [CPU], Workload(5))
    adapter = TINY.lora_params(2, "all-linear")
    assert term(plan, "weights") == 348 * 4  # one frozen base for both agents
    assert term(plan, "AdamW moments (agent_0)") == term(plan, "AdamW moments (agent_1)") == 2 * adapter * 4
    assert term(plan, "gradients (agent_1)") == adapter * 4


def test_agents_with_models_of_their_own_update_at_once_on_a_cpu_and_in_turn_on_a_gpu():
    config = tiny_config(num_agents=2)
    cpu = plan_memory(config, [TINY, TINY], [CPU], Workload(5)).devices[0]
    assert "update" in cpu.phase_bytes()  # both agents' gradients and activations at once
    gpu = plan_memory(config, [TINY, TINY], [Device("cuda:0", 80 * GiB)], Workload(5)).devices[0]
    assert {"update of agent_0", "update of agent_1"} <= set(gpu.phase_bytes())


def test_on_a_gpu_the_update_runs_under_bf16_autocast_with_a_bf16_sampling_copy():
    plan = plan_memory(tiny_config(), [TINY], [Device("cuda:0", 80 * GiB)], Workload(5))
    assert plan.precision["autocast"] == "bfloat16"
    assert term(plan, "sampling copy") == 348 * 2
    assert term(plan, "autocast weight copies") == 348 * 2
    assert term(plan, "sampling KV cache") == 2 * 8 * 2 * 2 * 2 * 2  # bf16
    assert term(plan, "framework overhead") == GPU_OVERHEAD


def test_a_frozen_reference_is_planned_only_for_full_agents_with_a_kl_term():
    with_kl = plan_memory(tiny_config(beta=0.1), [TINY], [CPU], Workload(5))
    assert term(with_kl, "reference copy") == 348 * 4
    lora = plan_memory(tiny_config(beta=0.1, use_lora=True), [TINY], [CPU], Workload(5))
    assert not [t for t in lora.devices[0].terms if t.what.startswith("reference")]


def test_a_vllm_engine_on_a_gpu_takes_its_share_and_sleeps_during_the_update():
    gpu = Device("cuda:0", 80 * GiB)
    plan = plan_memory(tiny_config(rollout_backend="vllm"), [TINY], [gpu], Workload(5))
    weights = term(plan, "vLLM engine weights")
    assert weights == 348 * 2  # the engine samples in bf16, the rollout dtype under autocast
    assert term(plan, "vLLM KV cache") == int(0.3 * 80 * GiB) - weights
    engine = [t for t in plan.devices[0].terms if t.what.startswith("vLLM")]
    assert all(t.phases == ("rollout",) for t in engine)


def test_later_turns_plan_the_longer_prompt_and_the_grown_tree():
    config = tiny_config(num_turns=2)
    plan = plan_memory(config, [TINY], [CPU], Workload(prompt_tokens=5, feedback_tokens=4))
    # turn 2: 2 nodes x G 2 = 4 rows, prompt 5 + 3 + 4 = 12 tokens, + 3 new
    assert term(plan, "sampling KV cache") == 4 * 15 * TINY.kv_bytes_per_token(4)


def test_a_sequential_tree_plans_the_busiest_agents_rows_each_after_a_prompt_of_its_own():
    config = tiny_config(num_agents=2, protocol="sequential", joint_mode="cross", num_continuations=3)
    plan = plan_memory(config, [TINY, TINY], [CPU], Workload(prompt_tokens=5))
    # the second agent samples G x M = 6 rows of 5 + 3 tokens
    assert term(plan, "sampling KV cache (agent_1)") == 6 * 8 * TINY.kv_bytes_per_token(4)
    # its rows continue 2 earlier answers, 3 each; planned as one prompt per row, the most activations
    each = activation_bytes(
        TINY, rows=6, prompts=None, prompt=5, completion=3, weight_bytes=4, compute_bytes=4, autocast=False
    )
    assert term(plan, "activations (agent_1)") == each.total


def test_the_known_models_have_their_published_sizes():
    published = {
        "SmolLM2-135M-Instruct": 135e6,
        "Qwen2.5-Coder-0.5B-Instruct": 0.49e9,
        "Qwen2.5-Coder-3B-Instruct": 3.09e9,
        "Qwen3-1.7B": 1.72e9,
    }
    for name, size in published.items():
        assert abs(KNOWN_MODELS[name].params / size - 1) < 0.02, name


def test_models_resolve_by_magrpo_name_hub_id_or_folder(tmp_path):
    from magrpo.models.presets import model_names

    for name in model_names():
        assert model_shape(name).name in KNOWN_MODELS
    assert model_shape("Qwen/Qwen2.5-Coder-3B-Instruct").layers == 36
    assert model_shape("Qwen/Qwen2.5-Coder-3B").layers == 36  # the base model has its instruct model's shape
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.json").write_text(
        '{"model_type": "qwen2", "vocab_size": 10, "hidden_size": 4, "num_hidden_layers": 2, '
        '"num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 8, "tie_word_embeddings": true}'
    )
    shape = model_shape(str(folder))
    assert (shape.head_dim, shape.qkv_bias, shape.params) == (2, True, 348 + 2 * (4 + 2 + 2))
    with pytest.raises(ConfigError, match="no config.json for model 'someone/unknown'"):
        model_shape("someone/unknown")


def test_device_lists_parse_into_devices():
    assert parse_size("80GB") == parse_size("80GiB") == 80 * GiB
    assert parse_size("512MB") == 512 * 2**20
    four = parse_devices("4xH100-80GB")
    assert [d.name for d in four] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"] and four[0].memory == 80 * GiB
    assert [(d.name, d.memory) for d in parse_devices("cuda:0=80GB,cuda:1=40GB")] == [
        ("cuda:0", 80 * GiB),
        ("cuda:1", 40 * GiB),
    ]
    assert parse_devices("cpu=24GB") == [Device("cpu", 24 * GiB, "24GB")]
    assert parse_devices("cpu")[0].memory > 0
    with pytest.raises(ConfigError, match="names no memory size"):
        parse_devices("4xH100")


def test_a_team_too_large_for_one_gpu_is_suggested_a_gpu_per_agent_or_sharding():
    config = tiny_config(num_agents=2)
    weights_and_states = TINY.params * 16
    small = Device("cuda:0", 2 * weights_and_states, "small")  # bytes, not GiB: the tiny model's scale
    suggestions = {
        n: (plans, chosen) for n, plans, chosen in suggest_placements(config, [TINY, TINY], small, Workload(5))
    }
    plans, chosen = suggestions[1]
    assert len(plans) == 1 and not chosen.fits  # one GPU cannot hold even the overhead of the tiny model
    assert [p.placement.describe() for p in suggestions[2][0]][:3] == [
        "2 ranks, one GPU each, the team replicated",
        "2 ranks, one GPU each, the team sharded (FSDP2)",
        "one process, agent_0 on cuda:0, agent_1 on cuda:1",
    ]


def test_the_suggestion_is_the_first_placement_that_fits():
    config = tiny_config(num_agents=2)
    gpu = Device("cuda:0", 80 * GiB, "H100-80GB")
    [(n, plans, chosen)] = suggest_placements(config, [TINY, TINY], gpu, Workload(5), counts=[4])
    assert n == 4 and chosen is plans[0] and chosen.placement == Placement(("cuda:0", "cuda:0"), ranks=4)
    assert chosen.placement.train_flags() == "--nproc 4"


runner = CliRunner()


def run_plan(*args):
    result = runner.invoke(app, ["plan", *args], env={"COLUMNS": "400"})
    return result.exit_code, " ".join(result.output.split())


def test_the_plan_command_prints_each_term_how_it_is_estimated_and_the_verdict():
    code, out = run_plan("--task", "coding", "--model", "default", "--devices", "cpu=24GB", "-G", "4")
    assert code == 0, out
    for phrase in (
        "weights (agent_0: SmolLM2-135M-Instruct)",
        "0.135 B parameters x 4 B (float32)",
        "AdamW moments (agent_1)",
        "activations (agent_0)",
        "sampling KV cache (agent_1)",
        "framework overhead",
        "fits: peak",
    ):
        assert phrase in out


def test_the_plan_command_suggests_placements_on_several_gpus():
    code, out = run_plan(
        "--model", "Qwen/Qwen2.5-Coder-3B-Instruct", "--devices", "2xH100-80GB", "--max-new-tokens", "64"
    )
    assert code == 0, out
    assert "placements on GPUs of 80 GiB (H100-80GB)" in out
    assert "suggested" in out and "does not fit" in out


def test_the_plan_command_names_a_bad_device_list():
    code, out = run_plan("--devices", "lots")
    assert code == 2 and "names no memory size" in out


# ---------------------------------------------------------------------- the formula against autograd
def _saved_bytes(model, shared: bool, autocast: bool) -> int:
    """Bytes of the distinct non-parameter tensors autograd saves in one scoring pass."""
    import torch

    from magrpo.logprobs import completion_token_logprobs, shared_prompt_token_logprobs

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(1, 100, (2, 12), generator=generator)
    prompt_mask = torch.ones(2, 12, dtype=torch.long)
    prompt_mask[0, :3] = 0  # left padding: an attention mask, as in every real micro-batch
    completion = torch.randint(1, 100, (6, 5), generator=generator)
    mask = torch.ones(6, 5, dtype=torch.bool)
    index = torch.arange(2).repeat_interleave(3)
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with cast, torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        if shared:
            shared_prompt_token_logprobs(model, prompt, prompt_mask, index, completion, mask)
        else:
            completion_token_logprobs(model, prompt[index], prompt_mask[index], completion, mask)
    return sum(seen.values())


def _tiny_model(family: str, layers: int, dtype, lora: bool):
    import torch
    import transformers

    torch.manual_seed(0)
    shape = dict(vocab_size=100, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4)
    shape.update(num_key_value_heads=2, head_dim=16, intermediate_size=96, tie_word_embeddings=True)
    config_class, model_class = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    }[family]
    model = model_class(config_class(**shape)).to(dtype).eval()
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    return model


@pytest.mark.parametrize(
    "family, precision, lora, shared",
    [
        ("llama", "float32", False, True),
        ("llama", "float32", False, False),
        ("llama", "autocast", False, True),
        ("llama", "bfloat16", False, True),
        ("llama", "float32", True, True),
        ("llama", "autocast", True, False),
        ("qwen2", "float32", False, True),
        ("qwen3", "float32", False, True),
        ("qwen3", "autocast", False, False),
    ],
)
def test_the_activation_formula_counts_what_autograd_keeps_for_each_layer(family, precision, lora, shared):
    import torch

    dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
    autocast = precision == "autocast"
    models = [_tiny_model(family, layers, dtype, lora) for layers in (1, 3)]
    counted = (_saved_bytes(models[1], shared, autocast) - _saved_bytes(models[0], shared, autocast)) / 2
    shape = ModelShape(
        family, 100, 64, 3, 4, 2, 16, 96, True, 512, qkv_bias=family == "qwen2", qk_norm=family == "qwen3"
    )
    planned = activation_bytes(
        shape,
        rows=6,
        prompts=2 if shared else None,
        prompt=12,
        completion=5,
        weight_bytes=2 if precision == "bfloat16" else 4,
        compute_bytes=4 if precision == "float32" else 2,
        autocast=autocast,
        lora_targets="all-linear" if lora else None,
        lora_rank=4,
    )
    casts = 0  # under autocast the weights' bf16 casts are kept too: the plan's "autocast weight copies" term
    if autocast:
        casts = 2 * sum(a * b + (4 * (a + b) if lora else 0) for a, b in shape.linears().values())
    assert planned.per_layer + casts == counted


def test_ranks_that_share_one_cpu_each_count_in_its_memory():
    one = plan_memory(tiny_config(), [TINY], [CPU], Workload(5), Placement(("cpu",))).devices[0]
    two = plan_memory(tiny_config(), [TINY], [CPU], Workload(5), Placement(("cpu",), ranks=2)).devices[0]
    assert two.peak == 2 * one.peak


def test_the_memory_table_in_the_docs_is_the_one_the_planner_gives():
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("memory_table", root / "benchmarks" / "memory_table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    assert table.table() in (root / "docs" / "distributed.md").read_text()
