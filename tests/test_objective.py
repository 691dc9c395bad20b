"""The objective and optimiser around the paper's update, on real tiny models: one update per
rollout is the paper's update bit for bit, several clipped updates learn, the schedule follows
transformers' formulas per agent, truncated completions drop out, the KL term pulls towards
the reference (a frozen copy, or a LoRA agent's own base)."""

from __future__ import annotations

import copy

import pytest
import torch

from magrpo import MAGRPOConfig, MAGRPOTrainer, step
from magrpo.baselines import NO_EXTRA_LOSS
from magrpo.experience import build_experience, counted_rows
from magrpo.logprobs import completion_mask, completion_token_logprobs, scoring_mode
from magrpo.loss import k3_kl, policy_gradient_loss_sum
from magrpo.models import build_agents
from magrpo.prepare import prepare_team
from magrpo.sampling import Rollout
from magrpo.sampling.rollout import tokenize_prompts
from tests.conftest import make_tiny_model
from tests.test_trainer import both_agents_right, train_cooperative

EOS = 0


def rollout_of(agent, prompts: list[str], completions: list[list[int]], generations: int) -> Rollout:
    """A rollout of hand-written completions (token ids), right-padded with EOS."""
    texts, prompt_ids, prompt_mask = tokenize_prompts(agent, prompts)
    width = max(len(c) for c in completions)
    ids = torch.tensor([c + [EOS] * (width - len(c)) for c in completions])
    return Rollout(prompt_ids, prompt_mask, ids, completion_mask(ids, [EOS]), [""] * len(ids), texts, generations)


def update_agent(team, index, rollouts, advantages):
    """Agent ``index``'s experience of these rollouts, then its update (as a step makes them)."""
    return step.update_agent(team, index, build_experience(team, index, rollouts, advantages), NO_EXTRA_LOSS)


def team_of(agents, **config):
    args = MAGRPOConfig(num_agents=len(agents), autocast="no", rollout_dtype="same", max_new_tokens=4, **config)
    return prepare_team(agents, args)


def test_one_update_per_rollout_is_the_papers_update_bit_for_bit(tiny_tokenizer):
    """With num_iterations=1 the update is the paper's: one pass over the batch, -sum A * sum_t
    log pi / S, gradient clipping, one AdamW step; the trainer's weights equal a hand-rolled one's."""
    (agent,) = build_agents([(make_tiny_model(len(tiny_tokenizer), seed=3), tiny_tokenizer)], device="cpu")
    reference = copy.deepcopy(agent.model)
    team = team_of([agent], learning_rate=1e-2, share_prompt_in_update=False, max_grad_norm=0.05)
    rollout = rollout_of(agent, ["a b", "q"], [[2, 3, 0], [4, 5, 2, 3], [3, 0], [5, 5, 5]], generations=2)
    adv = torch.tensor([1.5, -0.5, 2.0, -3.0])
    figures = update_agent(team, 0, [rollout], [adv])

    optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.0)
    with scoring_mode(reference) as model:
        lp = completion_token_logprobs(
            model,
            rollout.prompt_ids.repeat_interleave(2, 0),
            rollout.prompt_mask.repeat_interleave(2, 0),
            rollout.completion_ids,
            rollout.completion_mask,
            1.0,
            128,
        )
        loss = policy_gradient_loss_sum(lp, rollout.completion_mask, adv) / 4
        loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(list(reference.parameters()), 0.05)
    optimizer.step()
    assert figures["loss"] == float(loss.detach()) and figures["grad_norm"] == float(norm) > 0.05  # the clip acted
    for (name, mine), theirs in zip(agent.model.named_parameters(), reference.parameters()):
        assert torch.equal(mine, theirs), name


def test_two_clipped_updates_per_rollout_learn_a_cooperative_task(tiny_agents, tmp_path):
    # from chance (< 0.2) to >= 0.9 in 40 steps (train_cooperative asserts both)
    _, history = train_cooperative(
        tiny_agents, tmp_path, num_iterations=2, epsilon=0.2, epsilon_high=0.28, max_steps=40
    )
    # the second update of a rollout is off-policy: its ratios move, and the clip holds some of them
    # (a step whose groups all tie has no signal, no update and no figures)
    ratios = [h[f"agent_{i}/ratio_mean"] for h in history for i in (0, 1) if f"agent_{i}/ratio_mean" in h]
    clipped = [h[f"agent_{i}/clip_fraction"] for h in history for i in (0, 1) if f"agent_{i}/clip_fraction" in h]
    assert len(ratios) >= 20 and all(0.8 < r < 1.2 for r in ratios) and any(r != 1.0 for r in ratios)
    assert max(clipped) > 0


