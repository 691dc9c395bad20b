"""MADPO (magrpo.preference, docs/preference.md): a node's pairs as hand-ranked, every agent's DPO
loss against the hand formula, the weights whose update has exactly the DPO loss's gradient, the
config's rules, and a team that learns from preferences alone."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from magrpo import ConfigError, MAGRPOConfig, MAGRPOTrainer
from magrpo.experience import build_experience, micro_batch_logprobs, scoring
from magrpo.logprobs import scoring_mode
from magrpo.models import build_agents
from magrpo.objective import policy_loss
from magrpo.preference import (
    completion_weights,
    dpo_gradient_coefficients,
    dpo_loss,
    dpo_margins,
    pair_logits,
    preference_pairs,
)
from magrpo.step import sample_tree
from magrpo.tree import turn_returns
from tests.conftest import make_tiny_model

# returns of one node's four joint actions: the ordered pairs with r_w > r_l, and their gaps
#   (0, 1): 1   (2, 1): 1   (3, 0): 2   (3, 1): 3   (3, 2): 2      (0, 2) tie: no pair
RETURNS = [1.0, 0.0, 1.0, 3.0]


def test_pairs_are_the_ordered_pairs_of_a_higher_and_a_lower_return():
    assert preference_pairs(RETURNS, "all", None) == [(0, 1), (2, 1), (3, 0), (3, 1), (3, 2)]
    # largest gap first, equal gaps in (w, l) order
    assert preference_pairs(RETURNS, "reward_gap", None) == [(3, 1), (3, 0), (3, 2), (0, 1), (2, 1)]
    assert preference_pairs(RETURNS, "reward_gap", 2) == [(3, 1), (3, 0)]
    assert preference_pairs(RETURNS, "all", 2) == preference_pairs(RETURNS, "all", None)  # "all" is uncut
    assert preference_pairs([0.5, 0.5, 0.5], "reward_gap", None) == []  # ties make none
    drawn = preference_pairs(RETURNS, "random", 3, torch.Generator().manual_seed(5))
    again = preference_pairs(RETURNS, "random", 3, torch.Generator().manual_seed(5))
    assert drawn == again and len(drawn) == 3 and set(drawn) < set(preference_pairs(RETURNS, "all", None))


def test_dpo_margins_and_losses_are_the_hand_formulas():
    # two agents, two pairs; summed log-probs of winner and loser, policy and reference
    pw = torch.tensor([[-1.5, -3.0], [-2.0, -0.5]], dtype=torch.float64)
    pl = torch.tensor([[-2.0, -2.5], [-1.0, -0.75]], dtype=torch.float64)
    rw = torch.tensor([[-1.7, -2.0], [-2.5, -1.0]], dtype=torch.float64)
    rl = torch.tensor([[-1.6, -2.0], [-1.0, -1.0]], dtype=torch.float64)
    margins = dpo_margins(pw, pl, rw, rl)
    # (pw - rw) - (pl - rl), by hand
    hand = [[0.2 - (-0.4), -1.0 - (-0.5)], [0.5 - 0.0, 0.5 - 0.25]]
    exact(margins, hand)
    assert torch.equal(dpo_margins(pw, pl), pw - pl)  # no reference: the policy's alone
    beta = 0.1
    z = [hand[0][0] + hand[1][0], hand[0][1] + hand[1][1]]  # the team's margin: every agent's the same
    joint = pair_logits(margins, "joint")
    exact(joint, [z, z])
    assert torch.equal(pair_logits(margins, "own"), margins)
    exact(dpo_loss(joint, beta), [[math.log1p(math.exp(-beta * v)) for v in z]] * 2)
    exact(dpo_gradient_coefficients(joint, beta), [[beta / (1 + math.exp(beta * v)) for v in z]] * 2)


def exact(got: torch.Tensor, hand: list) -> None:
    """float64 against the hand formula, to the last bits of rounding."""
    torch.testing.assert_close(got, torch.tensor(hand, dtype=torch.float64), rtol=1e-15, atol=1e-15)


def test_completion_weights_are_each_rows_signed_sum():
    pairs = [(3, 1), (3, 0), (0, 1)]
    c = torch.tensor([0.25, 0.5, 0.125], dtype=torch.float64)
    w = completion_weights(pairs, c, num_rows=5, scale=2.0)
    # row 0 wins (0, 1) and loses (3, 0); row 1 loses twice; row 3 wins twice; rows 2, 4 in none
    assert w.tolist() == [2 * (0.125 - 0.5), -2 * (0.25 + 0.125), 0.0, 2 * (0.25 + 0.5), 0.0]


def team_trainer(agents, tmp_path, reward, items=({"question": "q"}, {"question": "a b"}), **config) -> MAGRPOTrainer:
    """A MADPO trainer of ``agents`` (unless ``config`` names another algorithm) on ``items``, the
    first held out for evaluation too."""
    args = MAGRPOConfig(
        **{
            "algorithm": "madpo",
            "num_generations": 4,
            "batch_size": 2,
            "max_new_tokens": 3,
            "learning_rate": 3e-3,
            "max_steps": 1,
            "seed": 0,
            "output_dir": str(tmp_path),
            "log_samples_steps": 0,
            **config,
        }
    )
    return MAGRPOTrainer(
        agents=agents,
        reward_func=reward,
        train_dataset=list(items),
        eval_dataset=list(items[:1]),
        formatters=[lambda item: item["question"]] * 2,
        args=args,
    )


#: the learning tests' items: one question, eight times (batch_size 4 draws four a step)
SAME_QUESTION = ({"question": "q"},) * 8


def a_count_reward(*, completions, **_):
    # graded and joint: pairs at almost every node
    return [float(c0.count("a") + c1.count("b")) for c0, c1 in completions]


@pytest.mark.parametrize(
    "preference_loss, preference_reference, lora",
    [("joint", "initial", False), ("own", "initial", False), ("joint", "none", False), ("joint", "initial", True)],
)
def test_the_update_has_exactly_the_gradient_of_the_mean_dpo_loss(
    tiny_tokenizer, tmp_path, preference_loss, preference_reference, lora
):
    """float64 agents: the step's update (advantages = the DPO weights, the unchanged policy loss)
    against autograd through the DPO loss itself, every agent's, on the same tree."""
    tok = tiny_tokenizer
    models = [(make_tiny_model(len(tok), seed=s).double(), tok) for s in (1, 2)]
    agents = build_agents(models, device="cpu", use_lora=lora, lora_r=4)
    beta = 0.7  # away from the default, so beta's place in the formula shows
    trainer = team_trainer(
        agents,
        tmp_path,
        a_count_reward,
        dpo_beta=beta,
        pair_selection="all",
        pairs_per_node=None,
        preference_loss=preference_loss,
        preference_reference=preference_reference,
    )
    team = trainer.team
    with torch.no_grad():  # the policy apart from its reference, so the reference's part shows
        for agent in agents:
            for p in agent.trainable_parameters():  # LoRA: the adapter alone (the base is the reference)
                p.add_(0.05 * torch.randn_like(p))
    envs = [trainer.env_factory(item) for item in trainer.train_items]
    turns = sample_tree(team, envs, 0).turns
    returns = turn_returns(turns, team.args.discount, team.args.num_turns)
    advantages, training = team.baseline(turns, returns)
    pairs = [
        (p * 4 + w, p * 4 + lo)
        for p in range(turns[0].num_nodes)
        for w, lo in preference_pairs(returns[0][p], "all", None)
    ]
    assert len(pairs) >= 4 and training.train()["preference"]["pairs"] == len(pairs)

    def summed(model, i):
        rollout = turns[0].rollouts[i]
        exp = build_experience(team, i, [rollout], [torch.ones(len(rollout.completion_ids))])
        return torch.cat(
            [
                (micro_batch_logprobs(model, mb, team.objectives[i]).double() * mb.completion_mask).sum(-1)
                for mb in exp.micro_batches
            ]
        )

    def summed_logprobs(i, rows, with_grad):
        with torch.set_grad_enabled(with_grad), scoring(agents[i], team.precision) as model:
            return summed(model, i)[rows]

    def reference_logprobs(i, rows):
        if preference_reference == "none":
            return torch.zeros(len(rows), dtype=torch.float64)
        agent = agents[i]  # the reference as the KL term takes it: a LoRA agent's base, a full agent's copy
        with torch.no_grad(), scoring(agent, team.precision), agent.as_reference() as ref, scoring_mode(ref) as model:
            return summed(model, i)[rows]

    winners, losers = torch.tensor([w for w, _ in pairs]), torch.tensor([lo for _, lo in pairs])
    for i in range(2):
        margins = []
        for j in range(2):
            pol = summed_logprobs(j, torch.arange(8), with_grad=(j == i))
            ref = reference_logprobs(j, torch.arange(8))
            m = (pol[winners] - ref[winners]) - (pol[losers] - ref[losers])
            margins.append(m if j == i else m.detach())
        z = margins[i] if preference_loss == "own" else margins[0] + margins[1]
        expected_loss = (-torch.nn.functional.logsigmoid(beta * z)).mean()
        params = agents[i].trainable_parameters()
        expected = torch.autograd.grad(expected_loss, params)
        # the weights by hand: +-beta sigmoid(-beta z) S / P, S = 8 completions, P pairs
        by_hand = completion_weights(pairs, beta * torch.sigmoid(-beta * z.detach()), 8, scale=8 / len(pairs))
        # the baseline's advantages: the same, rounded once to the update's float32
        torch.testing.assert_close(advantages[i][0].double(), by_hand, rtol=2**-23, atol=1e-15)
        # the update's own loss, as magrpo.step.update_agent takes it, with the float64 weights
        exp = build_experience(team, i, [turns[0].rollouts[i]], [by_hand])
        (mb,) = exp.micro_batches
        with scoring(agents[i], team.precision) as model:
            total, _ = policy_loss(
                team.objectives[i],
                micro_batch_logprobs(model, mb, team.objectives[i]),
                mb.completion_mask,
                by_hand[by_hand != 0],
                normaliser=exp.normaliser,
                **mb.loss_inputs(),
            )
        got = torch.autograd.grad(total, params)
        # the log-softmax is float32 by design (magrpo.logprobs), whatever the weights' dtype: the
        # two gradients agree to its rounding, relative to the gradient's own scale
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, rtol=0, atol=2**-20 * float(e.abs().max()))


