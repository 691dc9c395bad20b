"""Sampling with a reduced-precision copy of the policy (``rollout_dtype``): the copy tracks the
training weights exactly (rounded once), its log-probabilities are the ones the correction
uses, the truncated importance weights and the weighted loss are exact, and training still learns.
"""

from __future__ import annotations

import math

import pytest
import torch

from magrpo import MAGRPOConfig, MAGRPOTrainer
from magrpo.config import ConfigError
from magrpo.fast_rollout import sample_completions_fast
from magrpo.models import attach_rollout_copies, build_agents
from magrpo.policy import completion_token_logprobs, policy_gradient_loss_sum, truncated_importance_weights
from tests.conftest import letter_count_reward, make_tiny_model
from tests.test_learning import both_agents_right

PROMPTS = ["a b c", "q", "a a b b c c q q a"]


def test_truncated_importance_weights_are_the_capped_ratio_and_carry_no_gradient():
    logprobs = torch.log(torch.tensor([[0.5, 0.2, 0.9]])).requires_grad_()
    sampler = torch.log(torch.tensor([[0.25, 0.4, 0.1]]))
    weights = truncated_importance_weights(logprobs, sampler, cap=3.0)
    assert torch.allclose(weights, torch.tensor([[2.0, 0.5, 3.0]]), rtol=1e-6)  # 2, 1/2, 9 capped at 3
    assert not weights.requires_grad


def test_weighted_loss_gradient_is_each_token_weight_times_its_advantage():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -4.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    advantages = torch.tensor([1.5, -2.0])
    weights = torch.tensor([[2.0, 0.5, 3.0], [1.0, 0.25, 0.75]])
    loss = policy_gradient_loss_sum(logprobs, mask, advantages, weights)
    loss.backward()
    expected_grad = -(advantages[:, None] * weights * mask)
    assert torch.equal(logprobs.grad, expected_grad)
    assert loss.item() == pytest.approx(-(1.5 * (2.0 * -1.0 + 0.5 * -2.0) - 2.0 * (-0.3 + 0.25 * -0.7 + 0.75 * -4.0)))
    # weights of 1 give back the plain on-policy loss, bit for bit
    assert torch.equal(policy_gradient_loss_sum(logprobs, mask, advantages, torch.ones_like(weights)),
                       policy_gradient_loss_sum(logprobs, mask, advantages))


def _bf16_config(tmp_path, **overrides) -> MAGRPOConfig:
    values = dict(num_generations=4, batch_size=2, max_new_tokens=4, learning_rate=3e-3, max_steps=1, seed=0,
                  output_dir=str(tmp_path), log_samples_steps=0, rollout_dtype="bfloat16")
    values.update(overrides)
    return MAGRPOConfig(**values)


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_the_copy_is_the_training_weights_rounded_once_before_and_after_every_update(tiny_tokenizer, tmp_path):
    agents = build_agents([(make_tiny_model(len(tiny_tokenizer), seed=s), tiny_tokenizer) for s in (1, 2)], device="cpu")
    trainer = MAGRPOTrainer(agents=agents, reward_func=letter_count_reward, train_dataset=[{"q": "q"}] * 2,
                            formatters=[lambda item: item["q"]] * 2, args=_bf16_config(tmp_path))
    before = [_params(a.model) for a in agents]
    for agent in agents:
        assert agent.rollout_model is not None and agent.rollout_model is not agent.model
        assert agent.rollout_model.dtype == torch.bfloat16 and agent.model.dtype == torch.float32
        for name, p in agent.rollout_model.named_parameters():
            assert not p.requires_grad
            assert torch.equal(p, agent.model.get_parameter(name).detach().to(torch.bfloat16)), name

    metrics, _ = trainer.train_step(trainer.next_batch())
    for agent, old in zip(agents, before):
        moved = [n for n, p in agent.model.named_parameters() if not torch.equal(p, old[n])]
        assert moved  # the update changed the training weights ...
        for name, p in agent.rollout_model.named_parameters():  # ... and the copy follows them
            assert torch.equal(p, agent.model.get_parameter(name).detach().to(torch.bfloat16)), name
        assert 0.0 < metrics[f"{agent.name}/is_weight_mean"] and 0.0 <= metrics[f"{agent.name}/is_capped_fraction"] <= 1.0


