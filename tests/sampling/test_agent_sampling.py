"""Sampling settings per agent (a role's own budget, temperature, nucleus and stop strings) and
stop strings: a completion ends at the token that completed a stop string, its text stops before
the string, and every sampler cuts it the same way (the ids kept are the ids sampled)."""

from __future__ import annotations

import pytest
import torch

from magrpo import MAGRPOConfig, MAGRPOTrainer
from magrpo.experience import counted_rows
from magrpo.logprobs import completion_token_logprobs
from magrpo.sampling import AgentSampling, SamplingSettings, agent_sampling
from magrpo.sampling.fast import sample_fast
from magrpo.sampling.plain import sample_plain
from magrpo.sampling.vllm_sampler import completions_rollout
from magrpo.step_metrics import completion_figures
from tests.conftest import PROMPTS, agent_for, repeat_prompts

STOP = ("q",)


def decoded(agent, ids) -> str:
    return agent.tokenizer.decode(ids, skip_special_tokens=True)


def assert_cut_at_the_stop_string(agent, rollout, stop=STOP):
    """Every completion of ``rollout`` that holds a stop string ends at the token that completed
    its first one (the fewest tokens whose text holds one), its text up to the string."""
    for row in range(len(rollout.texts)):
        kept = rollout.completion_ids[row][rollout.completion_mask[row]]
        whole = decoded(agent, kept)
        if not rollout.stopped[row]:
            assert not any(s in whole for s in stop) and rollout.texts[row] == whole
            continue
        assert any(s in whole for s in stop) and not any(s in decoded(agent, kept[:-1]) for s in stop)
        assert rollout.texts[row] == whole[: whole.index("q")]
        assert not any(s in rollout.texts[row] for s in stop)


@pytest.mark.parametrize("sample", [sample_fast, sample_plain])
def test_a_stop_string_ends_a_completion_at_the_token_that_completed_it(tiny_tokenizer, sample):
    agent = agent_for(tiny_tokenizer, 0, scale=3.0)
    stopped = sample(agent, PROMPTS, SamplingSettings(3, 10, 1.0, stop=STOP), torch.Generator().manual_seed(0))
    assert_cut_at_the_stop_string(agent, stopped)
    assert 2 <= int(stopped.stopped.sum()) < len(stopped.texts)  # the check has teeth: some rows stop, some do not
    if sample is sample_plain:  # generate decodes on: the same draws as without stop strings, cut after
        free = sample(agent, PROMPTS, SamplingSettings(3, 10, 1.0), torch.Generator().manual_seed(0))
        assert torch.equal(stopped.completion_ids, free.completion_ids)
        for row in range(len(free.texts)):
            length = int(stopped.completion_mask[row].sum())
            assert torch.equal(stopped.completion_mask[row, :length], free.completion_mask[row, :length])
    else:  # the fast sampler stops decoding a row there: nothing sampled after it, and the loss's log-probs
        after = torch.arange(stopped.completion_ids.shape[1]) >= stopped.completion_mask.sum(-1, keepdim=True)
        assert (stopped.completion_ids[after & stopped.stopped[:, None]] == agent.pad_token_id).all()
        assert (stopped.token_logprobs[~stopped.completion_mask] == 0).all()
        full = completion_token_logprobs(
            agent.model, *repeat_prompts(stopped, 3), stopped.completion_ids, stopped.completion_mask, 1.0
        )
        m = stopped.completion_mask
        assert torch.allclose(full[m], stopped.token_logprobs[m], atol=1e-5)


def test_a_vllm_engines_completions_are_cut_the_same_way(tiny_tokenizer):
    """An engine's ids and log-probs (here the fast sampler's draws without stop strings, as an
    engine that decodes on would return them) are cut as every sampler cuts them."""
    agent = agent_for(tiny_tokenizer, 0, scale=3.0)
    settings = SamplingSettings(3, 10, 1.0, stop=STOP)
    free = sample_fast(agent, PROMPTS, SamplingSettings(3, 10, 1.0), torch.Generator().manual_seed(0))
    outputs = [
        [
            (
                free.completion_ids[r][free.completion_mask[r]].tolist(),
                free.token_logprobs[r][free.completion_mask[r]].tolist(),
            )
            for r in range(p * 3, p * 3 + 3)
        ]
        for p in range(len(PROMPTS))
    ]
    engine = completions_rollout(agent, outputs, free.prompts, free.prompt_ids, free.prompt_mask, settings)
    assert_cut_at_the_stop_string(agent, engine)
    assert 2 <= int(engine.stopped.sum()) < len(engine.texts)
    width = engine.completion_ids.shape[1]
    kept = engine.completion_mask
    assert torch.equal(engine.completion_ids[kept], free.completion_ids[:, :width][kept])  # a prefix of each
    assert torch.allclose(engine.token_logprobs[kept], free.token_logprobs[:, :width][kept])
    assert (engine.token_logprobs[~kept] == 0).all()