@pytest.mark.parametrize(
    "override, named",
    [
        ({"num_iterations": 2}, "num_iterations=2"),
        ({"loss_type": "grpo"}, "loss_type='grpo'"),
        ({"mask_truncated_completions": True}, "mask_truncated_completions=True"),
        ({"top_entropy_quantile": 0.5}, "top_entropy_quantile=0.5"),
        ({"advantage_scaling": "std"}, "advantage_scaling='std'"),
        ({"num_generations": 1}, "num_generations=1"),
        ({"joint_mode": "cross"}, "joint_mode='cross'"),
        ({"pair_selection": "best"}, "pair_selection='best'"),
        ({"preference_loss": "team"}, "preference_loss='team'"),
        ({"preference_reference": "frozen"}, "preference_reference='frozen'"),
        ({"dpo_beta": 0.0}, "dpo_beta=0.0"),
        ({"pairs_per_node": 0}, "pairs_per_node=0"),
    ],
)
def test_settings_that_would_break_the_dpo_gradient_are_refused_by_name(override, named):
    with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace(")", r"\)")):
        MAGRPOConfig(algorithm="madpo", **override)


def test_preference_fields_without_madpo_are_refused():
    with pytest.raises(ConfigError, match="dpo_beta=0.5.*algorithm='madpo'"):
        MAGRPOConfig(dpo_beta=0.5)


