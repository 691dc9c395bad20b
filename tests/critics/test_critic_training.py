"""IAC and MAAC in the trainer: the advantages are the tree's returns less the critic's value of
each node, computed by hand from the models' hidden states (one turn, and two turns with TD(lambda)
targets); MAAC's one critic reads every agent's observation; the value loss trains the heads at
their own rate; a critic's explained variance rises on a task built for it; both algorithms
learn a cooperative task from one sample per item; bad settings stop before any compute."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import pytest
import torch

from magrpo import ConfigError, MAGRPOConfig, MAGRPOTrainer
from magrpo.critics.critic import joint_observation
from magrpo.feedback import CallableFeedback
from magrpo.logprobs import position_ids_from_mask
from magrpo.models import build_agents
from tests.conftest import letter_count_reward, make_tiny_model, make_tiny_tokenizer, save_tiny_model
from tests.test_trainer import train_cooperative

ITEMS = [{"q": w} for w in ("q a", "b", "c q", "a b c")]


def critic_trainer(agents, tmp_path, reward=letter_count_reward, items=ITEMS, feedback=None, **config):
    args = MAGRPOConfig(
        **{
            "num_generations": 2,
            "batch_size": 2,
            "max_new_tokens": 3,
            "learning_rate": 1e-2,
            "max_steps": 1,
            "seed": 3,
            "output_dir": str(tmp_path),
            "log_samples_steps": 0,
            "save_steps": 0,
            "save_minutes": 0,
            "autocast": "no",
            "rollout_dtype": "same",
            **config,
        }
    )
    return MAGRPOTrainer(
        agents=agents,
        reward_func=reward,
        train_dataset=items,
        formatters=[lambda x: x["q"]] * 2,
        args=args,
        feedback=feedback,
    )


class LastStepSeen(Mapping):
    """What each agent's update was handed in the trainer's last step (``trainer.last_step``): its
    rollouts per turn, its advantages, and the batch of the critic whose head sits on its model
    (None: it hosts none), by agent index."""

    def __init__(self, trainer):
        self.trainer = trainer

    def _by_agent(self):
        out = self.trainer.last_step
        hosted = {b.critic.host: b for b in out.baseline_training.batches if b.critic.model is None}
        return {
            i: {
                "rollouts": [turn.rollouts[i] for turn in out.turns],
                "advantages": out.advantages[i],
                "critic": hosted.get(i),
            }
            for i in range(len(out.advantages))
        }

    def __getitem__(self, index):
        return self._by_agent()[index]

    def __iter__(self):
        return iter(self._by_agent())

    def __len__(self):
        return len(self._by_agent())


def spy_on_updates(trainer):
    """What each agent's update is handed, read after the trainer's last step."""
    return LastStepSeen(trainer)


def values_by_hand(model, head, ids, mask) -> torch.Tensor:
    """w . h + b, h the last layer's (normed) hidden state at each observation's last token."""
    with torch.no_grad():
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids_from_mask(mask),
            output_hidden_states=True,
        )
        hidden = out.hidden_states[-1][:, -1].double()
        return hidden @ head.score.weight.double()[0] + head.score.bias.double()[0]


def random_heads(trainer, seed=7):
    generator = torch.Generator().manual_seed(seed)
    for critic in trainer.team.critics:
        with torch.no_grad():
            critic.head.score.weight.copy_(torch.randn(critic.head.score.weight.shape, generator=generator))
            critic.head.score.bias.fill_(0.25)


def test_iac_advantages_are_the_rewards_less_each_agents_own_value_of_its_observation(tiny_agents, tmp_path):
    trainer = critic_trainer(tiny_agents, tmp_path, algorithm="iac", num_generations=1, batch_size=4)
    random_heads(trainer)
    assert [c.name for c in trainer.team.critics] == ["agent_0_critic", "agent_1_critic"]
    # the models and heads as they valued the step (the update moves them)
    models, heads = [copy.deepcopy(a.model) for a in tiny_agents], [copy.deepcopy(c.head) for c in trainer.team.critics]
    seen = spy_on_updates(trainer)
    trainer.train(progress=False)
    for i in range(2):
        (rollout,) = seen[i]["rollouts"]
        (advantages,) = seen[i]["advantages"]
        values = values_by_hand(models[i], heads[i], rollout.prompt_ids, rollout.prompt_mask)
        rewards = torch.tensor(
            letter_count_reward(completions=list(zip(seen[0]["rollouts"][0].texts, seen[1]["rollouts"][0].texts))),
            dtype=torch.float64,
        )
        assert advantages.shape == (4,) and rewards.abs().sum() > 0
        torch.testing.assert_close(advantages, rewards - values, rtol=0, atol=1e-5)
        torch.testing.assert_close(seen[i]["critic"].old_values[0].double(), values, rtol=0, atol=1e-5)
    # each agent's own critic: the two agents' values of the same items differ
    assert not torch.allclose(seen[0]["advantages"][0], seen[1]["advantages"][0])


def test_two_turn_td_lambda_returns_bootstrap_from_the_critics_value_of_the_next_node(tiny_agents, tmp_path):
    lam, gamma = 0.5, 0.9
    feedback = CallableFeedback(lambda request: ("more a", "more b"))
    trainer = critic_trainer(
        tiny_agents, tmp_path, feedback=feedback, algorithm="maac", num_turns=2, critic_lambda=lam, discount=gamma
    )
    random_heads(trainer)
    (critic,) = trainer.team.critics
    model, head = copy.deepcopy(tiny_agents[0].model), copy.deepcopy(critic.head)  # as they valued the step
    seen = spy_on_updates(trainer)
    trainer.train(progress=False)
    assert set(seen) == {0, 1} and seen[1]["critic"] is None  # one critic, hosted by the first agent
    batch = seen[0]["critic"]
    values = [values_by_hand(model, head, ids, mask) for ids, mask in zip(batch.prompt_ids, batch.prompt_mask)]
    for v, old in zip(values, batch.old_values):
        torch.testing.assert_close(old.double(), v, rtol=0, atol=1e-5)
    first, second = (r.double() for r in batch.targets)
    # turn 2 is the last: its returns are its rewards; turn 1 bootstraps from V(child) by lambda
    rewards = [
        letter_count_reward(completions=list(zip(*(r.texts for r in rollouts))))
        for rollouts in (
            [seen[0]["rollouts"][0], seen[1]["rollouts"][0]],
            [seen[0]["rollouts"][1], seen[1]["rollouts"][1]],
        )
    ]
    torch.testing.assert_close(second.reshape(-1), torch.tensor(rewards[1], dtype=torch.float64))
    children = 0
    for p in range(first.shape[0]):
        for j in range(first.shape[1]):
            child = 2 * p + j  # full expansion: every joint action of turn 1 is a node of turn 2
            future = (1 - lam) * values[1][child] + lam * second[child].mean()
            expected = rewards[0][2 * p + j] + gamma * future
            assert math.isclose(float(first[p, j]), float(expected), abs_tol=1e-5)
            children += 1
    assert children == 4
    # MAAC: the same advantages for both agents, A = R - V(node), at each turn
    for t in range(2):
        torch.testing.assert_close(seen[0]["advantages"][t], seen[1]["advantages"][t], rtol=0, atol=0)
        expected = (batch.targets[t].double() - values[t][:, None]).reshape(-1)
        torch.testing.assert_close(seen[0]["advantages"][t], expected, rtol=0, atol=1e-5)


def test_the_centralised_critic_reads_every_agents_observation(tiny_agents, tmp_path):
    trainer = critic_trainer(tiny_agents, tmp_path, algorithm="maac")
    seen = spy_on_updates(trainer)
    trainer.train(progress=False)
    batch = seen[0]["critic"]
    tok = tiny_agents[0].tokenizer
    for p, ids in enumerate(batch.prompt_ids[0]):
        prompts = [seen[i]["rollouts"][0].prompts[p] for i in range(2)]
        text = joint_observation(["agent_0", "agent_1"], prompts)
        assert text == f"[agent_0]\n{prompts[0]}\n\n[agent_1]\n{prompts[1]}"
        assert ids[batch.prompt_mask[0][p].bool()].tolist() == tok(text, add_special_tokens=False)["input_ids"]


def test_the_value_loss_trains_a_fresh_head_at_the_critic_rate_toward_the_mean_return(tiny_agents, tmp_path):
    # V = 0 at first: the bias's gradient is mean(V - R) = -mean(R), so Adam's first step moves it
    # by the critic rate toward the mean return, whatever the actor's rate
    rate = 0.02
    trainer = critic_trainer(tiny_agents, tmp_path, algorithm="iac", critic_learning_rate=rate, learning_rate=1e-4)
    seen = spy_on_updates(trainer)
    history = trainer.train(progress=False)
    for i, critic in enumerate(trainer.team.critics):
        mean_return = float(seen[i]["critic"].targets[0].mean())
        assert mean_return != 0
        assert math.isclose(critic.head.score.bias.item(), math.copysign(rate, mean_return), rel_tol=1e-4)
        groups = trainer.optimizers[i].param_groups
        assert [g["lr"] for g in groups] == [1e-4, rate]
        assert groups[1]["params"] == list(critic.head.parameters())
        # the figures: a fresh head values everything at 0, so its loss is 0.5 * mean(R^2)
        targets = seen[i]["critic"].targets[0]
        assert history[0][f"agent_{i}_critic/value_mean"] == 0.0
        assert math.isclose(history[0][f"agent_{i}_critic/value_loss"], float(0.5 * (targets**2).mean()), rel_tol=1e-5)
        assert history[0][f"agent_{i}_critic/explained_variance"] == 0.0


def observation_pays(*, completions, prompts, **_):
    # the return is fixed by the observation alone: 1 where it holds "a"
    return [float("a" in prompt[0]) for prompt in prompts]


def test_a_critic_learns_which_observations_pay_its_explained_variance_rises(tiny_agents, tmp_path):
    trainer = critic_trainer(
        tiny_agents,
        tmp_path,
        reward=observation_pays,
        algorithm="maac",
        num_generations=1,
        batch_size=4,
        max_steps=40,
        learning_rate=0.0,
        critic_learning_rate=0.05,
    )
    history = trainer.train(progress=False)
    explained = [h["team_critic/explained_variance"] for h in history]
    print("explained variance per step:", [round(e, 3) for e in explained[::5]])
    assert explained[0] == 0.0  # a fresh head values every observation at 0
    assert min(explained[-5:]) > 0.9


@pytest.mark.long
@pytest.mark.parametrize(
    "algorithm,config",
    [
        ("iac", dict(num_generations=1, max_steps=80, critic_learning_rate=1e-2)),
        ("maac", dict(num_generations=2, max_steps=60)),
    ],
)
def test_critic_baselines_learn_a_cooperative_task_from_few_samples(tiny_agents, tmp_path, algorithm, config):
    # the MAGRPO learning test's task (chance about 1/36, 0.9 at the end) with 1 or 2 samples per
    # item where MAGRPO takes 8 (IAC's one sample: 80 steps, a faster critic)
    trainer, history = train_cooperative(tiny_agents, tmp_path, algorithm=algorithm, **config)
    critic = "team_critic" if algorithm == "maac" else "agent_0_critic"
    value = sum(h[f"{critic}/value_mean"] for h in history[-5:]) / 5
    print(f"{algorithm}: the critic's mean value over the last 5 steps {value:.3f}")
    assert value > 0.5  # the critic followed the reward up
    assert trainer.evaluate()["reward"] == 1.0


def test_lora_agents_on_one_base_each_train_their_own_head_and_adapter(tmp_path):
    tok = make_tiny_tokenizer()
    base = make_tiny_model(len(tok), seed=3)
    agents = build_agents([(base, tok)] * 2, device="cpu", use_lora=True, lora_r=4)
    frozen = {k: v.detach().clone() for k, v in base.named_parameters() if "lora" not in k}
    adapters = [[p.detach().clone() for p in agent.trainable_parameters()] for agent in agents]
    trainer = critic_trainer(agents, tmp_path, algorithm="iac")
    trainer.train(progress=False)
    for agent, before, critic in zip(agents, adapters, trainer.team.critics):
        assert any(not torch.equal(b, p) for b, p in zip(before, agent.trainable_parameters()))
        assert critic.head.score.bias.item() != 0.0
    for k, v in base.named_parameters():
        if "lora" not in k:
            assert torch.equal(v, frozen[k]), k


def test_a_critic_model_of_its_own_trains_on_its_value_loss_alone_and_the_agents_never_see_it(tmp_path):
    # V = 0 at the first step, so A = R: the agents' update is MAGRPO's with no baseline, to the
    # bit, while the critic model (another width, its own tokenizer and optimiser) learns
    critic_dir = save_tiny_model(tmp_path / "critic-model", seed=9, hidden=48)
    runs = {}
    maac = dict(algorithm="maac", critic_model=critic_dir, critic_learning_rate=1e-2)
    for name, config in {
        "maac": maac,
        "raw returns": dict(advantage_baseline="none"),
        "maac, 2 steps": dict(maac, max_steps=2),
    }.items():
        tok = make_tiny_tokenizer()
        agents = build_agents([(make_tiny_model(len(tok), seed=s), tok) for s in (1, 2)], device="cpu")
        trainer = critic_trainer(agents, tmp_path / name, **config)
        seen = spy_on_updates(trainer)
        history = trainer.train(progress=False)
        runs[name] = (agents, trainer, seen, history)
    agents, trainer, seen, history = runs["maac"]
    (critic,) = trainer.team.critics
    assert all(s["critic"] is None for s in seen.values())  # no agent's update trains it
    for a, b in zip(agents, runs["raw returns"][0]):
        for (key, p), q in zip(a.model.named_parameters(), b.model.parameters()):
            assert torch.equal(p, q), key
    # the first step trains the head alone (through a zero head no gradient reaches the body),
    # the second the body too
    start = make_tiny_model(len(make_tiny_tokenizer()), seed=9, hidden=48).state_dict()
    for run, moves in (("maac", False), ("maac, 2 steps", True)):
        body = runs[run][1].team.critics[0].model.model.state_dict()
        moved = max((body[k] - v).abs().max().item() for k, v in start.items())
        assert (moved > 1e-3) if moves else moved == 0.0, (run, moved)
    assert critic.head.score.bias.item() != 0.0
    assert critic.optimizer.param_groups[0]["params"] == critic.parameters()
    assert history[0]["team_critic/learning_rate"] == 1e-2 and history[0]["team_critic/value_grad_norm"] > 0
    # its model is saved beside its head, and loads as any model
    from transformers import AutoModelForCausalLM

    final = tmp_path / "maac" / "final" / "team_critic"
    assert AutoModelForCausalLM.from_pretrained(final).config.hidden_size == 48
    assert (final / "value_head.safetensors").is_file()


def test_a_critic_models_values_through_its_own_tokenizer_are_every_agents_baseline(tiny_agents, tmp_path):
    critic_dir = save_tiny_model(tmp_path / "critic-model", seed=9, hidden=48)
    trainer = critic_trainer(tiny_agents, tmp_path / "run", algorithm="maac", critic_model=critic_dir)
    random_heads(trainer)
    (critic,) = trainer.team.critics
    model, head = copy.deepcopy(critic.model.model), copy.deepcopy(critic.head)  # as they valued the step
    seen = spy_on_updates(trainer)
    trainer.train(progress=False)
    rollouts = [seen[i]["rollouts"][0] for i in range(2)]
    texts = [joint_observation(["agent_0", "agent_1"], [r.prompts[p] for r in rollouts]) for p in range(2)]
    batch = critic.model.tokenizer(texts, return_tensors="pt", padding=True, padding_side="left")
    values = values_by_hand(model, head, batch["input_ids"], batch["attention_mask"])
    rewards = torch.tensor(
        letter_count_reward(completions=list(zip(*(r.texts for r in rollouts)))), dtype=torch.float64
    )
    expected = rewards - values.repeat_interleave(2)
    assert values.abs().min() > 0.1  # a value that matters, not a fresh head's 0
    for i in range(2):
        torch.testing.assert_close(seen[i]["advantages"][0], expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("micro_batch", [1, 16])
def test_the_value_loss_gradient_on_the_head_is_its_mean_error_whatever_the_micro_batches(
    tiny_agents, tmp_path, micro_batch
):
    # with plain SGD and no clipping the bias moves by exactly lr * coef * mean(R - V), V = 0 fresh
    trainer = critic_trainer(
        tiny_agents, tmp_path, algorithm="iac", batch_size=4, update_micro_batch_size=micro_batch, max_grad_norm=1e9
    )
    lr, coef = 0.1, trainer.args.value_loss_coef
    trainer.optimizers = [
        torch.optim.SGD([{"params": agent.trainable_parameters()}, {"params": list(critic.head.parameters())}], lr=lr)
        for agent, critic in zip(tiny_agents, trainer.team.critics)
    ]
    seen = spy_on_updates(trainer)
    trainer.train(progress=False)
    for i, critic in enumerate(trainer.team.critics):
        targets = seen[i]["critic"].targets[0]
        assert targets.shape == (4, 2) and targets.std() > 0
        assert math.isclose(critic.head.score.bias.item(), lr * coef * float(targets.mean()), rel_tol=1e-5)


@pytest.mark.parametrize(
    "config,message",
    [
        (dict(num_generations=1), "num_generations=1 with algorithm='magrpo': a group of one"),
        (dict(algorithm="iac", joint_mode="cross"), "joint_mode='cross' is for algorithm='magrpo'"),
        (dict(algorithm="maac", data_parallel="shard"), "data_parallel='shard' is for algorithm='magrpo'"),
        (dict(algorithm="ppo"), "algorithm='ppo' is not valid; choose one of 'magrpo', 'iac', 'maac'"),
        (dict(algorithm="iac", critic_lambda=1.5), "critic_lambda=1.5 is not valid; expected a number >= 0.0"),
        (dict(algorithm="iac", value_loss_coef=0), "value_loss_coef=0 is not valid"),
        (dict(algorithm="iac", critic_value_clip=0.0), "critic_value_clip=0.0 is not valid"),
        (dict(critic_model="default"), "which algorithm='magrpo' has none of: use algorithm='iac' or 'maac'"),
        (dict(algorithm="maac", advantage_scaling="std"), "shape the group baseline, which algorithm='maac' replaces"),
        (
            dict(algorithm="iac", num_generations=1, normalise_critic_advantages=True),
            "with one sample per step (num_generations=1, batch_size=1, one turn) centres",
        ),
        (dict(algorithm="iac", critic_use_lora=True), "critic_use_lora=True trains an adapter on the critic's own"),
    ],
)
def test_bad_critic_settings_are_named_before_any_compute(config, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        MAGRPOConfig(**config)


def test_an_optimiser_that_leaves_out_a_hosted_head_is_refused(tiny_agents, tmp_path):
    trainer = critic_trainer(tiny_agents, tmp_path, algorithm="maac")
    plain = [torch.optim.SGD(agent.trainable_parameters(), lr=0.1) for agent in tiny_agents]
    with pytest.raises(ConfigError, match="does not train the value head of team_critic that sits on its model"):
        trainer.optimizers = plain
    (critic,) = trainer.team.critics
    plain[0].add_param_group({"params": list(critic.head.parameters()), "lr": 1e-3})
    trainer.optimizers = plain
    assert trainer.optimizers[0] is plain[0]


def sequential_critic_trainer(agents, tmp_path, algorithm, **config):
    """critic_trainer's settings, the second agent answering after the first and shown its answer."""
    trainer = critic_trainer(agents, tmp_path, algorithm=algorithm, protocol="sequential", **config)
    return MAGRPOTrainer(
        agents=agents,
        reward_func=letter_count_reward,
        train_dataset=ITEMS,
        formatters=[lambda x: x["q"]] * 2,
        args=trainer.args,
        show_earlier_answers=lambda answers, item: "shown: " + answers[0],
    )


