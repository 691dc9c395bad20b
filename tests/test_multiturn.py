"""Multi-turn MAGRPO: exact returns and advantages on hand-built trees, planned costs, token-id
fidelity across turns, and learning that needs the first turn's feedback."""

from __future__ import annotations

import pytest
import torch

from magrpo import MAGRPOConfig, MAGRPOTrainer, MultiAgentEnv, StepResult
from magrpo.advantages import agent_advantages, tree_returns
from magrpo.episodes import default_sampler, expand_tree
from magrpo.plan import plan_rollout
from magrpo.rollout import Rollout

NAMES = ["agent_0", "agent_1"]


class ScriptedEnv(MultiAgentEnv):
    """Deterministic: the reward is a function of the turn, the joint action and its parent."""

    possible_agents = NAMES

    def __init__(self, reward_fn):
        self.reward_fn = reward_fn
        self.parent: tuple[str, str] | None = None
        self.turn = 0

    def reset(self, seed=None, options=None):
        return {n: "start" for n in NAMES}, {n: {} for n in NAMES}

    def step(self, actions):
        joint = (actions["agent_0"], actions["agent_1"])
        reward = float(self.reward_fn(self.turn, joint, self.parent))
        self.parent, self.turn = joint, self.turn + 1
        obs = {n: f"after {joint}" for n in NAMES}
        return StepResult(obs, {n: reward for n in NAMES}, {n: False for n in NAMES}, {n: False for n in NAMES}, {n: {"reward": reward} for n in NAMES})


class Agent:  # expand_tree only needs a name from an agent when the sampler is scripted
    def __init__(self, name):
        self.name = name


def scripted_sampler(num_generations):
    """Completion g at turn t is "x{g}" on the first turn and "y{g}" after."""

    def sample(agent, observations, generator=None):
        P = len(observations)
        texts = [("x" if obs == "start" else "y") + str(g) for obs in observations for g in range(num_generations)]
        ids = torch.zeros(P * num_generations, 1, dtype=torch.long)
        return Rollout(torch.zeros(P, 1, dtype=torch.long), torch.ones(P, 1), ids, ids == 0, texts, list(map(str, observations)), num_generations)

    return sample


def aligned_reward(turn, joint, parent):
    if turn == 0:
        return {"x0": 1.0, "x1": 3.0}[joint[0]]
    return {("x0", "y0"): 0.0, ("x0", "y1"): 2.0, ("x1", "y0"): 4.0, ("x1", "y1"): 8.0}[(parent[0], joint[0])]


def returns_and_advantages(turns, gamma, joint_mode):
    returns = tree_returns([t.rewards for t in turns], [t.children for t in turns], gamma)
    adv = [[agent_advantages(r, agent=i, num_agents=2, joint_mode=joint_mode).tolist() for i in range(2)] for r in returns]
    return [r.tolist() for r in returns], adv


def test_aligned_tree_returns_and_advantages_with_discount():
    turns = expand_tree([Agent(n) for n in NAMES], [ScriptedEnv(aligned_reward)], sample=scripted_sampler(2),
                        joint_mode="aligned", num_generations=2, num_turns=2)
    assert [t.rewards.tolist() for t in turns] == [[[1.0, 3.0]], [[0.0, 2.0], [4.0, 8.0]]]
    returns, adv = returns_and_advantages(turns, 0.5, "aligned")
    assert returns == [[[1 + 0.5 * 1.0, 3 + 0.5 * 6.0]], [[0.0, 2.0], [4.0, 8.0]]]
    assert adv[0] == [[-2.25, 2.25], [-2.25, 2.25]]  # both agents share the joint action's advantage
    assert adv[1] == [[-1.0, 1.0, -2.0, 2.0]] * 2  # siblings of each node form the groups


def test_early_termination_makes_a_leaf():
    turns = expand_tree([Agent(n) for n in NAMES], [ScriptedEnv(aligned_reward)], sample=scripted_sampler(2),
                        joint_mode="aligned", num_generations=2, num_turns=2, early_stop_reward=3.0)
    assert turns[0].finished.tolist() == [[False, True]]
    assert [t.rewards.tolist() for t in turns] == [[[1.0, 3.0]], [[0.0, 2.0]]]
    returns, adv = returns_and_advantages(turns, 0.5, "aligned")
    assert returns[0] == [[1.0 + 0.5 * 1.0, 3.0]]
    assert adv[0][0] == [-0.75, 0.75]


def cross_reward(turn, joint, parent):
    return 1.0 * (joint[0][1] == "1") + 2.0 * (joint[1][1] == "1")


def test_cross_tree_best_k_returns_and_advantages():
    turns = expand_tree([Agent(n) for n in NAMES], [ScriptedEnv(cross_reward)], sample=scripted_sampler(2),
                        joint_mode="cross", num_generations=2, num_turns=2, expand="best-k", expand_k=1)
    assert turns[0].rewards.tolist() == [[0.0, 2.0, 1.0, 3.0]]
    assert turns[0].children == {(0, 3): 0}  # only the best joint action continues
    returns, adv = returns_and_advantages(turns, 0.5, "cross")
    assert returns[0] == [[0.0, 2.0, 1.0, 3.0 + 0.5 * 1.5]]
    assert adv[0] == [[-0.6875, 0.6875], [-1.1875, 1.1875]]
    assert adv[1] == [[-0.5, 0.5], [-1.0, 1.0]]


