"""The sequential protocol: agent k answers after agents 0..k-1 of the same joint action and sees
their answers. Hand-built trees (scripted samplers) give exact prompts, joint actions and credit;
tiny random models show the prompts hold the very ids sampled before and are scored as sampled;
a team learns a task only the sequential protocol can solve."""

from __future__ import annotations

import pytest
import torch

from magrpo import MAGRPOConfig, MAGRPOTrainer, MultiAgentEnv, StepResult
from magrpo.baselines import GroupBaseline
from magrpo.envs.reward_env import RewardFunctionEnv
from magrpo.logprobs import completion_token_logprobs
from magrpo.sampling import Rollout, Sampler, SamplingSettings, make_sampler
from magrpo.tree import expand_tree, turn_returns

NAMES = ["agent_0", "agent_1"]


class Agent:  # expand_tree only needs a name from an agent when the sampler is scripted
    def __init__(self, name):
        self.name = name


class EchoSampler(Sampler):
    """Completion m of an observation is "<agent letter><m>" after the observation's last word, so
    every answer names what it answered; every prompt is recorded."""

    def __init__(self, num_generations):
        super().__init__(SamplingSettings(num_generations=num_generations, max_new_tokens=1, temperature=1.0))
        self.prompts: dict[str, list] = {}

    def sample(self, agent, observations, generator=None):
        G = self.settings.num_generations
        self.prompts.setdefault(agent.name, []).append(list(observations))
        texts = [f"{obs.split()[-1]}>{agent.name[-1]}{m}" for obs in observations for m in range(G)]
        P = len(observations)
        ids = torch.zeros(P * G, 1, dtype=torch.long)
        return Rollout(torch.zeros(P, 1, dtype=torch.long), torch.ones(P, 1), ids, ids == 0, texts, observations, G)


class DeciderEnv(MultiAgentEnv):
    """One turn. The reward is 1 where the first agent's answer ends in "1" (its choice decides
    everything); the later agents' answers add nothing."""

    def __init__(self, names):
        self.possible_agents = list(names)

    def reset(self, seed=None, options=None):
        return {n: "start" for n in self.possible_agents}, {n: {} for n in self.possible_agents}

    def step(self, actions):
        names = self.possible_agents
        reward = float(actions["agent_0"].endswith("1"))
        return StepResult(
            {n: "" for n in names},
            {n: reward for n in names},
            {n: True for n in names},
            {n: False for n in names},
            {n: {} for n in names},
        )


def sequential_tree(joint_mode, G=2, num_continuations=None, num_agents=2):
    """One turn of two items on :class:`DeciderEnv`, sampled by an :class:`EchoSampler`."""
    sampler = EchoSampler(G)
    names = [f"agent_{k}" for k in range(num_agents)]
    turns = expand_tree(
        [Agent(n) for n in names],
        [DeciderEnv(names), DeciderEnv(names)],
        sampler=sampler,
        joint_mode=joint_mode,
        protocol="sequential",
        num_continuations=num_continuations,
    )
    return turns, sampler


def test_a_cross_sequential_tree_continues_every_earlier_answer_g_times_and_shows_it():
    (turn,), sampler = sequential_tree("cross")
    # the second agent is asked once per answer of the first, at every node, in one batch
    assert sampler.prompts["agent_1"] == [
        [
            "start\n\nagent_0 answered:\nstart>00",
            "start\n\nagent_0 answered:\nstart>01",
            "start\n\nagent_0 answered:\nstart>00",
            "start\n\nagent_0 answered:\nstart>01",
        ]
    ]
    assert turn.joint_indices.tolist() == [[0, 0], [0, 1], [1, 2], [1, 3]]
    assert [turn.joint_completions(1, j) for j in range(4)] == [
        ("start>00", "start>00>10"),
        ("start>00", "start>00>11"),
        ("start>01", "start>01>10"),
        ("start>01", "start>01>11"),
    ]
    assert turn.joint_prompts(1, 3) == ("start", "start\n\nagent_0 answered:\nstart>01")
    assert turn.rewards.tolist() == [[0.0, 0.0, 1.0, 1.0]] * 2


def test_an_aligned_sequential_chain_continues_every_earlier_answer_once():
    (turn,), sampler = sequential_tree("aligned", G=3)
    assert turn.joint_indices.tolist() == [[0, 0], [1, 1], [2, 2]]
    assert [turn.joint_completions(0, g) for g in range(3)] == [(f"start>0{g}", f"start>0{g}>10") for g in range(3)]
    assert len(turn.rollouts[1].texts) == 6  # G per node, one per earlier answer


def test_three_agents_each_see_every_earlier_answer_of_their_joint_action():
    (turn,), sampler = sequential_tree("cross", G=2, num_continuations=2, num_agents=3)
    assert turn.num_joint == 8
    assert turn.joint_completions(0, 6) == ("start>01", "start>01>11", "start>01>11>20")
    assert turn.joint_prompts(0, 6)[2] == "start\n\nagent_0 answered:\nstart>01\n\nagent_1 answered:\nstart>01>11"


