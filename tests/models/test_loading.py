"""Loading agents: independent copies, LoRA adapters on one shared base, checkpoints that load directly,
and model specs that name nothing loadable."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from magrpo import MAGRPOConfig, MAGRPOTrainer, ModelError
from magrpo.models import build_agents, resolve_model_source, save_agent
from magrpo.run import resume
from tests.conftest import make_tiny_model


def first_word_is_a(*, completions, prompts, **_):
    return [float(c[0].split()[:1] == ["a"]) + float(c[1].split()[:1] == ["b"]) for c in completions]


def train_one_step(agents, tmp_path):
    args = MAGRPOConfig(
        max_new_tokens=3,
        max_steps=1,
        learning_rate=1e-2,
        output_dir=str(tmp_path),
        log_samples_steps=0,
        num_generations=8,
        batch_size=2,
    )
    trainer = MAGRPOTrainer(
        agents=agents,
        reward_func=first_word_is_a,
        train_dataset=[{"q": "q"}],
        formatters=[lambda x: x["q"]] * 2,
        args=args,
    )
    torch.manual_seed(0)
    trainer.train(progress=False)
    return trainer


def test_the_same_model_object_twice_gives_two_independent_agents(tiny_tokenizer, tmp_path):
    model = make_tiny_model(len(tiny_tokenizer))
    agents = build_agents([(model, tiny_tokenizer), (model, tiny_tokenizer)], device="cpu")
    assert agents[0].model is not agents[1].model
    before = [p.detach().clone() for p in agents[1].model.parameters()]
    train_one_step(agents, tmp_path)
    changed = [not torch.equal(a, b.detach()) for a, b in zip(before, agents[1].model.parameters())]
    assert any(changed)
    assert not all(torch.equal(p0, p1) for p0, p1 in zip(agents[0].model.parameters(), agents[1].model.parameters()))


def test_lora_agents_share_one_frozen_base_and_save_loadable_adapters(tiny_tokenizer, tmp_path):
    from peft import PeftModel

    model = make_tiny_model(len(tiny_tokenizer))
    base_weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    agents = build_agents(
        [(model, tiny_tokenizer), (model, tiny_tokenizer)],
        device="cpu",
        use_lora=True,
        lora_r=4,
        lora_alpha=8,
        lora_target_modules=["q_proj", "v_proj"],
    )
    assert agents[0].model is agents[1].model  # one base in memory
    assert {a.adapter for a in agents} == {"agent_0", "agent_1"}
    names0 = {id(p) for p in agents[0].trainable_parameters()}
    names1 = {id(p) for p in agents[1].trainable_parameters()}
    assert names0 and names1 and not names0 & names1
    adapters_before = {a.name: [p.detach().clone() for p in a.trainable_parameters()] for a in agents}
    train_one_step(agents, tmp_path)
    for agent in agents:  # each agent's own adapter moved
        moved = [not torch.equal(b, p) for b, p in zip(adapters_before[agent.name], agent.trainable_parameters())]
        assert any(moved), f"{agent.name}'s adapter did not move"
    # the base stayed frozen
    for name, p in agents[0].model.get_base_model().named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, base_weights[name.replace(".base_layer", "")])
    ids = torch.tensor([[5, 2, 3]])
    for agent in agents:
        with agent.with_own_adapter() as m:
            expected = m(input_ids=ids).logits
        save_agent(agent, tmp_path / agent.name)
        fresh = make_tiny_model(len(tiny_tokenizer))
        fresh.load_state_dict(base_weights)
        loaded = PeftModel.from_pretrained(fresh, tmp_path / agent.name)
        assert torch.allclose(loaded(input_ids=ids).logits, expected, atol=1e-6)


@pytest.mark.parametrize("spec", ["./no/such/dir", "not a model", "/abs/missing/path"])
def test_unknown_model_specs_name_the_choices(spec):
    with pytest.raises(ModelError, match=f"model '{spec}' is not a known name"):
        resolve_model_source(spec)


def test_a_directory_without_config_is_refused(tmp_path):
    with pytest.raises(ModelError, match="holds no config.json"):
        resolve_model_source(str(tmp_path))


def test_hub_ids_pass_through_unchanged():
    assert resolve_model_source("Qwen/Qwen2.5-Coder-3B-Instruct") == "Qwen/Qwen2.5-Coder-3B-Instruct"


def test_a_lora_checkpoint_loads_with_its_adapter_merged(tiny_tokenizer, tmp_path):
    from magrpo.models import load_model_and_tokenizer

    base = make_tiny_model(len(tiny_tokenizer))
    base.save_pretrained(tmp_path / "base")
    tiny_tokenizer.save_pretrained(tmp_path / "base")
    agents = build_agents(
        [str(tmp_path / "base")] * 2, device="cpu", use_lora=True, lora_r=4, lora_target_modules=["q_proj", "v_proj"]
    )
    train_one_step(agents, tmp_path)
    ids = torch.tensor([[5, 2, 3]])
    with agents[1].with_own_adapter() as m:
        expected = m(input_ids=ids).logits
    save_agent(agents[1], tmp_path / "agent_1")
    merged, _ = load_model_and_tokenizer(tmp_path / "agent_1", device=torch.device("cpu"), dtype=torch.float32)
    assert not hasattr(merged, "peft_config")
    assert all(p.requires_grad for p in merged.parameters())  # trainable as a full agent (and an optimiser accepts it)
    assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """A GGUF file that is not the bundled one: a tiny random Llama in llama.cpp's layout with the
    bundled model's tokenizer, and the model it was written from."""
    from magrpo.models.presets import bundled_gguf_path
    from tests.models.gguf_files import tiny_llama, write_gguf

    model = tiny_llama(49152, seed=7)
    folder = tmp_path_factory.mktemp("gguf")
    return write_gguf(model, folder / "tiny-llama.gguf", bundled_gguf_path()), model