def test_planned_costs():
    p = plan_rollout(num_agents=2, num_generations=4, num_turns=2, joint_mode="aligned", expand="full", expand_k=1, batch_size=1)
    assert (p.nodes_per_turn, p.generations_per_agent, p.reward_calls) == ((1, 4), 20, 20)
    p = plan_rollout(num_agents=2, num_generations=2, num_turns=2, joint_mode="cross", expand="full", expand_k=1, batch_size=3)
    assert (p.nodes_per_turn, p.generations_per_agent, p.reward_calls) == ((1, 4), 30, 60)
    p = plan_rollout(num_agents=2, num_generations=2, num_turns=3, joint_mode="cross", expand="best-k", expand_k=1, batch_size=1)
    assert (p.nodes_per_turn, p.generations_per_agent, p.reward_calls) == ((1, 1, 1), 6, 12)


class SecretEnv(MultiAgentEnv):
    """Turn 1 cannot know the secret; its feedback reveals it, so turn 2 can only be solved by
    reading the feedback. Reward: the fraction of agents whose first word is the secret."""

    possible_agents = NAMES

    def __init__(self, item):
        self.secret = item["secret"]

    def reset(self, seed=None, options=None):
        return {n: "q" for n in NAMES}, {n: {} for n in NAMES}

    def step(self, actions):
        hits = [actions[n].split()[:1] == [self.secret] for n in NAMES]
        reward = sum(hits) / len(hits)
        obs = {n: f"q {self.secret}" for n in NAMES}  # the feedback
        return StepResult(obs, {n: reward for n in NAMES}, {n: False for n in NAMES}, {n: False for n in NAMES}, {n: {"reward": reward} for n in NAMES})


def test_second_turn_learns_to_use_the_feedback(tiny_agents, tmp_path):
    args = MAGRPOConfig(num_generations=4, batch_size=6, max_new_tokens=2, learning_rate=3e-3, max_steps=60,
                        num_turns=2, discount=0.5, output_dir=str(tmp_path), log_samples_steps=0)
    items = [{"secret": s} for s in "abc"]
    trainer = MAGRPOTrainer(agents=tiny_agents, env_factory=SecretEnv, train_dataset=items, eval_dataset=items, args=args)
    history = trainer.train(progress=False)
    first = sum(h["turn_2/reward_mean"] for h in history[:3]) / 3
    last = sum(h["turn_2/reward_mean"] for h in history[-5:]) / 5
    print(f"turn-2 reward: first 3 steps {first:.3f}, last 5 steps {last:.3f}")
    assert first < 0.35 and last >= 0.8
    figures = trainer.evaluate()
    assert figures["turn_2/reward"] == 1.0 and figures["turn_1/reward"] <= 1 / 3 + 1e-9


@pytest.mark.parametrize("backend", ["plain", "fast"])
def test_token_ids_are_scored_exactly_as_sampled_across_turns(tiny_agents, backend):
    """What the update scores at turn 2 is the ids the sampler produced, in the context it saw:
    the update's log-probs equal the sampling-time log-probs of every sampled token."""
    at_sampling: list[tuple[torch.Tensor, torch.Tensor]] = []  # (sequences or None, token log-probs)
    if backend == "plain":
        for agent in tiny_agents:
            original = agent.model.generate

            def recording_generate(*args, _original=original, **kwargs):
                out = _original(*args, **kwargs, output_scores=True, return_dict_in_generate=True)
                scores = torch.log_softmax(torch.stack(out.scores, dim=1).float(), -1)
                at_sampling.append((out.sequences, scores))
                return out.sequences

            agent.model.generate = recording_generate
    sampler = default_sampler(num_generations=2, max_new_tokens=4, temperature=0.9, top_p=1.0, backend=backend)
    torch.manual_seed(3)
    turns = expand_tree(tiny_agents, [SecretEnv({"secret": "b"})], sample=sampler, joint_mode="aligned", num_generations=2, num_turns=2)
    from magrpo.policy import completion_token_logprobs

    calls = iter(at_sampling)
    for turn in turns:
        for agent, rollout in zip(tiny_agents, turn.rollouts):
            if backend == "plain":
                sequences, scores = next(calls)
                assert torch.equal(rollout.completion_ids, sequences[:, rollout.prompt_ids.shape[1]:])
                sampled = scores.gather(-1, rollout.completion_ids.unsqueeze(-1)).squeeze(-1)
            else:
                sampled = rollout.token_logprobs
            ours = completion_token_logprobs(
                agent.model, rollout.prompt_ids.repeat_interleave(2, 0), rollout.prompt_mask.repeat_interleave(2, 0),
                rollout.completion_ids, rollout.completion_mask, temperature=0.9,
            )
            m = rollout.completion_mask
            assert torch.allclose(ours[m], sampled[m], atol=1e-5)
    # the second turn's prompt is the rendered history that holds the first turn's feedback
    assert turns[1].rollouts[0].prompts[0] == "q b"


def test_more_than_one_turn_needs_feedback(tiny_agents):
    from magrpo import ConfigError

    with pytest.raises(ConfigError, match="num_turns=2 needs feedback between turns"):
        MAGRPOTrainer(agents=tiny_agents, reward_func=lambda **k: [0.0], train_dataset=[{"q": "q"}],
                      formatters=[str, str], args=MAGRPOConfig(num_turns=2))


def test_feedback_is_asked_only_for_branches_that_continue(tiny_agents, tmp_path):
    from magrpo.feedback import CallableFeedback

    asked = []

    def feedback(request):
        asked.append(request.turn)
        return ("try again", "try again")

    args = MAGRPOConfig(num_generations=2, max_new_tokens=2, max_steps=1, num_turns=2, output_dir=str(tmp_path))
    trainer = MAGRPOTrainer(agents=tiny_agents, reward_func=lambda completions, **_: [0.0] * len(completions),
                            train_dataset=[{"q": "q"}], formatters=[lambda x: x["q"]] * 2, args=args,
                            feedback=CallableFeedback(feedback))
    trainer.train(progress=False)
    assert asked == [1, 1]  # the 2 joint actions of turn 1; none after the last turn
