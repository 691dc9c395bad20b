"""MADPO with a comparator (magrpo.comparator, docs/preference.md): the team's k-th joint action
against the comparator's k-th as hand-ranked, the update's gradient against autograd through the
DPO loss over both sides, the comparator's samples from the frozen initial policy, the config's
rules, and a team that learns to beat its frozen self."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from magrpo import ConfigError, MAGRPOConfig
from magrpo.comparator import comparator_pairs
from magrpo.experience import build_experience, micro_batch_logprobs, scoring
from magrpo.logprobs import scoring_mode
from magrpo.models import build_agents, save_agent
from magrpo.objective import policy_loss
from magrpo.preference import completion_weights
from magrpo.step import learn, sample_tree
from magrpo.tree import trained_rollouts, turn_returns
from tests.conftest import make_tiny_model
from tests.test_preference import a_count_reward, learn_both_open_right, summarize_from_the_command_line, team_trainer

# one node, G = 4: the team's returns and the comparator's, index by index
#   k = 0: the team's wins, gap 1, comparator 0    -> (0, 4)
#   k = 1: a tie: no pair
#   k = 2: the comparator's wins, gap 1, comparator 3 -> (6, 2)
#   k = 3: the team's wins, gap 2, comparator 1    -> (3, 7)
OWN, THEIRS = [1.0, 0.0, 2.0, 3.0], [0.0, 0.0, 3.0, 1.0]


def test_comparator_pairs_are_the_kth_against_the_kth():
    assert comparator_pairs(OWN, THEIRS, "all", None) == [(0, 4), (6, 2), (3, 7)]
    assert comparator_pairs(OWN, THEIRS, "all", 1) == [(0, 4), (6, 2), (3, 7)]  # "all" is uncut
    # the largest gap first, equal gaps in k order
    assert comparator_pairs(OWN, THEIRS, "reward_gap", None) == [(3, 7), (0, 4), (6, 2)]
    # CoMLRL's: the highest comparator reward first, then the largest gap
    assert comparator_pairs(OWN, THEIRS, "comparator_reward", None) == [(6, 2), (3, 7), (0, 4)]
    assert comparator_pairs(OWN, THEIRS, "comparator_reward", 2) == [(6, 2), (3, 7)]
    # equal comparator rewards: the larger gap first
    assert comparator_pairs([2.0, 5.0], [1.0, 1.0], "comparator_reward", None) == [(1, 3), (0, 2)]
    assert comparator_pairs([0.5, 0.5], [0.5, 0.5], "reward_gap", None) == []
    drawn = comparator_pairs(OWN, THEIRS, "random", 2, torch.Generator().manual_seed(3))
    again = comparator_pairs(OWN, THEIRS, "random", 2, torch.Generator().manual_seed(3))
    assert drawn == again and len(drawn) == 2 and set(drawn) < {(0, 4), (6, 2), (3, 7)}


def frozen_trainer(agents, tmp_path, reward=a_count_reward, items=({"question": "q"}, {"question": "a b"}), **config):
    return team_trainer(agents, tmp_path, reward, items, **{"preference_comparator": "frozen", **config})


def nudge(agents) -> None:
    """Move every policy off its initial weights (LoRA: the adapter alone), so the frozen side shows."""
    with torch.no_grad():
        for agent in agents:
            for p in agent.trainable_parameters():
                p.add_(0.05 * torch.randn_like(p))


@pytest.mark.parametrize("preference_reference, lora", [("initial", False), ("none", False), ("initial", True)])
def test_the_update_has_exactly_the_gradient_of_the_mean_dpo_loss_against_the_frozen_comparator(
    tiny_tokenizer, tmp_path, preference_reference, lora
):
    """float64 agents: both sides of every pair (the team's completion and the comparator's) carry
    the DPO weights; the step's update against autograd through the DPO loss of the pairs."""
    tok = tiny_tokenizer
    models = [(make_tiny_model(len(tok), seed=s).double(), tok) for s in (1, 2)]
    agents = build_agents(models, device="cpu", use_lora=lora, lora_r=4)
    beta = 0.7
    trainer = frozen_trainer(
        agents,
        tmp_path,
        dpo_beta=beta,
        pair_selection="all",
        preference_reference=preference_reference,
    )
    team = trainer.team
    torch.manual_seed(0)
    nudge(agents)
    envs = [trainer.env_factory(item) for item in trainer.train_items]
    turns = sample_tree(team, envs, 0).turns
    (turn,) = turns
    assert turn.comparator is not None and turn.comparator.rewards.shape == (2, 4)
    returns = turn_returns(turns, team.args.discount, team.args.num_turns)
    advantages, training = team.baseline(turns, returns)
    # rows of the two sides end to end: the team's p * 4 + k, the comparator's 8 + p * 4 + k
    pairs = [
        (p * 4 + w if w < 4 else 8 + p * 4 + w - 4, p * 4 + lo if lo < 4 else 8 + p * 4 + lo - 4)
        for p in range(2)
        for w, lo in comparator_pairs(returns[0][p], turn.comparator.rewards[p], "all", None)
    ]
    figures = training.train()["preference"]
    assert len(pairs) >= 2 and figures["pairs"] == len(pairs)
    assert figures["comparator_reward"] == pytest.approx(float(turn.comparator.rewards.mean()), rel=1e-12)
    assert any(w >= 8 for w, _ in pairs) or any(lo >= 8 for _, lo in pairs)

    def summed(model, i):  # [16]: the team's 8 completions, then the comparator's 8
        rollouts = trained_rollouts(turns, i)
        exp = build_experience(team, i, rollouts, [torch.ones(len(r.completion_ids)) for r in rollouts])
        return torch.cat(
            [
                (micro_batch_logprobs(model, mb, team.objectives[i]).double() * mb.completion_mask).sum(-1)
                for mb in exp.micro_batches
            ]
        )

    def policy_logprobs(i, with_grad):
        with torch.set_grad_enabled(with_grad), scoring(agents[i], team.precision) as model:
            return summed(model, i)

    def reference_logprobs(i):
        if preference_reference == "none":
            return torch.zeros(16, dtype=torch.float64)
        agent = agents[i]
        with torch.no_grad(), scoring(agent, team.precision), agent.as_reference() as ref, scoring_mode(ref) as model:
            return summed(model, i)

    winners, losers = torch.tensor([w for w, _ in pairs]), torch.tensor([lo for _, lo in pairs])
    for i in range(2):
        margins = []
        for j in range(2):
            pol, ref = policy_logprobs(j, with_grad=(j == i)), reference_logprobs(j)
            m = (pol[winners] - ref[winners]) - (pol[losers] - ref[losers])
            margins.append(m if j == i else m.detach())
        z = margins[0] + margins[1]
        expected_loss = (-torch.nn.functional.logsigmoid(beta * z)).mean()
        params = agents[i].trainable_parameters()
        expected = torch.autograd.grad(expected_loss, params)
        # the weights by hand: S = 16 completions (both sides), P pairs
        by_hand = completion_weights(pairs, beta * torch.sigmoid(-beta * z.detach()), 16, scale=16 / len(pairs))
        assert len(advantages[i]) == 2  # the team's turn, then the comparator's
        torch.testing.assert_close(torch.cat(advantages[i]).double(), by_hand, rtol=2**-23, atol=1e-15)
        exp = build_experience(team, i, trained_rollouts(turns, i), list(by_hand.split(8)))
        total = 0.0
        with scoring(agents[i], team.precision) as model:
            for mb in exp.micro_batches:
                loss, _ = policy_loss(
                    team.objectives[i],
                    micro_batch_logprobs(model, mb, team.objectives[i]),
                    mb.completion_mask,
                    mb.advantages.double(),
                    normaliser=exp.normaliser,
                    **mb.loss_inputs(),
                )
                total = total + loss
        got = torch.autograd.grad(total, params)
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, rtol=0, atol=2**-20 * float(e.abs().max()))