@pytest.fixture
def own_cache(monkeypatch, tmp_path):
    from magrpo.models import bundled_model_dir

    default_dir = bundled_model_dir()  # the bundled model, converted in the usual cache
    monkeypatch.setenv("MAGRPO_CACHE", str(tmp_path / "cache"))
    return default_dir


def test_a_gguf_file_or_its_folder_is_an_agent_converted_once_into_the_cache(tiny_gguf, own_cache, tmp_path):
    from magrpo.models import load_model_and_tokenizer

    path, written = tiny_gguf
    converted = resolve_model_source(str(path))
    assert converted.startswith(str(tmp_path / "cache" / "models" / "gguf" / "tiny-llama-"))
    assert resolve_model_source(str(path.parent)) == converted  # a folder holding exactly one GGUF file
    stamp = (Path(converted) / "config.json").stat().st_mtime_ns
    model, tokenizer = load_model_and_tokenizer(path, device=torch.device("cpu"), dtype=torch.float32)
    assert (Path(converted) / "config.json").stat().st_mtime_ns == stamp  # converted once, then reused
    expected = written.state_dict()
    assert model.state_dict().keys() == expected.keys()
    for name, weight in model.state_dict().items():  # float32 GGUF: the very weights, q/k rows put back
        assert torch.equal(weight, expected[name]), name
    assert tokenizer("def aux(x):").input_ids == tokenizer.__class__.from_pretrained(own_cache)("def aux(x):").input_ids


#: one rank of a data-parallel run asking for a GGUF file's conversion, once its process group exists
CONVERTING_RANK = """
import sys, torch.distributed as dist
from pathlib import Path
from magrpo.models.store import converted_gguf_dir
dist.init_process_group("gloo")
dist.barrier()  # both ranks ask at once
print(converted_gguf_dir(Path(sys.argv[1])))
dist.destroy_process_group()
"""