def both_open_right(*, completions, **_):
    # the team's reward, 0 to 2: agent 0 opening with "a", agent 1 with "b"; the graded joint
    # reward makes pairs at most nodes from the start (chance: about 1/3)
    return [float(c0.split()[:1] == ["a"]) + float(c1.split()[:1] == ["b"]) for c0, c1 in completions]


def learn_both_open_right(agents, tmp_path, max_steps: int, **config) -> tuple[MAGRPOTrainer, float, float]:
    """A MADPO team trained on :func:`both_open_right`: the trainer, and the mean reward of its
    first 3 steps and of its last 5 (printed). The first step's policy is its reference (a frozen
    copy, whose kernels may round apart): every margin 0 up to float32 rounding, every loss log 2."""
    trainer = team_trainer(
        agents, tmp_path, both_open_right, SAME_QUESTION, num_generations=8, batch_size=4, max_steps=max_steps, **config
    )
    history = trainer.train(progress=False)
    first = sum(h["reward_mean"] for h in history[:3]) / 3
    last = sum(h["reward_mean"] for h in history[-5:]) / 5
    print(f"reward first 3 steps {first:.3f}, last 5 steps {last:.3f}")
    assert history[0]["preference/pairs"] > 0 and abs(history[0]["preference/margin"]) < 1e-6
    assert history[0]["preference/dpo_loss"] == pytest.approx(math.log(2), rel=1e-6)
    return trainer, first, last