def test_the_schedule_warms_up_and_decays_each_agents_own_rate(tiny_agents, tmp_path):
    args = MAGRPOConfig(
        learning_rate=[1e-3, 2e-3],
        lr_scheduler_type="linear",
        warmup_steps=2,
        num_generations=2,
        max_new_tokens=2,
        max_steps=6,
        output_dir=str(tmp_path),
        log_samples_steps=0,
        save_steps=0,
        save_minutes=0,
    )
    trainer = MAGRPOTrainer(
        agents=tiny_agents,
        reward_func=both_agents_right,
        train_dataset=[{"question": "q"}],
        formatters=[lambda item: item["question"]] * 2,
        args=args,
    )
    history = trainer.train(progress=False)
    # transformers' linear schedule: step / warmup during the warm-up, then (6 - step) / (6 - 2)
    factors = [0.0, 0.5, 1.0, 0.75, 0.5, 0.25]
    assert [h["agent_0/learning_rate"] for h in history] == [1e-3 * f for f in factors]
    assert [h["agent_1/learning_rate"] for h in history] == [2e-3 * f for f in factors]


def test_truncated_completions_leave_the_loss_and_its_normaliser(tiny_tokenizer):
    def agent():
        return build_agents([(make_tiny_model(len(tiny_tokenizer), seed=4), tiny_tokenizer)], device="cpu")[0]

    masked, alone = agent(), agent()
    # row 0 ends with EOS, row 1 hits max_new_tokens=3 without one
    both = rollout_of(masked, ["a b"], [[2, 3, 0], [4, 5, 2]], generations=2)
    assert counted_rows(masked, both, mask_truncated=True).tolist() == [True, False]
    assert counted_rows(masked, both, mask_truncated=False).tolist() == [True, True]
    update_agent(
        team_of([masked], mask_truncated_completions=True, learning_rate=1e-2), 0, [both], [torch.tensor([1.0, -1.0])]
    )
    only_ended = rollout_of(alone, ["a b"], [[2, 3, 0]], generations=1)
    update_agent(team_of([alone], learning_rate=1e-2), 0, [only_ended], [torch.tensor([1.0])])
    for mine, theirs in zip(masked.model.parameters(), alone.model.parameters()):
        assert torch.allclose(mine, theirs, rtol=0, atol=1e-7)
    # nothing ended: nothing to learn from, and the run says so
    cut = rollout_of(masked, ["a b"], [[4, 5, 2], [2, 3, 4]], generations=2)
    with pytest.warns(UserWarning, match="every completion of agent_0 reached max_new_tokens=4 without an end-of"):
        figures = update_agent(
            team_of([masked], mask_truncated_completions=True), 0, [cut], [torch.tensor([1.0, -1.0])]
        )
    assert figures == {"loss": 0.0, "grad_norm": 0.0}


def test_the_kl_term_is_zero_at_the_reference_and_pulls_a_moved_policy_back(tiny_tokenizer):
    (agent,) = build_agents([(make_tiny_model(len(tiny_tokenizer), seed=5), tiny_tokenizer)], device="cpu")
    # the k3 term itself: its gradient on these fixed samples descends their k3 (TRL's default
    # use_bias_correction_kl=True adds k3 * grad log pi, unbiased only for samples of the policy)
    team = team_of([agent], beta=1.0, learning_rate=1e-3, use_bias_correction_kl=False)
    initial = [p.detach().clone() for p in agent.model.parameters()]
    rollout = rollout_of(agent, ["a b", "q"], [[2, 3, 0], [4, 5, 2, 3], [3, 0], [5, 5, 5]], generations=2)
    no_signal = torch.zeros(4)
    # the policy is its reference: k3 is 0 and its gradient 0 to float32 rounding (the policy and
    # its frozen copy may round a log-prob's last bit differently: 1.2e-7 measured on a CPU with
    # AMX, exactly 0 on another), so AdamW moves no weight by more than its lr
    figures = update_agent(team, 0, [rollout], [no_signal])
    assert figures["kl"] == 0.0 and figures["grad_norm"] < 1e-6
    assert all((p - q).abs().max() <= 1e-3 * (1 + 1e-6) for p, q in zip(agent.model.parameters(), initial))
    with torch.no_grad():  # move the policy away; its frozen reference stays where it was
        agent.model.lm_head.weight.add_(
            0.2 * torch.randn(agent.model.lm_head.weight.shape, generator=torch.Generator().manual_seed(0))
        )
    kls = [update_agent(team, 0, [rollout], [no_signal])["kl"] for _ in range(5)]
    assert kls[0] > 0.01 and all(b < a for a, b in zip(kls, kls[1:])), kls
    assert all(torch.equal(p, q) for p, q in zip(agent.reference_model.parameters(), initial))