def far_apart(agents, seed: int) -> None:
    """Move every policy far off its weights, so two policies' log-probs cannot be confused."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for agent in agents:
            for p in agent.trainable_parameters():
                p.add_(0.5 * torch.randn_like(p))


@contextlib.contextmanager
def comparator_model(kind: str, agent, saved, precision):
    """The weights the comparator should sample with: the agent's reference, or the saved agent's."""
    if kind == "frozen":
        with scoring(agent, precision), agent.as_reference() as ref, scoring_mode(ref) as model:
            yield model
    else:
        with scoring(saved, precision) as model:
            yield model


@pytest.mark.parametrize("kind", ["frozen", "model"])
@pytest.mark.parametrize("lora", [False, True])
def test_the_comparator_samples_with_its_own_weights(tiny_tokenizer, tmp_path, kind, lora):
    """The comparator's sampling-time log-probs are its weights' (the frozen initial policy, or a
    team saved in a folder), not the moved policy's; the team's own are the policy's."""
    tok = tiny_tokenizer

    def team():
        return build_agents(
            [(make_tiny_model(len(tok), seed=s), tok) for s in (1, 2)], device="cpu", use_lora=lora, lora_r=4
        )

    saved = team()
    far_apart(saved, seed=1)
    for agent in saved:
        save_agent(agent, tmp_path / "saved" / agent.name)
    agents = team()
    setting = "frozen" if kind == "frozen" else f"model:{tmp_path / 'saved'}"
    trainer = frozen_trainer(agents, tmp_path / "run", preference_comparator=setting)
    team_ = trainer.team
    far_apart(agents, seed=2)
    envs = [trainer.env_factory(item) for item in trainer.train_items]
    sampled_tree = sample_tree(team_, envs, 0)
    (turn,) = sampled_tree.turns
    for i, agent in enumerate(agents):
        rollout, theirs = turn.rollouts[i], turn.comparator.rollouts[i]
        exp = build_experience(team_, i, [rollout, theirs], [torch.ones(len(rollout.completion_ids))] * 2)
        own_mb, their_mb = exp.micro_batches  # each side in one micro-batch
        objective = team_.objectives[i]
        with torch.no_grad():
            with scoring(agent, team_.precision) as model:
                policy = [micro_batch_logprobs(model, mb, objective) for mb in (own_mb, their_mb)]
            with comparator_model(kind, agent, saved[i], team_.precision) as model:
                expected = micro_batch_logprobs(model, their_mb, objective)

        def sampled(r, mb):
            return r.token_logprobs[:, : mb.completion_mask.shape[1]] * mb.completion_mask

        for got, mb, scored in [(rollout, own_mb, policy[0]), (theirs, their_mb, expected)]:
            torch.testing.assert_close(sampled(got, mb), scored * mb.completion_mask, rtol=0, atol=1e-4)
        # the comparator's log-probs are not the moved policy's
        assert (sampled(theirs, their_mb) - policy[1] * their_mb.completion_mask).abs().max() > 1e-2
    if kind == "model":  # read-only copies: the step's update leaves the saved team's weights as they were
        before = [{k: v.clone() for k, v in a.model.state_dict().items()} for a in team_.comparator.agents]
        learn(team_, sampled_tree)
        for a, weights in zip(team_.comparator.agents, before):
            assert all(torch.equal(v, weights[k]) for k, v in a.model.state_dict().items())