def test_a_team_learns_from_preferences_alone(tiny_agents, tmp_path):
    """No advantage, no baseline: only which of two joint actions of a node did better."""
    trainer, first, last = learn_both_open_right(tiny_agents, tmp_path, max_steps=40)
    assert first < 0.6
    assert last >= 1.8
    assert trainer.evaluate()["reward"] == 2.0


def summarize_from_the_command_line(tmp_path, run: str, algorithm: str, *flags: str) -> tuple[list[dict], Path]:
    """``magrpo train --task summarize`` for 2 steps on a tiny model saved under ``tmp_path`` (once),
    with ``flags``; the steps' metrics rows, and the run folder ``tmp_path / run``."""
    from typer.testing import CliRunner

    from magrpo.cli import app
    from tests.conftest import make_tiny_tokenizer

    # a tiny model whose answers run long enough (EOS about 1 token in 15) for the summary's
    # length windows to pass in some joint actions and fail in others: pairs at most nodes
    model, data = tmp_path / "tiny", tmp_path / "items.jsonl"
    if not model.is_dir():
        tok = make_tiny_tokenizer()
        network = make_tiny_model(len(tok), seed=1)
        with torch.no_grad():
            network.lm_head.weight[0] = 0.0
            network.lm_head.weight[1:] *= 20.0
        network.save_pretrained(model)
        tok.save_pretrained(model)
        data.write_text("".join(json.dumps({"source": f"a b c {'q ' * i}"}) + "\n" for i in range(4)))
    run_dir = tmp_path / run
    result = CliRunner().invoke(
        app,
        ["train", "--task", "summarize", "--algorithm", algorithm, "--model", str(model), "--data", str(data),
         "--eval-fraction", "0.5", "--eval-items", "1", "--steps", "2", "-G", "6", "--max-new-tokens", "32",
         *flags, "--output-dir", str(run_dir), "--no-progress"],
        env={"COLUMNS": "400"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [row for row in rows if "step" in row and "reward_mean" in row]
    assert len(steps) == 2
    return steps, run_dir


@pytest.mark.parametrize("algorithm", ["madpo", "marlhf"])
def test_a_preference_algorithm_trains_the_summarize_task_from_the_command_line(tmp_path, algorithm):
    flag = "dpo_beta=0.2" if algorithm == "madpo" else "reward_model_steps=1"
    steps, run_dir = summarize_from_the_command_line(tmp_path, "run", algorithm, "--set", flag)
    if algorithm == "madpo":
        assert all(row["preference/pairs"] > 0 and math.isfinite(row["preference/dpo_loss"]) for row in steps)
    else:  # one step of the reward model on the first step's pairs, then MAGRPO on its rewards
        assert steps[0]["reward_model/pairs"] > 0 and math.isfinite(steps[0]["reward_model/bt_loss"])
        assert math.isfinite(steps[1]["reward_model/learnt_reward_mean"])
    import yaml

    config = yaml.safe_load((run_dir / "config.yaml").read_text())["config"]
    assert config["algorithm"] == algorithm
    assert (config["dpo_beta"], config["reward_model_steps"]) == ((0.2, 20) if algorithm == "madpo" else (0.1, 1))


@pytest.mark.parametrize("algorithm", ["madpo", "magrpo"])
def test_madpo_takes_no_sampler_correction_where_a_reduced_copy_samples(tiny_tokenizer, tmp_path, algorithm):
    """DPO's loss does not depend on who sampled the pair: a bf16 sampling copy leaves MADPO's
    weights as they are, where MAGRPO weights each token by pi / pi_sampler."""
    tok = tiny_tokenizer
    agents = build_agents([(make_tiny_model(len(tok), seed=s), tok) for s in (1, 2)], device="cpu")
    trainer = team_trainer(
        agents, tmp_path, a_count_reward, algorithm=algorithm, rollout_dtype="bfloat16", rollout_backend="fast"
    )
    team = trainer.team
    turns = sample_tree(team, [trainer.env_factory(item) for item in trainer.train_items], 0).turns
    returns = turn_returns(turns, team.args.discount, team.args.num_turns)
    advantages, _ = team.baseline(turns, returns)
    assert agents[0].sampling_copy is not None and turns[0].rollouts[0].token_logprobs is not None
    exp = build_experience(team, 0, [turns[0].rollouts[0]], advantages[0])
    assert exp.micro_batches
    corrected = [mb.sampler_logprobs is not None for mb in exp.micro_batches]
    assert corrected == [algorithm == "magrpo"] * len(corrected)