def test_a_completion_a_stop_string_ended_is_not_truncated(tiny_tokenizer):
    agent = agent_for(tiny_tokenizer, 0, scale=3.0)
    stopped = sample_plain(agent, PROMPTS, SamplingSettings(3, 6, 1.0, stop=STOP), torch.Generator().manual_seed(2))
    free = sample_plain(agent, PROMPTS, SamplingSettings(3, 6, 1.0), torch.Generator().manual_seed(2))
    ended_by_eos = counted_rows(agent, free, mask_truncated=True)
    assert torch.equal(counted_rows(agent, stopped, mask_truncated=True), ended_by_eos | stopped.stopped)
    assert (stopped.stopped & ~ended_by_eos).any()  # some were cut at max_new_tokens without the stop string
    _, cut_free, n = completion_figures(agent, [free])
    _, cut_stopped, _ = completion_figures(agent, [stopped])
    assert cut_stopped == cut_free - float((stopped.stopped & ~ended_by_eos).sum()) and n == len(free.texts)


def test_each_agent_samples_with_its_own_settings_and_the_team_with_the_rest():
    args = MAGRPOConfig(
        max_new_tokens=[3, 7], temperature=[0.5, 1.0], top_p=0.9, stop=[["q"], None], eval_temperature=[0.0, 0.7]
    )
    own = agent_sampling(args, ["agent_0", "agent_1"], training=True)
    assert (own["agent_0"].max_new_tokens, own["agent_0"].temperature, own["agent_0"].stop) == (3, 0.5, ("q",))
    assert (own["agent_1"].max_new_tokens, own["agent_1"].temperature, own["agent_1"].stop) == (7, 1.0, ())
    assert own["agent_0"].top_p == own["agent_1"].top_p == 0.9
    held_out = agent_sampling(args, ["agent_0", "agent_1"], training=False)
    assert [held_out[n].temperature for n in ("agent_0", "agent_1")] == [0.0, 0.7]
    settings = SamplingSettings(4, 16, 1.0, agents=(("agent_0", AgentSampling(max_new_tokens=3)),))

    class Named:
        def __init__(self, name):
            self.name = name

    assert settings.for_agent(Named("agent_0")).max_new_tokens == 3
    assert settings.for_agent(Named("other")) == settings  # an agent not named: the team's


def test_a_step_samples_each_agent_with_its_own_budget_and_scores_its_own_tempered_softmax(tiny_agents, tmp_path):
    """max_new_tokens=[3, 8], temperature=[0.5, 1.5]: each agent's completions keep to its budget,
    and its loss scores the softmax at its own temperature (the sampler's log-probs of the sampled
    tokens are a full forward pass at that temperature)."""
    args = MAGRPOConfig(
        num_generations=3,
        batch_size=2,
        max_new_tokens=[3, 8],
        temperature=[0.5, 1.5],
        max_steps=1,
        output_dir=str(tmp_path),
        save_strategy="no",
    )
    trainer = MAGRPOTrainer(
        agents=tiny_agents,
        reward_func=lambda completions, **_: [float(len(a) - len(b)) for a, b in completions],
        train_dataset=[{"q": "a b"}, {"q": "q"}],
        formatters=[lambda x: x["q"], lambda x: x["q"] + " c"],
        args=args,
    )
    assert [o.temperature for o in trainer.team.objectives] == [0.5, 1.5]
    assert [o.max_new_tokens for o in trainer.team.objectives] == [3, 8]
    first, second = trainer.team.sampler.sample_team(trainer.agents, [["a b", "q"], ["a b c", "q c"]])
    assert first.completion_ids.shape[1] <= 3 and 3 < second.completion_ids.shape[1] <= 8
    for agent, rollout, temperature in zip(trainer.agents, (first, second), (0.5, 1.5)):
        full = completion_token_logprobs(
            agent.model, *repeat_prompts(rollout, 3), rollout.completion_ids, rollout.completion_mask, temperature
        )
        m = rollout.completion_mask
        assert torch.allclose(full[m], rollout.token_logprobs[m], atol=1e-5)
    trainer.train(progress=False)  # and a whole step runs with them


def test_a_vllm_request_carries_the_agents_own_settings(tiny_tokenizer):
    """What an engine (or a rollout server) is asked: the agent's budget, temperature and top_p."""
    from magrpo.sampling.vllm_sampler import sampling_requests

    agent = agent_for(tiny_tokenizer, 0)
    own = AgentSampling(max_new_tokens=5, temperature=0.6, top_p=0.8)
    settings = SamplingSettings(4, 64, 1.0, agents=((agent.name, own),))
    (request,) = sampling_requests(agent, torch.Generator().manual_seed(0), 1, settings)
    assert (request.max_tokens, request.temperature, request.top_p, request.n) == (5, 0.6, 0.8, 4)
    (other,) = sampling_requests(agent, torch.Generator().manual_seed(0), 1, SamplingSettings(4, 64, 1.0))
    assert (other.max_tokens, other.temperature, other.top_p) == (64, 1.0, 1.0)