def test_a_lora_agents_reference_is_its_own_base_with_the_adapter_off(tiny_tokenizer):
    base = make_tiny_model(len(tiny_tokenizer), seed=6)
    (agent,) = build_agents([(base, tiny_tokenizer)], device="cpu", use_lora=True, lora_r=4)
    with torch.no_grad():  # LoRA starts at B = 0 (the base itself): give the adapter an effect
        for name, param in agent.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    team = team_of([agent], beta=1.0, learning_rate=0.0)
    assert agent.reference_model is None  # no copy: the base is the reference
    rollout = rollout_of(agent, ["a b"], [[2, 3, 0], [4, 5, 2, 3]], generations=2)
    figures = update_agent(team, 0, [rollout], [torch.zeros(2)])

    def logprobs(model):
        with torch.no_grad(), scoring_mode(model) as m:
            return completion_token_logprobs(
                m,
                *[t.repeat_interleave(2, 0) for t in (rollout.prompt_ids, rollout.prompt_mask)],
                rollout.completion_ids,
                rollout.completion_mask,
                1.0,
                128,
            )

    policy = logprobs(agent.model)
    with agent.model.disable_adapter():
        ref = logprobs(agent.model)
    expected = k3_kl(policy, ref)[rollout.completion_mask].double().mean().item()
    assert expected > 0.01 and figures["kl"] == pytest.approx(expected, rel=1e-5)


def test_the_entropy_options_run_through_the_update_and_adapt_the_coefficient(tiny_tokenizer):
    """top_entropy_quantile picks tokens by pi_old's entropies over the step; the adaptive bonus
    applies nothing at the first optimiser step (no entropy measured yet), then moves its
    coefficient by entropy_coef_delta after each step (up: the entropy is below the target)."""
    (agent,) = build_agents([(make_tiny_model(len(tiny_tokenizer), seed=7), tiny_tokenizer)], device="cpu")
    team = team_of(
        [agent],
        learning_rate=1e-3,
        num_iterations=2,
        top_entropy_quantile=0.5,
        entropy_coef=0.1,
        use_adaptive_entropy=True,
        entropy_target=100.0,
        update_micro_batch_size=2,
    )
    rollout = rollout_of(agent, ["a b", "q"], [[2, 3, 0], [4, 5, 2, 3], [3, 0], [5, 5, 5]], generations=2)
    experience = build_experience(team, 0, [rollout], [torch.tensor([1.5, -0.5, 0.0, -3.0])])
    # the zero-advantage completion stays: the quantile and the bonus count it
    assert sum(len(mb.advantages) for mb in experience.micro_batches) == 4
    kept = sum(int(mb.entropy_mask.sum()) for mb in experience.micro_batches)
    counted = sum(int(mb.completion_mask.sum()) for mb in experience.micro_batches)
    assert experience.entropy_tokens == kept and 0 < kept < counted and kept >= counted // 2
    figures = step.update_agent(team, 0, experience, NO_EXTRA_LOSS)
    control = team.entropy_controls[0]
    assert control.coef == pytest.approx(0.1 + 2 * 0.005) and 0 < control.last_entropy < 100
    assert 0 < figures["entropy_exact"] < 100


