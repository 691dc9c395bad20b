"""The CUDA paths: they run where a GPU is, and skip cleanly elsewhere (CI has none)."""

from __future__ import annotations

import pytest
import torch

from magrpo import MAGRPOConfig, MAGRPOTrainer
from magrpo.models import build_agents
from magrpo.sampling import make_sampler
from tests.conftest import assert_frequencies, first_token_probs, letter_count_reward, make_tiny_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def cuda_team(tokenizer, **kwargs):
    return build_agents([(make_tiny_model(len(tokenizer), seed=s), tokenizer) for s in (1, 2)], device="cuda", **kwargs)


@pytest.mark.parametrize("backend", ["plain", "fast"])
def test_both_samplers_run_on_cuda_with_per_agent_generators(tiny_tokenizer, backend):
    agents = cuda_team(tiny_tokenizer)
    for concurrent in (False, True):
        sampler = make_sampler(
            num_generations=4,
            max_new_tokens=5,
            temperature=1.0,
            backend=backend,
            use_sampling_copy=False,
            concurrent_agents=concurrent,
        )
        rollouts = sampler.sample_team(agents, [["q a", "b"], ["c", "q"]])
        assert [r.completion_ids.device.type for r in rollouts] == ["cuda", "cuda"]
        assert all(len(r.texts) == 8 for r in rollouts)


def test_the_fast_sampler_follows_the_softmax_on_cuda(tiny_tokenizer):
    from tests.conftest import agent_for

    agent = agent_for(tiny_tokenizer, seed=3, scale=4.0)
    agent.model.to("cuda")
    probs = first_token_probs(agent, "q a", temperature=0.8).cpu()
    sample = make_sampler(num_generations=4000, max_new_tokens=1, temperature=0.8, use_sampling_copy=False)
    rollout = sample.sample(agent, ["q a"], generator=torch.Generator(device="cuda").manual_seed(0))
    assert_frequencies(rollout.completion_ids[:, 0].cpu(), probs)


def test_a_cuda_step_under_the_default_policy_learns(tiny_tokenizer, tmp_path):
    agents = cuda_team(tiny_tokenizer)
    before = [p.detach().clone() for p in agents[0].model.parameters()]
    trainer = MAGRPOTrainer(
        agents=agents,
        reward_func=letter_count_reward,
        train_dataset=[{"q": "q a"}],
        formatters=[lambda x: x["q"]] * 2,
        args=MAGRPOConfig(
            num_generations=4,
            max_new_tokens=4,
            max_steps=2,
            learning_rate=1e-5,
            output_dir=str(tmp_path),
            save_steps=0,
            save_minutes=0,
        ),
    )
    assert trainer.team.precision.autocast == torch.bfloat16 and trainer.team.precision.rollout_dtype == "bfloat16"
    assert all(a.model.dtype == torch.float32 and a.sampling_copy is not None for a in trainer.agents)
    history = trainer.train(progress=False)
    changed = [float((p != b).float().mean()) for p, b in zip(agents[0].model.parameters(), before)]
    assert max(changed) > 0.5  # float32 master weights: small updates do not round away
    assert history[-1]["cuda_peak_mib"] > 0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_agent_placement_puts_each_agent_on_its_own_gpu(tiny_tokenizer, tmp_path):
    agents = build_agents(
        [(make_tiny_model(len(tiny_tokenizer), seed=s), tiny_tokenizer) for s in (1, 2)], device=["cuda:0", "cuda:1"]
    )
    assert [a.device for a in agents] == [torch.device("cuda", 0), torch.device("cuda", 1)]
    trainer = MAGRPOTrainer(
        agents=agents,
        reward_func=letter_count_reward,
        train_dataset=[{"q": "q a"}],
        formatters=[lambda x: x["q"]] * 2,
        args=MAGRPOConfig(
            num_generations=4, max_new_tokens=4, max_steps=1, output_dir=str(tmp_path), save_steps=0, save_minutes=0
        ),
    )
    trainer.train(progress=False)


@pytest.mark.parametrize("algorithm,critic_type", [("iac", "v"), ("maac", "v"), ("iac", "q"), ("maac", "q")])
def test_critics_train_on_cuda_with_their_values_in_float32(tiny_tokenizer, tmp_path, algorithm, critic_type):
    agents = cuda_team(tiny_tokenizer)
    trainer = MAGRPOTrainer(
        agents=agents,
        reward_func=letter_count_reward,
        train_dataset=[{"q": "q a"}, {"q": "b"}],
        formatters=[lambda x: x["q"]] * 2,
        args=MAGRPOConfig(
            algorithm=algorithm,
            critic_type=critic_type,
            num_generations=1 if critic_type == "v" else 2,
            batch_size=2,
            max_new_tokens=4,
            max_steps=2,
            output_dir=str(tmp_path),
            save_steps=0,
            save_minutes=0,
        ),
    )
    history = trainer.train(progress=False)
    for critic in trainer.team.critics:
        assert critic.head.score.weight.device.type == "cuda" and critic.head.score.bias.item() != 0.0
        assert history[-1][f"{critic.name}/value_loss"] > 0