def test_the_counterfactual_credit_on_a_sampled_tree_blames_only_the_agent_that_chose():
    """The tree of the first test through returns and the baseline a run builds: the first
    agent's answer decides the reward. The group baseline credits the second agent for it; the
    counterfactual one gives the second agent nothing and the first agent all of it."""
    (turn,), _ = sequential_tree("cross")
    returns = turn_returns([turn], 0.9, 1)

    def advantages(credit):
        args = MAGRPOConfig(num_generations=2, protocol="sequential", joint_mode="cross", credit=credit)
        per_agent, _ = GroupBaseline.from_config(args)([turn], returns)
        return [a[0].tolist() for a in per_agent]

    assert advantages("group") == [[-0.5, 0.5] * 2, [-0.5, -0.5, 0.5, 0.5] * 2]
    assert advantages("counterfactual") == [[-1.0, 1.0] * 2, [0.0] * 8]


# ---------------------------------------------------------------------- tiny random models


def shown_after(answers, item):
    return answers[0]  # the first agent's answer, as the next paragraph of the second's prompt


def reward_env(item, scorer=lambda completions, **_: [{"reward": 0.0} for _ in completions]):
    return RewardFunctionEnv(
        item, [lambda x: x["q"]] * 2, scorer, NAMES, sequential=True, show_earlier_answers=shown_after
    )


@pytest.mark.parametrize("joint_mode", ["aligned", "cross"])
@pytest.mark.parametrize("backend", ["fast", "plain"])
def test_the_second_agents_prompt_holds_the_ids_the_first_agent_sampled_for_that_joint_action(
    tiny_agents, backend, joint_mode
):
    G = 3
    sampler = make_sampler(num_generations=G, max_new_tokens=4, temperature=1.0, backend=backend)
    torch.manual_seed(5)
    (turn,) = expand_tree(
        tiny_agents,
        [reward_env({"q": "q a"}), reward_env({"q": "b"})],
        sampler=sampler,
        joint_mode=joint_mode,
        protocol="sequential",
        item_keys=[0, 1],
    )
    first, second = turn.rollouts
    special = torch.tensor(tiny_agents[0].tokenizer.all_special_ids)  # a decoded answer drops them
    for p, question in enumerate(["q a", "b"]):
        for j in range(turn.num_joint):
            row0, row1 = turn.joint_rows(p, j)
            answer0, _ = turn.joint_completions(p, j)
            assert turn.joint_prompts(p, j) == (question, f"{question}\n\n{answer0}")
            # the ids: the question's, then exactly the first agent's sampled ids up to its end
            shown = row1 // second.num_generations
            prompt = second.prompt_ids[shown][second.prompt_mask[shown].bool()]
            kept = first.completion_ids[row0][first.completion_mask[row0]]
            kept = kept[~torch.isin(kept, special)]
            assert prompt.tolist() == tiny_agents[1].tokenizer(question)["input_ids"] + kept.tolist()
    # every completion of the second agent continues its own prompt: G continuations per answer (cross), 1 (aligned)
    assert second.num_generations == (G if joint_mode == "cross" else 1)
    assert len(second.texts) == 2 * G * second.num_generations


def test_the_update_scores_the_second_agents_ids_exactly_as_sampled(tiny_agents):
    """The fast sampler's sampling-time log-probs of the second agent, whose prompts hold the
    first agent's answers, equal a full forward pass over the prompt and the sampled ids."""
    sampler = make_sampler(num_generations=2, max_new_tokens=4, temperature=0.9, backend="fast")
    torch.manual_seed(3)
    (turn,) = expand_tree(
        tiny_agents, [reward_env({"q": "q a"})], sampler=sampler, joint_mode="cross", protocol="sequential"
    )
    for agent, rollout in zip(tiny_agents, turn.rollouts):
        ours = completion_token_logprobs(
            agent.model,
            rollout.prompt_ids.repeat_interleave(rollout.num_generations, 0),
            rollout.prompt_mask.repeat_interleave(rollout.num_generations, 0),
            rollout.completion_ids,
            rollout.completion_mask,
            temperature=0.9,
        )
        m = rollout.completion_mask
        assert torch.allclose(ours[m], rollout.token_logprobs[m], atol=1e-5)


def test_an_items_samples_do_not_depend_on_the_items_beside_it(tiny_agents):
    sampler = make_sampler(num_generations=2, max_new_tokens=3, temperature=1.0, backend="fast")

    def texts(items, keys):
        (turn,) = expand_tree(
            tiny_agents,
            [reward_env(item) for item in items],
            sampler=sampler,
            joint_mode="cross",
            protocol="sequential",
            item_keys=keys,
            seed_source=torch.Generator().manual_seed(4),
        )
        return [turn.joint_completions(len(items) - 1, j) for j in range(turn.num_joint)]

    assert texts([{"q": "b"}], [7]) == texts([{"q": "q a"}, {"q": "b"}], [3, 7])