def test_iac_in_turns_values_each_agent_where_it_answered_the_later_one_after_each_earlier_answer(
    tiny_agents, tmp_path
):
    """protocol="sequential" (aligned, G = 2, 2 items): the first agent's critic values each node's
    prompt, the second agent's each prompt it answered, which holds the first agent's answer of
    that joint action; each agent's advantages are R - its own V, exactly."""
    trainer = sequential_critic_trainer(tiny_agents, tmp_path, "iac")
    random_heads(trainer)
    models, heads = [copy.deepcopy(a.model) for a in tiny_agents], [copy.deepcopy(c.head) for c in trainer.team.critics]
    seen = spy_on_updates(trainer)
    trainer.train(progress=False)
    (turn,) = trainer.last_step.turns
    first, second = turn.rollouts
    assert (first.num_prompts, second.num_prompts, turn.num_nodes, turn.num_joint) == (2, 4, 2, 2)
    for p in range(2):
        for j in range(2):
            row0, row1 = turn.joint_rows(p, j)
            assert second.prompts[row1].count("shown: " + first.texts[row0].strip()) == 1  # what it answered after
    rewards = torch.tensor(
        [letter_count_reward(completions=[turn.joint_completions(p, j)])[0] for p in range(2) for j in range(2)],
        dtype=torch.float64,
    )
    assert rewards.abs().sum() > 0
    node_values = values_by_hand(models[0], heads[0], first.prompt_ids, first.prompt_mask)
    context_values = values_by_hand(models[1], heads[1], second.prompt_ids, second.prompt_mask)
    torch.testing.assert_close(seen[0]["advantages"][0], rewards - node_values.repeat_interleave(2), rtol=0, atol=1e-5)
    torch.testing.assert_close(seen[1]["advantages"][0], rewards - context_values, rtol=0, atol=1e-5)
    assert seen[1]["critic"].targets[0].tolist() == [[r] for r in rewards.tolist()]  # each context's own return
    # the later agent's values differ between the contexts of one node: a baseline per earlier answer
    assert not torch.allclose(context_values[0], context_values[1])


