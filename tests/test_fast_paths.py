"""Every fast path against the plain one it replaces, on tiny random models (a few seconds).

Tolerances: token ids exactly equal; log-probabilities within 1e-4 (float32 rounding of different
kernel shapes); sampling frequencies within 4.5 binomial standard deviations.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import DynamicCache

from magrpo.fast_rollout import SampledRollout, draw, new_cache, sample_completions_fast
from magrpo.models import build_agents
from magrpo.policy import completion_token_logprobs, selected_token_logprobs, shared_prompt_token_logprobs
from magrpo.rollout import sample_completions, tokenize_prompts
from tests.conftest import make_tiny_model

# prompts of different lengths, so batches are left-padded
PROMPTS = ["a b c", "q", "a a b b c c q q a", "b"]


def peaked_model(tokenizer, seed: int, scale: float):
    """A tiny random model with its output layer scaled up: random init alone gives nearly uniform
    distributions (greedy ties, no EOS); ``scale`` sets how peaked they are."""
    model = make_tiny_model(len(tokenizer), seed=seed)
    with torch.no_grad():
        model.lm_head.weight.mul_(scale)
    return model


def agent_for(tokenizer, seed: int, scale: float = 40.0):
    return build_agents([(peaked_model(tokenizer, seed, scale), tokenizer)], device="cpu")[0]


def repeat_prompts(rollout, generations: int) -> tuple[torch.Tensor, torch.Tensor]:
    return rollout.prompt_ids.repeat_interleave(generations, 0), rollout.prompt_mask.repeat_interleave(generations, 0)


# ---------------------------------------------------------------------------- (a) greedy equality
def test_greedy_fast_sampler_equals_generate_token_for_token(tiny_tokenizer):
    lengths = set()
    for seed in range(6):
        agent = agent_for(tiny_tokenizer, seed)
        plain = sample_completions(agent, PROMPTS, num_generations=1, max_new_tokens=12, temperature=0.0)
        fast = sample_completions_fast(agent, PROMPTS, num_generations=1, max_new_tokens=12, temperature=0.0)
        assert isinstance(fast, SampledRollout)
        assert torch.equal(fast.prompt_ids, plain.prompt_ids) and torch.equal(fast.prompt_mask, plain.prompt_mask)
        assert torch.equal(fast.completion_ids, plain.completion_ids), f"seed {seed}"
        assert torch.equal(fast.completion_mask, plain.completion_mask)
        assert fast.texts == plain.texts and fast.prompts == plain.prompts
        lengths.update(fast.completion_mask.sum(dim=1).tolist())
    # rows that stop at once, part-way and never: the row-dropping path ran
    assert 1 in lengths and 12 in lengths and len(lengths) >= 4


def test_greedy_with_several_generations_repeats_the_greedy_answer(tiny_tokenizer):
    # generate refuses greedy with num_return_sequences > 1; the fast sampler gives G equal rows
    agent = agent_for(tiny_tokenizer, seed=2)
    one = sample_completions(agent, PROMPTS, num_generations=1, max_new_tokens=10, temperature=0.0)
    three = sample_completions_fast(agent, PROMPTS, num_generations=3, max_new_tokens=10, temperature=0.0)
    assert torch.equal(three.completion_ids, one.completion_ids.repeat_interleave(3, 0))


# ---------------------------------------------------------------------------- (b) sampling-time log-probs
@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (1.3, 0.8), (0.0, 1.0)])
def test_sampling_logprobs_match_a_full_forward(tiny_tokenizer, temperature, top_p):
    agent = agent_for(tiny_tokenizer, seed=4, scale=8.0)
    torch.manual_seed(0)
    G = 3
    rollout = sample_completions_fast(
        agent, PROMPTS, num_generations=G, max_new_tokens=16, temperature=temperature, top_p=top_p
    )
    prompt_ids, prompt_mask = repeat_prompts(rollout, G)
    with torch.no_grad():
        full = completion_token_logprobs(
            agent.model, prompt_ids, prompt_mask, rollout.completion_ids, rollout.completion_mask, temperature or 1.0
        )
    mask = rollout.completion_mask
    assert torch.allclose(rollout.token_logprobs[mask], full[mask], atol=1e-4)
    assert (rollout.token_logprobs[~mask] == 0).all()
    assert len(set(mask.sum(dim=1).tolist())) > 1  # completions of different lengths


def test_reserved_cache_matches_dynamic_cache_and_grows_past_its_room(tiny_tokenizer):
    model = peaked_model(tiny_tokenizer, seed=1, scale=8.0).eval()
    ids = torch.tensor([[2, 3, 4, 5, 2, 3]])
    with torch.no_grad():
        caches = [new_cache(model, capacity=4), DynamicCache(config=model.config)]  # 4 < 6 + 3: it must grow
        logits = []
        for cache in caches:
            out = [model(input_ids=ids, past_key_values=cache, use_cache=True).logits[:, -1]]
            for token in (4, 5, 2):
                out.append(model(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True).logits[:, -1])
            logits.append(torch.cat(out))
    assert caches[0].get_seq_length() == 9
    assert torch.allclose(logits[0], logits[1], atol=1e-5)


# ---------------------------------------------------------------------------- (c) chunked log-softmax
def test_chunked_selected_logprobs_match_full_log_softmax_on_a_large_vocabulary():
    torch.manual_seed(0)
    logits = torch.randn(3, 37, 5000) * 4
    tokens = torch.randint(0, 5000, (3, 37))
    reference = torch.log_softmax(logits.double(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    for chunk in (None, 1, 5, 16, 37, 100):
        got = selected_token_logprobs(logits, tokens, chunk_size=chunk)
        assert got.dtype == torch.float32
        assert torch.allclose(got.double(), reference, atol=1e-5), chunk


def test_bfloat16_logits_are_scored_in_float32():
    torch.manual_seed(1)
    logits = (torch.randn(2, 9, 3000) * 4).bfloat16()
    tokens = torch.randint(0, 3000, (2, 9))
    reference = torch.log_softmax(logits.double(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(selected_token_logprobs(logits, tokens, chunk_size=4).double(), reference, atol=1e-5)


# ---------------------------------------------------------------------------- (d) shared LoRA base
def test_lora_agents_on_one_base_score_like_separate_models_and_stay_independent(tiny_tokenizer):
    tok = tiny_tokenizer
    base = peaked_model(tok, seed=3, scale=8.0)
    separate = build_agents([(copy.deepcopy(base), tok), (copy.deepcopy(base), tok)], device="cpu")
    shared = build_agents([(base, tok), (base, tok)], device="cpu", use_lora=True, lora_r=4)
    assert shared[0].model is shared[1].model and shared[0].adapter != shared[1].adapter

    torch.manual_seed(0)
    rollout = sample_completions_fast(separate[0], PROMPTS, num_generations=2, max_new_tokens=8, temperature=1.0)
    prompt_ids, prompt_mask = repeat_prompts(rollout, 2)

    def logprobs(agent) -> torch.Tensor:
        with torch.no_grad(), agent.active() as model:
            model.eval()
            return completion_token_logprobs(model, prompt_ids, prompt_mask, rollout.completion_ids, rollout.completion_mask)

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
    greedy_shared = sample_completions_fast(shared[1], PROMPTS, num_generations=1, max_new_tokens=8, temperature=0.0)
    greedy_separate = sample_completions(separate[1], PROMPTS, num_generations=1, max_new_tokens=8, temperature=0.0)
    assert torch.equal(greedy_shared.completion_ids, greedy_separate.completion_ids)


# ---------------------------------------------------------------------------- (e) sampling distribution
def _first_token_probs(agent, prompt: str, temperature: float) -> torch.Tensor:
    _, ids, mask = tokenize_prompts(agent, [prompt])
    with torch.no_grad():
        logits = agent.model(input_ids=ids, attention_mask=mask).logits[0, -1].double()
    return torch.softmax(logits / temperature, dim=-1)


def _assert_frequencies(samples: torch.Tensor, probs: torch.Tensor) -> None:
    n = samples.numel()
    freq = torch.bincount(samples, minlength=probs.numel()).double() / n
    sigma = (probs * (1 - probs) / n).sqrt().clamp(min=1 / n)
    assert ((freq - probs).abs() <= 4.5 * sigma).all(), (freq, probs)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_first_tokens_follow_the_softmax(tiny_tokenizer, temperature):
    agent = agent_for(tiny_tokenizer, seed=4, scale=4.0)
    probs = _first_token_probs(agent, PROMPTS[0], temperature)
    assert (probs > 0.05).sum() >= 3  # a distribution worth testing
    torch.manual_seed(1234)
    rollout = sample_completions_fast(agent, PROMPTS[:1], num_generations=20_000, max_new_tokens=1, temperature=temperature)
    _assert_frequencies(rollout.completion_ids[:, 0], probs)


def test_top_p_keeps_the_nucleus_renormalised(tiny_tokenizer):
    agent = agent_for(tiny_tokenizer, seed=4, scale=4.0)
    probs = _first_token_probs(agent, PROMPTS[0], 1.0)
    top_p = 0.75
    ordered, order = probs.sort(descending=True)
    kept = order[(ordered.cumsum(0) - ordered) < top_p]  # smallest set holding top_p of the mass
    nucleus = torch.zeros_like(probs)
    nucleus[kept] = probs[kept] / probs[kept].sum()
    assert 1 < len(kept) < len(probs)
    torch.manual_seed(99)
    rollout = sample_completions_fast(agent, PROMPTS[:1], num_generations=20_000, max_new_tokens=1, temperature=1.0, top_p=top_p)
    _assert_frequencies(rollout.completion_ids[:, 0], nucleus)


def test_draw_inverts_the_cdf_and_never_picks_a_token_without_mass():
    probs = torch.tensor([[0.0, 0.2, 0.0, 0.5, 0.3, 0.0]]).repeat(50_000, 1) * 3.0  # unnormalised on purpose
    torch.manual_seed(7)
    samples = draw(probs)
    _assert_frequencies(samples, probs[0].double() / 3.0)
    edge = torch.tensor([[0.0, 1.0, 0.0]])  # rows whose mass is all on one token
    assert draw(edge.repeat(1000, 1)).eq(1).all()


def test_same_seed_same_samples(tiny_tokenizer):
    agent = agent_for(tiny_tokenizer, seed=0, scale=4.0)
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        runs.append(sample_completions_fast(agent, PROMPTS, num_generations=4, max_new_tokens=10, temperature=1.0).completion_ids)
    assert torch.equal(runs[0], runs[1])


def test_plain_greedy_sampler_repeats_its_single_decode_for_every_generation(tiny_agents):
    from magrpo.rollout import sample_completions

    rollout = sample_completions(tiny_agents[0], ["q a", "b"], num_generations=3, max_new_tokens=4, temperature=0.0)
    assert rollout.completion_ids.shape[0] == 6
    for p in range(2):
        rows = rollout.completion_ids[p * 3 : (p + 1) * 3]
        assert torch.equal(rows[0], rows[1]) and torch.equal(rows[0], rows[2])


# ---------------------------------------------------------------------------- (f) one prompt pass per prompt
def test_shared_prompt_scoring_matches_the_full_pass_in_value_and_gradient(tiny_tokenizer):
    """Each distinct prompt run once (its keys/values gathered per row) against every row run in
    full: log-probs within 1e-5, every parameter gradient within 1e-5 of its largest entry."""
    agent = agent_for(tiny_tokenizer, seed=4, scale=8.0)
    torch.manual_seed(0)
    G = 3
    rollout = sample_completions_fast(agent, PROMPTS, num_generations=G, max_new_tokens=10, temperature=1.0)
    mask = rollout.completion_mask
    assert len(set(mask.sum(dim=1).tolist())) > 1
    # rows of a micro-batch need not cover whole groups: drop a few and shuffle the rest
    rows = torch.tensor([11, 0, 4, 5, 2, 9, 3, 7])
    prompts, index = torch.unique(rows // G, return_inverse=True)
    model = agent.model.train()
    params = [p for p in model.parameters()]
    args = (rollout.completion_ids[rows], mask[rows])
    full = completion_token_logprobs(model, rollout.prompt_ids[rows // G], rollout.prompt_mask[rows // G], *args)
    shared = shared_prompt_token_logprobs(model, rollout.prompt_ids[prompts], rollout.prompt_mask[prompts], index, *args)
    m = mask[rows]
    assert torch.allclose(shared[m], full[m], atol=1e-5)
    weights = torch.randn(m.shape)  # any linear loss, e.g. advantage-weighted
    for got, ref in zip(torch.autograd.grad((shared * weights * m).sum(), params),
                        torch.autograd.grad((full * weights * m).sum(), params)):
        assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_trainer_update_is_the_same_with_and_without_prompt_sharing(tiny_tokenizer, tmp_path):
    """A whole training step (micro-batches that split groups, two agents): the weight change is
    the same either way. Plain SGD, so the change is the (clipped) gradient itself; AdamW would
    blow float noise in near-zero gradient entries up to +-lr."""
    from magrpo import MAGRPOConfig, MAGRPOTrainer
    from tests.conftest import letter_count_reward

    deltas = []
    for share in (True, False):
        agents = build_agents([(make_tiny_model(len(tiny_tokenizer), seed=s), tiny_tokenizer) for s in (1, 2)], device="cpu")
        initial = [p.detach().clone() for a in agents for p in a.model.parameters()]
        args = MAGRPOConfig(num_generations=4, batch_size=3, max_new_tokens=4, max_steps=1, seed=3, update_micro_batch_size=5,
                            share_prompt_in_update=share, output_dir=str(tmp_path / str(share)), log_samples_steps=0)
        trainer = MAGRPOTrainer(agents=agents, reward_func=letter_count_reward, train_dataset=[{"q": "q"}, {"q": "a b"}, {"q": "c"}],
                                formatters=[lambda item: item["q"]] * 2, args=args)
        trainer.optimizers = [torch.optim.SGD(a.trainable_parameters(), lr=1.0) for a in agents]
        metrics, _ = trainer.train_step(trainer.next_batch())
        assert metrics["reward_std"] > 0  # some rows carry advantage: there is a gradient to compare
        deltas.append([p.detach() - p0 for p, p0 in zip((p for a in agents for p in a.model.parameters()), initial)])
    assert max(d.abs().max().item() for d in deltas[0]) > 1e-3
    for shared, full in zip(*deltas):
        assert torch.allclose(shared, full, rtol=1e-4, atol=1e-6)
