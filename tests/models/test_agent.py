"""One agent: LoRA agents on one base switch adapters correctly; the reduced-precision sampling
copy tracks the training weights exactly (rounded once), and its log-probabilities are the ones
the correction uses."""

from __future__ import annotations

import copy

import torch

from magrpo.logprobs import completion_token_logprobs
from magrpo.models import attach_sampling_copies, build_agents
from magrpo.sampling import SamplingSettings
from magrpo.sampling.fast import sample_fast
from magrpo.sampling.plain import sample_plain
from tests.conftest import PROMPTS, make_tiny_model, peaked_model, repeat_prompts


# ---------------------------------------------------------------------------- (d) shared LoRA base
def test_lora_agents_on_one_base_score_like_separate_models_and_stay_independent(tiny_tokenizer):
    tok = tiny_tokenizer
    base = peaked_model(tok, seed=3, scale=8.0)
    separate = build_agents([(copy.deepcopy(base), tok), (copy.deepcopy(base), tok)], device="cpu")
    shared = build_agents([(base, tok), (base, tok)], device="cpu", use_lora=True, lora_r=4)
    assert shared[0].model is shared[1].model and shared[0].adapter != shared[1].adapter

    torch.manual_seed(0)
    rollout = sample_fast(separate[0], PROMPTS, SamplingSettings(num_generations=2, max_new_tokens=8, temperature=1.0))
    prompt_ids, prompt_mask = repeat_prompts(rollout, 2)

    def logprobs(agent) -> torch.Tensor:
        with torch.no_grad(), agent.with_own_adapter() as model:
            model.eval()
            return completion_token_logprobs(
                model, prompt_ids, prompt_mask, rollout.completion_ids, rollout.completion_mask
            )

    mask = rollout.completion_mask
    before = [logprobs(a) for a in shared]
    for got, ref in zip(before, (logprobs(a) for a in separate)):
        assert torch.allclose(got[mask], ref[mask], atol=1e-5)

    with torch.no_grad():  # "train" agent_0's adapter only
        for p in shared[0].trainable_parameters():
            p.add_(0.5 * torch.randn_like(p))
    after = [logprobs(a) for a in shared]
    assert (after[0][mask] - before[0][mask]).abs().max() > 1e-2
    assert torch.equal(after[1], before[1])

    # and the fast sampler samples each agent with its own adapter
    greedy_shared = sample_fast(
        shared[1], PROMPTS, SamplingSettings(num_generations=1, max_new_tokens=8, temperature=0.0)
    )
    greedy_separate = sample_plain(
        separate[1], PROMPTS, SamplingSettings(num_generations=1, max_new_tokens=8, temperature=0.0)
    )
    assert torch.equal(greedy_shared.completion_ids, greedy_separate.completion_ids)


COPY_PROMPTS = ["a b c", "q", "a a b b c c q q a"]


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_sampling_logprobs_come_from_the_copy_and_sit_close_to_the_float32_policy(tiny_tokenizer):
    agent = build_agents([(make_tiny_model(len(tiny_tokenizer), seed=3), tiny_tokenizer)], device="cpu")[0]
    with torch.no_grad():
        agent.model.lm_head.weight.mul_(8.0)  # peaked enough that EOS comes at different times
    attach_sampling_copies([agent], torch.bfloat16)
    torch.manual_seed(0)
    G = 3
    rollout = sample_fast(agent, COPY_PROMPTS, SamplingSettings(num_generations=G, max_new_tokens=10, temperature=1.0))
    prompt_ids = rollout.prompt_ids.repeat_interleave(G, 0)
    prompt_mask = rollout.prompt_mask.repeat_interleave(G, 0)
    mask = rollout.completion_mask
    with torch.no_grad():
        copy_full = completion_token_logprobs(
            agent.sampling_copy, prompt_ids, prompt_mask, rollout.completion_ids, mask
        )
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
    attach_sampling_copies(agents, torch.bfloat16)
    assert agents[0].sampling_copy is agents[1].sampling_copy
    copy = agents[0].sampling_copy
    untouched = _params(copy)
    with torch.no_grad():
        for p in agents[0].trainable_parameters():
            p.add_(0.25)
    agents[0].sync_sampling_copy()
    changed = {n for n, p in copy.named_parameters() if not torch.equal(p, untouched[n])}
    assert changed and all(".agent_0." in n and "lora_" in n for n in changed)
    for name in changed:
        assert torch.equal(copy.get_parameter(name), agents[0].model.get_parameter(name).detach().to(torch.bfloat16))


def test_the_sampling_copy_rounds_weights_but_keeps_buffers_in_float32(tiny_tokenizer):
    agent = build_agents([(make_tiny_model(len(tiny_tokenizer), seed=3), tiny_tokenizer)], device="cpu")[0]
    attach_sampling_copies([agent], torch.bfloat16)
    copy_buffers = dict(agent.sampling_copy.named_buffers())
    float_buffers = {n: b for n, b in agent.model.named_buffers() if b.is_floating_point()}
    assert any("inv_freq" in n for n in float_buffers)  # the rotary frequencies
    for name, buffer in float_buffers.items():
        assert copy_buffers[name].dtype == torch.float32 and torch.equal(copy_buffers[name], buffer)
    assert all(p.dtype == torch.bfloat16 for p in agent.sampling_copy.parameters())
