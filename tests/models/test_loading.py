"""Loading agents: independent copies, LoRA adapters on one shared base, checkpoints that load directly,
and model specs that name nothing loadable."""

from __future__ import annotations

import pytest
import torch

from magrpo import MAGRPOConfig, MAGRPOTrainer, ModelError
from magrpo.models import build_agents, resolve_model_source, save_agent

from tests.conftest import make_tiny_model


def first_word_is_a(*, completions, prompts, **_):
    return [float(c[0].split()[:1] == ["a"]) + float(c[1].split()[:1] == ["b"]) for c in completions]


def train_one_step(agents, tmp_path):
    args = MAGRPOConfig(max_new_tokens=3, max_steps=1, learning_rate=1e-2, output_dir=str(tmp_path), log_samples_steps=0,
                        num_generations=8, batch_size=2)
    trainer = MAGRPOTrainer(agents=agents, reward_func=first_word_is_a, train_dataset=[{"q": "q"}],
                            formatters=[lambda x: x["q"]] * 2, args=args)
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
    agents = build_agents([(model, tiny_tokenizer), (model, tiny_tokenizer)], device="cpu", use_lora=True, lora_r=4,
                          lora_alpha=8, lora_target_modules=["q_proj", "v_proj"])
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
        with agent.active() as m:
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
    agents = build_agents([str(tmp_path / "base")] * 2, device="cpu", use_lora=True, lora_r=4, lora_target_modules=["q_proj", "v_proj"])
    train_one_step(agents, tmp_path)
    ids = torch.tensor([[5, 2, 3]])
    with agents[1].active() as m:
        expected = m(input_ids=ids).logits
    save_agent(agents[1], tmp_path / "agent_1")
    merged, _ = load_model_and_tokenizer(tmp_path / "agent_1", device=torch.device("cpu"), dtype=torch.float32)
    assert not hasattr(merged, "peft_config")
    assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-5)