def test_the_ranks_of_a_data_parallel_run_share_one_whole_conversion(tiny_gguf, tmp_path, monkeypatch):
    """transformers writes a model's files on rank 0 only once a process group exists: rank 1 alone
    would convert a tokenizer without weights. The conversion writes its weights itself, one
    process at a time, and a broken entry left in the cache (a config but no weights) is replaced."""
    import os
    import subprocess
    import sys

    from tests.test_distributed import free_port

    path, written = tiny_gguf
    cache = tmp_path / "cache"
    env = {**os.environ, "MAGRPO_CACHE": str(cache), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    env |= {"WORLD_SIZE": "2", "GLOO_SOCKET_IFNAME": "lo"}
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", CONVERTING_RANK, str(path)],
            env={**env, "RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = [rank.communicate(timeout=300) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], [err[-2000:] for _, err in outputs]
    (converted,) = {Path(out.strip().splitlines()[-1]) for out, _ in outputs}
    # no temporary left, only the entry and its lock
    assert {p.name for p in converted.parent.iterdir()} == {converted.name, f".{converted.name}.lock"}
    expected = written.state_dict()
    model = type(written).from_pretrained(converted, dtype=torch.float32)
    for name, weight in model.state_dict().items():
        assert torch.equal(weight, expected[name]), name

    (converted / "model.safetensors").unlink()  # as an interrupted or rank-1 conversion left it
    monkeypatch.setenv("MAGRPO_CACHE", str(cache))
    assert resolve_model_source(str(path)) == str(converted)
    assert torch.equal(
        type(written).from_pretrained(converted).model.embed_tokens.weight, expected["model.embed_tokens.weight"]
    )


def test_a_gguf_agent_trains_a_step_in_a_team_with_the_default_model(tiny_gguf, own_cache, tmp_path):
    path, _ = tiny_gguf
    agents = build_agents([str(path), str(own_cache)], device="cpu")
    before = [p.detach().clone() for p in agents[0].model.parameters()]
    args = MAGRPOConfig(
        max_new_tokens=4,
        max_steps=1,
        learning_rate=1e-3,
        output_dir=str(tmp_path / "run"),
        log_samples_steps=0,
        num_generations=4,
        save_steps=0,
        save_minutes=0,
    )
    reward = lambda completions, **_: [float(len(a)) - float(len(b)) for a, b in completions]  # noqa: E731
    trainer = MAGRPOTrainer(
        agents=agents,
        reward_func=reward,
        train_dataset=[{"q": "Say something."}],
        formatters=[lambda x: x["q"]] * 2,
        args=args,
    )
    trainer.train(progress=False)
    assert any(not torch.equal(b, p) for b, p in zip(before, agents[0].model.parameters()))
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final" / "agent_0")  # saved as a plain model


def test_gguf_specs_that_cannot_be_used_are_named(tmp_path):
    (tmp_path / "a.gguf").write_bytes(b"")
    (tmp_path / "b.gguf").write_bytes(b"")
    with pytest.raises(ModelError, match=r"holds several GGUF files \(a.gguf, b.gguf\); name the one to use"):
        resolve_model_source(str(tmp_path))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelError, match="'.*weights.bin' is not a GGUF file"):
        resolve_model_source(str(tmp_path / "weights.bin"))


@pytest.mark.parametrize("use_lora", [[False, True], [True, False]])
def test_a_team_of_one_full_and_one_lora_agent_on_the_same_model(tiny_tokenizer, tmp_path, use_lora):
    model = make_tiny_model(len(tiny_tokenizer), seed=4)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    agents = build_agents([(model, tiny_tokenizer)] * 2, device="cpu", use_lora=use_lora, lora_r=4)
    full, lora = (agents[0], agents[1]) if use_lora == [False, True] else (agents[1], agents[0])
    assert full.adapter is None and lora.adapter == lora.name
    assert full.model is model and lora.model.get_base_model() is not model  # peft never wraps the full agent's model
    assert not any("lora_" in n for n, _ in model.named_parameters())
    adapter_before = [p.detach().clone() for p in lora.trainable_parameters()]
    args = MAGRPOConfig(
        max_new_tokens=3,
        max_steps=1,
        learning_rate=1e-2,
        output_dir=str(tmp_path),
        log_samples_steps=0,
        num_generations=8,
        use_lora=use_lora,
        save_final_checkpoint=True,  # resumed below
    )
    trainer = MAGRPOTrainer(
        agents=agents,
        reward_func=first_word_is_a,
        train_dataset=[{"q": "q"}],
        formatters=[lambda x: x["q"]] * 2,
        args=args,
    )
    trainer.train(progress=False)
    assert any(not torch.equal(original[n], p) for n, p in full.model.named_parameters())
    assert any(not torch.equal(b, p) for b, p in zip(adapter_before, lora.trainable_parameters()))
    for name, p in lora.model.get_base_model().named_parameters():  # the LoRA agent's base stayed frozen
        if "lora_" not in name:
            assert torch.equal(p, original[name.replace(".base_layer", "")])
    # and the checkpoint of such a team resumes into a freshly built one
    again = build_agents(
        [(make_tiny_model(len(tiny_tokenizer), seed=4), tiny_tokenizer)] * 2, device="cpu", use_lora=use_lora, lora_r=4
    )
    resumed = MAGRPOTrainer(
        agents=again,
        reward_func=first_word_is_a,
        train_dataset=[{"q": "q"}],
        formatters=[lambda x: x["q"]] * 2,
        args=args,
    )
    resume(resumed, tmp_path)
    for a, b in zip(trainer.agents, resumed.agents):
        for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
            assert torch.equal(p, q), n


def test_use_lora_per_agent_is_checked():
    from magrpo import ConfigError

    assert MAGRPOConfig(use_lora=[True, False]).lora_per_agent() == [True, False]
    assert MAGRPOConfig(use_lora=True).lora_per_agent() == [True, True]
    with pytest.raises(ConfigError, match=r"use_lora=\[True\] is not valid; expected true or false, or a list of 2"):
        MAGRPOConfig(use_lora=[True])
    with pytest.raises(ConfigError, match="use_lora='yes' is not valid"):
        MAGRPOConfig(use_lora="yes")