def test_maac_in_turns_reads_every_agents_observation_before_anyone_answered(tiny_agents, tmp_path):
    trainer = sequential_critic_trainer(tiny_agents, tmp_path, "maac")
    random_heads(trainer)
    model, head = copy.deepcopy(tiny_agents[0].model), copy.deepcopy(trainer.team.critics[0].head)
    seen = spy_on_updates(trainer)
    trainer.train(progress=False)
    (turn,) = trainer.last_step.turns
    batch, tok = seen[0]["critic"], tiny_agents[0].tokenizer
    for p, ids in enumerate(batch.prompt_ids[0]):
        own = [agent.render(turn.observations[i][p])[0] for i, agent in enumerate(tiny_agents)]
        assert "shown: " not in own[1]  # the second agent's observation without the first's answer
        text = joint_observation(["agent_0", "agent_1"], own)
        assert ids[batch.prompt_mask[0][p].bool()].tolist() == tok(text, add_special_tokens=False)["input_ids"]
    values = values_by_hand(model, head, batch.prompt_ids[0], batch.prompt_mask[0])
    rewards = torch.tensor(
        [letter_count_reward(completions=[turn.joint_completions(p, j)])[0] for p in range(2) for j in range(2)],
        dtype=torch.float64,
    )
    for i in range(2):
        torch.testing.assert_close(seen[i]["advantages"][0], rewards - values.repeat_interleave(2), rtol=0, atol=1e-5)
