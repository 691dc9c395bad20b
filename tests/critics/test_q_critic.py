"""Q critics (critic_type="q"): each joint action of a node valued with the observation, toward
its own return; A = Q(s, a_j) - the mean Q of the node's joint actions. Exact values by hand
from the models' hidden states, the exact token ids a hosted head reads, TD(lambda) bootstrapping
from the mean Q of the next node, and a Q critic explaining returns that a V critic cannot."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from magrpo import ConfigError, MAGRPOConfig
from magrpo.critics.critic import joint_observation, packed_left
from magrpo.critics.targets import q_advantages
from magrpo.feedback import CallableFeedback
from tests.conftest import letter_count_reward, save_tiny_model
from tests.critics.test_critic_training import critic_trainer, random_heads, spy_on_updates, values_by_hand
from tests.test_trainer import train_cooperative


def test_packing_moves_the_padding_between_prompt_and_completion_to_the_left():
    prompt_ids = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10]])
    prompt_mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    completion_ids = torch.tensor([[11, 12, 0], [13, 0, 0]])
    completion_mask = torch.tensor([[True, True, False], [True, False, False]])
    ids, mask = packed_left(prompt_ids, prompt_mask, completion_ids, completion_mask)
    assert ids.tolist() == [[0, 0, 0, 5, 6, 11, 12], [0, 0, 7, 8, 9, 10, 13]]
    assert mask.tolist() == [[0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1]]
    assert mask.dtype == prompt_mask.dtype


def test_q_advantages_are_each_q_less_the_mean_q_of_its_node():
    q = torch.tensor([[1.0, 3.0], [-2.0, 0.5]])
    assert q_advantages(q).tolist() == [-1.0, 1.0, -1.25, 1.25]
    with pytest.raises(ValueError, match=r"J >= 2"):
        q_advantages(torch.ones(3, 1))


def test_a_hosted_iac_q_critic_values_each_agents_own_prompt_and_completion_tokens(tiny_agents, tmp_path):
    trainer = critic_trainer(tiny_agents, tmp_path, algorithm="iac", critic_type="q", batch_size=2)
    random_heads(trainer)
    models, heads = [copy.deepcopy(a.model) for a in tiny_agents], [copy.deepcopy(c.head) for c in trainer.team.critics]
    seen = spy_on_updates(trainer)
    trainer.train(progress=False)
    rewards = torch.tensor(
        letter_count_reward(completions=list(zip(seen[0]["rollouts"][0].texts, seen[1]["rollouts"][0].texts))),
        dtype=torch.float64,
    )
    for i in range(2):
        (rollout,) = seen[i]["rollouts"]
        batch = seen[i]["critic"]
        ids, mask = batch.prompt_ids[0], batch.prompt_mask[0]
        assert ids.shape[0] == 4  # 2 nodes x 2 joint actions, row p * J + j
        for row in range(4):
            p = row // 2  # aligned: joint action j is every agent's completion j
            prompt = rollout.prompt_ids[p][rollout.prompt_mask[p].bool()]
            completion = rollout.completion_ids[row][rollout.completion_mask[row]]
            assert ids[row][mask[row].bool()].tolist() == prompt.tolist() + completion.tolist()
        q = values_by_hand(models[i], heads[i], ids, mask)
        torch.testing.assert_close(batch.old_values[0].double(), q, rtol=0, atol=1e-5)
        torch.testing.assert_close(batch.targets[0].reshape(-1).double(), rewards)
        expected = (q.view(2, 2) - q.view(2, 2).mean(1, keepdim=True)).reshape(-1)
        (advantages,) = seen[i]["advantages"]
        torch.testing.assert_close(advantages, expected, rtol=0, atol=1e-5)
        assert advantages.abs().max() > 1e-3
    assert not torch.allclose(seen[0]["advantages"][0], seen[1]["advantages"][0])


def test_a_maac_q_critic_bootstraps_td_lambda_from_the_mean_q_of_the_next_node(tiny_agents, tmp_path):
    lam, gamma = 0.5, 0.9
    feedback = CallableFeedback(lambda request: ("more a", "more b"))
    trainer = critic_trainer(
        tiny_agents,
        tmp_path,
        feedback=feedback,
        algorithm="maac",
        critic_type="q",
        num_turns=2,
        critic_lambda=lam,
        discount=gamma,
    )
    random_heads(trainer)
    (critic,) = trainer.team.critics
    model, head = copy.deepcopy(tiny_agents[0].model), copy.deepcopy(critic.head)
    seen = spy_on_updates(trainer)
    trainer.train(progress=False)
    batch = seen[0]["critic"]
    tok = tiny_agents[0].tokenizer
    # the joint text: each agent's observation followed by its completion in the joint action
    first_turn = [seen[i]["rollouts"][0] for i in range(2)]
    for row, ids in enumerate(batch.prompt_ids[0]):
        p, j = divmod(row, 2)
        text = joint_observation(
            ["agent_0", "agent_1"], [r.prompts[p] for r in first_turn], [r.completion(p, j) for r in first_turn]
        )
        assert text == (
            f"[agent_0]\n{first_turn[0].prompts[p]}\n\n[agent_1]\n{first_turn[1].prompts[p]}\n\n"
            f"[agent_0 action]\n{first_turn[0].completion(p, j)}\n\n[agent_1 action]\n{first_turn[1].completion(p, j)}"
        )
        assert ids[batch.prompt_mask[0][row].bool()].tolist() == tok(text, add_special_tokens=False)["input_ids"]
    q = [values_by_hand(model, head, ids, mask) for ids, mask in zip(batch.prompt_ids, batch.prompt_mask)]
    for mine, old in zip(q, batch.old_values):
        torch.testing.assert_close(old.double(), mine, rtol=0, atol=1e-5)
    first, second = (t.double().reshape(-1) for t in batch.targets)
    rewards = [
        letter_count_reward(completions=list(zip(*(r.texts for r in (seen[0]["rollouts"][t], seen[1]["rollouts"][t])))))
        for t in range(2)
    ]
    torch.testing.assert_close(second, torch.tensor(rewards[1], dtype=torch.float64))
    for row in range(4):  # full expansion: joint action `row` of turn 1 is node `row` of turn 2
        child_q = q[1].view(4, 2)[row].mean()
        child_return = second.view(4, 2)[row].mean()
        expected = rewards[0][row] + gamma * ((1 - lam) * child_q + lam * child_return)
        assert math.isclose(float(first[row]), float(expected), abs_tol=1e-5)
    for t in range(2):  # every agent's advantages from the one critic's Q
        torch.testing.assert_close(seen[0]["advantages"][t], seen[1]["advantages"][t], rtol=0, atol=0)
        nodes = q[t].view(-1, 2)
        torch.testing.assert_close(
            seen[0]["advantages"][t], (nodes - nodes.mean(1, keepdim=True)).reshape(-1), rtol=0, atol=1e-5
        )


def action_pays(*, completions, **_):
    """The return is fixed by the first agent's action alone: the a's it wrote."""
    return [float(c0.count("a")) for c0, _ in completions]


@pytest.mark.long
@pytest.mark.parametrize("critic_type", ["v", "q"])
def test_a_q_critic_explains_returns_that_hang_on_the_action_where_a_v_critic_cannot(
    tiny_agents, tmp_path, critic_type
):
    # frozen actors (learning rate 0), one prompt: the returns of a step spread by the actions
    # alone. A V critic values the step's one observation, so it explains none of that spread
    # (explained variance exactly 0, NaN where the returns do not vary); a Q critic, a model of its
    # own reading the joint action, learns to count the a's. The V critic's zero holds at every
    # step by construction, so a few steps show it; the Q critic needs the steps to learn
    critic_dir = save_tiny_model(tmp_path / "critic-model", seed=9, hidden=48)
    trainer = critic_trainer(
        tiny_agents,
        tmp_path / "run",
        reward=action_pays,
        items=[{"q": "q"}],
        algorithm="maac",
        critic_type=critic_type,
        critic_model=critic_dir,
        num_generations=16,
        batch_size=1,
        max_new_tokens=3,
        max_steps=100 if critic_type == "q" else 10,
        learning_rate=0.0,
        critic_learning_rate=3e-3,
    )
    history = trainer.train(progress=False)
    explained = [h["team_critic/explained_variance"] for h in history]
    print(f"critic_type={critic_type}: explained variance every 5th step", [round(e, 3) for e in explained[::5]])
    if critic_type == "v":
        assert all(e == 0.0 or math.isnan(e) for e in explained)
    else:
        late = [e for e in explained[-20:] if not math.isnan(e)]
        print(f"mean over the last 20 steps {sum(late) / len(late):.3f}")
        assert len(late) >= 15 and sum(late) / len(late) > 0.3


@pytest.mark.long
def test_iac_q_critics_learn_the_cooperative_task(tiny_agents, tmp_path):
    # the MAGRPO learning test's task (chance about 1/36, 0.9 at the end): each agent's Q critic
    # on its own model reads its prompt and its completion's tokens
    trainer, history = train_cooperative(
        tiny_agents,
        tmp_path,
        algorithm="iac",
        critic_type="q",
        num_generations=4,
        max_steps=100,
        critic_learning_rate=1e-2,
    )
    value = sum(h["agent_0_critic/value_mean"] for h in history[-5:]) / 5
    print(f"iac q: the first critic's mean Q over the last 5 steps {value:.3f}")
    assert value > 0.5
    assert trainer.evaluate()["reward"] == 1.0


@pytest.mark.parametrize(
    "config,message",
    [
        (dict(algorithm="iac", critic_type="q", num_generations=1), "critic_type='q' with num_generations=1"),
        (dict(critic_type="q"), "critic_type='q' set up a critic, which algorithm='magrpo' has none of"),
        (dict(algorithm="iac", critic_type="w"), "critic_type='w' is not valid; choose one of 'v', 'q'"),
    ],
)
def test_bad_q_critic_settings_are_named(config, message):
    with pytest.raises(ConfigError, match=message):
        MAGRPOConfig(**config)