def test_sync_ref_model_mixes_the_policy_into_the_reference_every_tau_steps_and_checkpoints_keep_it(
    tiny_tokenizer, tmp_path
):
    from magrpo.checkpoint import load_checkpoint, save_checkpoint

    def agent():
        return build_agents([(make_tiny_model(len(tiny_tokenizer), seed=8), tiny_tokenizer)], device="cpu")[0]

    moved = agent()
    team = team_of([moved], beta=0.1, sync_ref_model=True, ref_model_sync_steps=2, ref_model_mixup_alpha=0.25)
    with torch.no_grad():  # the policy moves away from its reference
        for p in moved.model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    before = [p.detach().clone() for p in moved.reference_model.parameters()]
    team.after_step(1)  # not a multiple of ref_model_sync_steps: nothing moves
    assert all(torch.equal(p, q) for p, q in zip(moved.reference_model.parameters(), before))
    team.after_step(2)
    for ref, old, policy in zip(moved.reference_model.parameters(), before, moved.model.parameters()):
        assert torch.allclose(ref, 0.25 * policy + 0.75 * old, rtol=0, atol=1e-7)
    save_checkpoint(tmp_path / "step-2", agents=[moved], optimizers=team.optimizers, trainer_state={"step": 2},
                    config=team.args)  # fmt: skip
    resumed = agent()
    resumed_team = team_of([resumed], beta=0.1, sync_ref_model=True, ref_model_sync_steps=2)
    load_checkpoint(tmp_path / "step-2", agents=[resumed], optimizers=resumed_team.optimizers)
    for mine, theirs in zip(resumed.reference_model.parameters(), moved.reference_model.parameters()):
        assert torch.equal(mine, theirs)


def test_trls_completion_figures_count_lengths_cut_completions_and_tied_groups(tiny_tokenizer):
    from magrpo.step_metrics import completion_figures, merged_completion_figures, zero_reward_std

    (agent,) = build_agents([(make_tiny_model(len(tiny_tokenizer), seed=9), tiny_tokenizer)], device="cpu")
    # 3 tokens up to its EOS; 4 tokens without one: cut at max_new_tokens
    rollout = rollout_of(agent, ["a b"], [[2, 3, 0], [4, 5, 2, 3]], generations=2)
    assert completion_figures(agent, [rollout]) == (7.0, 1.0, 2)
    assert merged_completion_figures([(7.0, 1.0, 2), (3.0, 0.0, 2)]) == {
        "completions/mean_length": 2.5,
        "completions/clipped_ratio": 0.25,
    }
    assert zero_reward_std(torch.tensor([[1.0, 1.0], [0.0, 1.0]])).tolist() == [True, False]


def test_normalize_then_sum_learns_from_each_functions_values_normalised_per_node(tiny_tokenizer):
    from types import SimpleNamespace

    from magrpo.envs.base import StepResult
    from magrpo.errors import ConfigError
    from magrpo.prepare import build_env_factory

    (agent,) = build_agents([(make_tiny_model(len(tiny_tokenizer), seed=10), tiny_tokenizer)], device="cpu")
    team = team_of([agent], multi_objective_aggregation="normalize_then_sum")
    assert team.learning_rewards([]) is None  # no reward functions named: the turns' own rewards

    def result(f, g):
        return StepResult({}, {"agent_0": f - g}, {}, {}, {"agent_0": {"reward/f": f, "reward/g": g}})

    # one node of two joint actions: f = [1, 3] -> z = [-1, 1] / (sqrt(2) + 1e-4); g ties -> z = 0
    team.reward_parts = [("f", 1.0), ("g", -1.0)]
    (rewards,) = team.learning_rewards([SimpleNamespace(results=[[result(1.0, 5.0), result(3.0, 5.0)]])])
    z = 1 / (2**0.5 + 1e-4)
    assert rewards[0].tolist() == pytest.approx([-z, z], rel=1e-12)
    args = MAGRPOConfig(num_agents=1, multi_objective_aggregation="normalize_then_sum")
    with pytest.raises(ConfigError, match="normalize_then_sum' normalises each reward function's values: give"):
        build_env_factory(args, ["agent_0"], reward_func=None, scorer=lambda **k: [], formatters=[str],
                          env_factory=None, reward_weights=None, feedback=None, is_solved=None, agent_roles=None)  # fmt: skip
    factory = build_env_factory(args, ["agent_0"], reward_func=[len, abs], scorer=None, formatters=[str],
                                env_factory=None, reward_weights=[1.0, 0.5], feedback=None, is_solved=None,
                                agent_roles=None)  # fmt: skip
    assert factory.reward_parts == [("len", 1.0), ("abs", 0.5)]