def test_a_saved_team_without_its_agents_folders_is_refused(tiny_agents, tmp_path):
    with pytest.raises(ConfigError, match="has no folder 'agent_0'"):
        frozen_trainer(tiny_agents, tmp_path, preference_comparator=f"model:{tmp_path / 'nowhere'}")


@pytest.mark.parametrize(
    "override, named",
    [
        ({"preference_comparator": "model"}, "preference_comparator='model' is not built yet"),
        ({"preference_comparator": "model: "}, "preference_comparator='model: ' names no folder"),
        ({"preference_comparator": "history"}, "preference_comparator='history' is not built yet"),
        ({"preference_comparator": "current_copy"}, "preference_comparator='current_copy' is not built yet"),
        ({"preference_comparator": "best"}, "preference_comparator='best'"),
        (
            {"pair_selection": "comparator_reward"},
            "pair_selection='comparator_reward'.*preference_comparator='current'",
        ),
        ({"preference_comparator": "frozen", "num_turns": 2}, "num_turns=2.*preference_comparator='frozen'"),
        (
            {"preference_comparator": "model:/runs/a", "num_turns": 2},
            "num_turns=2.*preference_comparator='model:/runs/a'",
        ),
        ({"preference_comparator": "frozen", "beta": 0.1}, "beta=0.1.*preference_comparator='frozen'"),
        ({"preference_comparator": "frozen", "entropy_coef": 0.01}, "entropy_coef=0.01"),
        ({"preference_comparator": "frozen", "rollout_backend": "vllm"}, "rollout_backend='vllm'"),
        (
            {"preference_comparator": "frozen", "multi_objective_aggregation": "normalize_then_sum"},
            "multi_objective_aggregation='normalize_then_sum'",
        ),
    ],
)
def test_comparator_settings_not_built_are_refused_by_name(override, named):
    with pytest.raises(ConfigError, match=named):
        MAGRPOConfig(algorithm="madpo", **override)
    MAGRPOConfig(algorithm="madpo", preference_comparator="frozen", pair_selection="comparator_reward")
    MAGRPOConfig(algorithm="madpo", preference_comparator="model:/runs/a")  # the folder is read when the team is


def test_a_comparator_without_madpo_is_refused():
    with pytest.raises(ConfigError, match="preference_comparator='frozen' is for algorithm='madpo'"):
        MAGRPOConfig(algorithm="marlhf", preference_comparator="frozen")


def test_a_team_learns_to_beat_its_frozen_self(tiny_agents, tmp_path):
    """Pairs only of the team's k-th against the frozen initial policy's k-th: the team moves away
    from where it started, towards the better joint actions."""
    # its first step's policy is the comparator and the reference: both sides' margins 0
    _, first, last = learn_both_open_right(tiny_agents, tmp_path, max_steps=30, preference_comparator="frozen")
    assert first < 0.6
    assert last >= 1.5


def test_a_team_trains_against_its_frozen_self_then_against_that_run_from_the_command_line(tmp_path):
    """summarize from the CLI: a run against the frozen initial team, then one against the first
    run's saved team (its final folder), with CoMLRL's comparator_reward selection."""
    flags = ["--set", "preference_comparator=frozen", "--set", "pair_selection=comparator_reward"]
    steps, first_run = summarize_from_the_command_line(tmp_path, "frozen", "madpo", *flags)
    for row in steps:
        assert row["preference/pairs"] > 0 and math.isfinite(row["preference/dpo_loss"])
        assert math.isfinite(row["preference/comparator_reward"])
    saved = f"preference_comparator=model:{first_run / 'final'}"
    steps, _ = summarize_from_the_command_line(tmp_path, "against_saved", "madpo", "--set", saved)
    assert all(math.isfinite(row["preference/comparator_reward"]) for row in steps)