def test_sampling_logprobs_come_from_the_copy_and_sit_close_to_the_float32_policy(tiny_tokenizer):
    agent = build_agents([(make_tiny_model(len(tiny_tokenizer), seed=3), tiny_tokenizer)], device="cpu")[0]
    with torch.no_grad():
        agent.model.lm_head.weight.mul_(8.0)  # peaked enough that EOS comes at different times
    attach_rollout_copies([agent], torch.bfloat16)
    torch.manual_seed(0)
    G = 3
    rollout = sample_completions_fast(agent, PROMPTS, num_generations=G, max_new_tokens=10, temperature=1.0)
    prompt_ids = rollout.prompt_ids.repeat_interleave(G, 0)
    prompt_mask = rollout.prompt_mask.repeat_interleave(G, 0)
    mask = rollout.completion_mask
    with torch.no_grad():
        copy_full = completion_token_logprobs(agent.rollout_model, prompt_ids, prompt_mask, rollout.completion_ids, mask)
        exact = completion_token_logprobs(agent.model, prompt_ids, prompt_mask, rollout.completion_ids, mask)
    gap_to_copy = (rollout.token_logprobs[mask] - copy_full[mask]).abs().max().item()
    gap_to_exact = (rollout.token_logprobs[mask] - exact[mask]).abs().max().item()
    # the copy's incremental decode vs its own full pass: bf16 rounding of different kernels
    assert gap_to_copy < 0.05, gap_to_copy
    # and what the correction corrects: a small but real gap to the float32 policy
    assert 0.0 < gap_to_exact < 0.1, gap_to_exact


def test_lora_agents_on_one_base_share_one_copy_and_sync_only_their_own_adapter(tiny_tokenizer):
    base = make_tiny_model(len(tiny_tokenizer), seed=5)
    agents = build_agents([(base, tiny_tokenizer)] * 2, device="cpu", use_lora=True, lora_r=4)
    attach_rollout_copies(agents, torch.bfloat16)
    assert agents[0].rollout_model is agents[1].rollout_model
    copy = agents[0].rollout_model
    untouched = _params(copy)
    with torch.no_grad():
        for p in agents[0].trainable_parameters():
            p.add_(0.25)
    agents[0].sync_rollout_model()
    changed = {n for n, p in copy.named_parameters() if not torch.equal(p, untouched[n])}
    assert changed and all(".agent_0." in n and "lora_" in n for n in changed)
    for name in changed:
        assert torch.equal(copy.get_parameter(name), agents[0].model.get_parameter(name).detach().to(torch.bfloat16))


def test_evaluation_decodes_with_the_training_weights_not_the_copy(tiny_tokenizer, tmp_path):
    agents = build_agents([(make_tiny_model(len(tiny_tokenizer), seed=s), tiny_tokenizer) for s in (1, 2)], device="cpu")
    trainer = MAGRPOTrainer(agents=agents, reward_func=both_agents_right, train_dataset=[{"q": "q"}] * 2,
                            eval_dataset=[{"q": "q"}] * 2, formatters=[lambda item: item["q"]] * 2,
                            args=_bf16_config(tmp_path))
    exact = trainer.evaluate()
    # give agent 0's copy the weights of an unrelated model: whatever it samples shows whose they are
    stranger = make_tiny_model(len(tiny_tokenizer), seed=9).to(torch.bfloat16)
    with torch.no_grad():
        stranger.lm_head.weight.mul_(8.0)
    agents[0].rollout_model.load_state_dict(stranger.state_dict())
    assert trainer.evaluate() == exact
    stranger_agent = build_agents([(stranger, tiny_tokenizer)], device="cpu")[0]
    greedy = dict(num_generations=1, max_new_tokens=6, temperature=0.0)
    by_copy = sample_completions_fast(agents[0], PROMPTS, **greedy)
    by_stranger = sample_completions_fast(stranger_agent, PROMPTS, **greedy)
    by_training_weights = sample_completions_fast(agents[0], PROMPTS, use_rollout_copy=False, **greedy)
    assert torch.equal(by_copy.completion_ids, by_stranger.completion_ids)
    assert not torch.equal(by_copy.completion_ids, by_training_weights.completion_ids)


def test_config_refuses_a_copy_without_sampling_logprobs_and_a_cap_below_one():
    with pytest.raises(ConfigError, match=r"rollout_dtype='bfloat16' needs rollout_backend='fast'.*'plain'"):
        MAGRPOConfig(rollout_dtype="bfloat16", rollout_backend="plain")
    with pytest.raises(ConfigError, match=r"rollout_is_cap=0.5 is not valid; expected a number >= 1.0"):
        MAGRPOConfig(rollout_dtype="bfloat16", rollout_is_cap=0.5)
    with pytest.raises(ConfigError, match=r"rollout_dtype='int8' is not valid; choose one of 'same'"):
        MAGRPOConfig(rollout_dtype="int8")


def test_no_copy_when_the_rollout_dtype_is_the_training_dtype(tiny_agents, tmp_path):
    trainer = MAGRPOTrainer(agents=tiny_agents, reward_func=both_agents_right, train_dataset=[{"q": "q"}] * 2,
                            formatters=[lambda item: item["q"]] * 2, args=_bf16_config(tmp_path, rollout_dtype="float32"))
    assert all(a.rollout_model is None for a in trainer.agents)
    metrics, _ = trainer.train_step(trainer.next_batch())
    assert not any("is_weight" in k for k in metrics)  # exactly on-policy: no correction at all
    assert math.isfinite(metrics["reward_mean"])