def test_after_feedback_an_agent_revises_from_what_it_saw_and_is_shown_the_new_earlier_answer():
    """Two turns: the second agent's history holds the prompt it answered (with the first
    agent's answer of that turn), its answer and its feedback; the next turn shows the first
    agent's new answer after the feedback."""
    from magrpo.feedback import CallableFeedback

    env = RewardFunctionEnv(
        {"q": "q"},
        [lambda x: x["q"]] * 2,
        lambda completions, **_: [{"reward": 0.0} for _ in completions],
        NAMES,
        feedback=CallableFeedback(lambda request: ("fix 0", "fix 1")),
        num_turns=2,
        sequential=True,
        show_earlier_answers=shown_after,
    )
    env.reset()
    result = env.step({"agent_0": "a b", "agent_1": "c"})
    revise = "Feedback on your last answer:\n{}\n\nWrite your improved answer."
    assert result.observations["agent_1"] == [
        {"role": "user", "content": "q\n\na b"},
        {"role": "assistant", "content": "c"},
        {"role": "user", "content": revise.format("fix 1")},
    ]
    assert result.observations["agent_0"][0] == {"role": "user", "content": "q"}
    shown = env.observe_after("agent_1", result.observations["agent_1"], {"agent_0": "b a"})
    assert shown[-1] == {"role": "user", "content": revise.format("fix 1") + "\n\nb a"}


# ---------------------------------------------------------------------- learning


def relay_reward(*, completions, secret, **_):
    """Half for the first agent naming the item's secret, half for the second agent repeating
    the first agent's word. Only the first agent sees the secret, so a second agent that cannot
    see its answer matches it at most 1 time in 3 (the reward at most 2/3)."""
    first_words = [[c.split()[:1] for c in joint] for joint in completions]
    return [0.5 * (w0 == [s]) + 0.5 * (w1 == w0 != []) for (w0, w1), s in zip(first_words, secret)]


@pytest.mark.parametrize(
    "joint_mode, credit, G", [("aligned", "group", 8), ("cross", "counterfactual", 4)], ids=["aligned", "cross"]
)
def test_a_second_agent_learns_to_repeat_the_answer_it_is_shown(tiny_agents, tmp_path, joint_mode, credit, G):
    items = [{"secret": s} for s in "abc"] * 2
    args = MAGRPOConfig(
        num_generations=G,
        batch_size=6,
        max_new_tokens=2,
        learning_rate=3e-3,
        max_steps=60,
        seed=0,
        protocol="sequential",
        joint_mode=joint_mode,
        credit=credit,
        output_dir=str(tmp_path),
        log_samples_steps=0,
    )
    trainer = MAGRPOTrainer(
        agents=tiny_agents,
        reward_func=relay_reward,
        train_dataset=items,
        eval_dataset=items[:3],
        formatters=[lambda item: "q " + item["secret"], lambda item: "q"],
        args=args,
        show_earlier_answers=shown_after,
    )
    history = trainer.train(progress=False)
    first = sum(h["reward_mean"] for h in history[:3]) / 3
    last = sum(h["reward_mean"] for h in history[-5:]) / 5
    print(f"reward first 3 steps {first:.3f}, last 5 steps {last:.3f}")
    assert first < 0.3 and last >= 0.9
    assert trainer.evaluate()["reward"] == 1.0  # greedy: the second agent repeats what it is shown


def test_every_updated_row_carries_the_counterfactual_advantage_of_what_it_sampled(tiny_agents, tmp_path):
    """One trainer step of a sequential cross tree (G = 3, M = 2): each agent's advantages, as its
    update received them, recomputed from the decoded texts alone."""
    from tests.test_trainer import paired_reward, paired_step

    G, M = 3, 2
    args = MAGRPOConfig(
        num_generations=G,
        batch_size=2,
        max_new_tokens=6,
        max_steps=1,
        protocol="sequential",
        joint_mode="cross",
        num_continuations=M,
        credit="counterfactual",
        output_dir=str(tmp_path),
        log_samples_steps=0,
    )
    trainer = paired_step(tiny_agents, args, show_earlier_answers=shown_after)
    (turn,) = trainer.last_step.turns
    first, second = (r.texts for r in turn.rollouts)

    def loo(values):
        return [v - (sum(values) - v) / (len(values) - 1) for v in values]

    want = [[], []]
    for p in range(2):
        rewards = [[paired_reward(first[p * G + g], second[p * G * M + g * M + m]) for m in range(M)] for g in range(G)]
        want[0] += loo([sum(r) / M for r in rewards])
        want[1] += [a for r in rewards for a in loo(r)]
    used = [trainer.last_step.advantages[i][0].tolist() for i in range(2)]
    assert used[0] == pytest.approx(want[0], abs=1e-9) and used[1] == pytest.approx(want[1], abs=1e-9)
    assert any(abs(w) > 0.1 for w in want[1])  # the check has teeth: the texts differ in reward
