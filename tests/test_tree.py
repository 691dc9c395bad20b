"""Rollout trees: exact rewards, returns and advantages on hand-built trees (scripted samplers and
environments), early termination, cross mode with best-k expansion."""

from __future__ import annotations

import pytest
import torch

from magrpo import MultiAgentEnv, StepResult
from magrpo.advantages import agent_advantages, tree_returns
from magrpo.sampling import Rollout
from magrpo.tree import expand_tree
from tests.conftest import scripted_sampler_of

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
        return StepResult(
            obs,
            {n: reward for n in NAMES},
            {n: False for n in NAMES},
            {n: False for n in NAMES},
            {n: {"reward": reward} for n in NAMES},
        )


class Agent:  # expand_tree only needs a name from an agent when the sampler is scripted
    def __init__(self, name):
        self.name = name


def scripted_sampler(num_generations):
    """Completion g at turn t is "x{g}" on the first turn and "y{g}" after."""

    def sample(agent, observations, generator=None):
        P = len(observations)
        texts = [("x" if obs == "start" else "y") + str(g) for obs in observations for g in range(num_generations)]
        ids = torch.zeros(P * num_generations, 1, dtype=torch.long)
        return Rollout(
            torch.zeros(P, 1, dtype=torch.long),
            torch.ones(P, 1),
            ids,
            ids == 0,
            texts,
            list(map(str, observations)),
            num_generations,
        )

    return scripted_sampler_of(sample, num_generations)


def aligned_reward(turn, joint, parent):
    if turn == 0:
        return {"x0": 1.0, "x1": 3.0}[joint[0]]
    return {("x0", "y0"): 0.0, ("x0", "y1"): 2.0, ("x1", "y0"): 4.0, ("x1", "y1"): 8.0}[(parent[0], joint[0])]


def returns_and_advantages(turns, gamma, joint_mode, num_turns=2, dropped=None):
    returns = tree_returns(
        [t.rewards for t in turns],
        [t.children for t in turns],
        gamma,
        solved=[t.solved for t in turns],
        num_turns=num_turns,
        dropped=dropped,
    )
    adv = [
        [agent_advantages(r, agent=i, num_agents=2, joint_mode=joint_mode).tolist() for i in range(2)] for r in returns
    ]
    return [r.tolist() for r in returns], adv


def test_aligned_tree_returns_and_advantages_with_discount():
    turns = expand_tree(
        [Agent(n) for n in NAMES],
        [ScriptedEnv(aligned_reward)],
        sampler=scripted_sampler(2),
        joint_mode="aligned",
        num_turns=2,
    )
    assert [t.rewards.tolist() for t in turns] == [[[1.0, 3.0]], [[0.0, 2.0], [4.0, 8.0]]]
    returns, adv = returns_and_advantages(turns, 0.5, "aligned")
    assert returns == [[[1 + 0.5 * 1.0, 3 + 0.5 * 6.0]], [[0.0, 2.0], [4.0, 8.0]]]
    assert adv[0] == [[-2.25, 2.25], [-2.25, 2.25]]  # both agents share the joint action's advantage
    assert adv[1] == [[-1.0, 1.0, -2.0, 2.0]] * 2  # siblings of each node form the groups


def test_early_stop_makes_an_absorbing_leaf():
    turns = expand_tree(
        [Agent(n) for n in NAMES],
        [ScriptedEnv(aligned_reward)],
        sampler=scripted_sampler(2),
        joint_mode="aligned",
        num_turns=2,
        early_stop_reward=3.0,
    )
    assert turns[0].finished.tolist() == [[False, True]] and turns[0].solved.tolist() == [[False, True]]
    assert [t.rewards.tolist() for t in turns] == [[[1.0, 3.0]], [[0.0, 2.0]]]
    returns, adv = returns_and_advantages(turns, 0.5, "aligned")
    # the early stop keeps its 3.0 for the turn it skips: 3 + 0.5 * 3
    assert returns[0] == [[1.0 + 0.5 * 1.0, 3.0 + 0.5 * 3.0]]
    assert adv[0][0] == [-1.5, 1.5]


class SolvableEnv(MultiAgentEnv):
    """A joint action whose first word is "win" solves the item (5.5, terminated); anything else
    scores 2.0 at turn 1 and 5.5 when revised at turn 2."""

    possible_agents = NAMES

    def __init__(self):
        self.turn = 0

    def reset(self, seed=None, options=None):
        return {n: "start" for n in NAMES}, {n: {} for n in NAMES}

    def step(self, actions):
        self.turn += 1
        won = actions["agent_0"] == "win"
        reward = 5.5 if won or self.turn == 2 else 2.0
        done = won or self.turn == 2
        return StepResult(
            {n: "revise" for n in NAMES},
            {n: reward for n in NAMES},
            {n: done for n in NAMES},
            {n: False for n in NAMES},
            {n: {} for n in NAMES},
        )


def test_solving_at_the_first_turn_is_never_worse_than_solving_after_feedback():
    """G = 4, discount 0.9: one joint action solves at once (5.5); three score 2.0 and their
    revisions all pass. Without the absorbing rule the early solver would get 5.5 against the
    others' 2.0 + 0.9 * 5.5 = 6.95, a negative advantage (-1.09)."""

    def sample(agent, observations, generator=None):
        texts = [("win" if g == 0 else "try") if obs == "start" else "fixed" for obs in observations for g in range(4)]
        ids = torch.zeros(len(texts), 1, dtype=torch.long)
        P = len(observations)
        return Rollout(
            torch.zeros(P, 1, dtype=torch.long), torch.ones(P, 1), ids, ids == 0, texts, list(map(str, observations)), 4
        )

    turns = expand_tree(
        [Agent(n) for n in NAMES],
        [SolvableEnv()],
        sampler=scripted_sampler_of(sample, 4),
        joint_mode="aligned",
        num_turns=2,
    )
    assert turns[0].rewards.tolist() == [[5.5, 2.0, 2.0, 2.0]] and turns[0].solved.tolist() == [
        [True, False, False, False]
    ]
    returns, adv = returns_and_advantages(turns, 0.9, "aligned")
    assert returns[0] == [[pytest.approx(5.5 * 1.9), pytest.approx(6.95), pytest.approx(6.95), pytest.approx(6.95)]]
    assert adv[0][0] == pytest.approx([2.625, -0.875, -0.875, -0.875])  # mean 7.825


def test_a_truncated_or_dropped_leaf_is_not_absorbing():
    rewards = [torch.tensor([[4.0, 4.0, 1.0]]), torch.tensor([[0.0, 2.0, 4.0]])]
    children = [{(0, 2): 0}, {}]
    solved = [torch.tensor([[True, False, False]]), torch.tensor([[False, False, False]])]
    # j=0 solved (absorbing: 4 + 0.5 * 4), j=1 a leaf that did not reach its goal, j=2 continued
    assert tree_returns(rewards, children, 0.5, solved=solved, num_turns=2)[0].tolist() == [[6.0, 4.0, 1.0 + 0.5 * 2.0]]
    # three turns: a solve at turn 1 skips two (4 * (1 + 0.5 + 0.25))
    assert tree_returns(rewards, children, 0.5, solved=solved, num_turns=3)[0][0, 0].item() == 7.0


def cross_reward(turn, joint, parent):
    return 1.0 * (joint[0][1] == "1") + 2.0 * (joint[1][1] == "1")


def test_cross_tree_best_k_returns_and_advantages():
    turns = expand_tree(
        [Agent(n) for n in NAMES],
        [ScriptedEnv(cross_reward)],
        sampler=scripted_sampler(2),
        joint_mode="cross",
        num_turns=2,
        expand="best-k",
        expand_k=1,
    )
    assert turns[0].rewards.tolist() == [[0.0, 2.0, 1.0, 3.0]]
    assert turns[0].children == {(0, 3): 0}  # only the best joint action continues
    returns, adv = returns_and_advantages(turns, 0.5, "cross", dropped=[t.dropped for t in turns])
    # the dropped siblings take the kept one's future (its child node's mean return, 1.5)
    assert turns[0].dropped.tolist() == [[True, True, True, False]]
    assert returns[0] == [[0.0 + 0.75, 2.0 + 0.75, 1.0 + 0.75, 3.0 + 0.75]]
    # the future every sibling shares cancels: turn 1 is credited by its own rewards
    assert adv[0] == [[-0.5, 0.5], [-1.0, 1.0]]
    assert adv[1] == [[-0.5, 0.5], [-1.0, 1.0]]


def equal_rewards_best_k_tree(item_key: int):
    """Two turns, G = 4, reward 2 for every joint action, best-k with k = 1."""
    return expand_tree(
        [Agent(n) for n in NAMES],
        [ScriptedEnv(lambda turn, joint, parent: 2.0)],
        sampler=scripted_sampler(4),
        joint_mode="aligned",
        num_turns=2,
        expand="best-k",
        expand_k=1,
        item_keys=[item_key],
    )


def test_best_k_siblings_with_equal_rewards_have_equal_returns_and_no_advantage():
    """Rewards 2 everywhere, best-k with k = 1: the kept branch's return is not longer than its
    dropped siblings' (before: [3.8, 2, 2, 2] and advantages [1.35, -0.45, -0.45, -0.45])."""
    turns = equal_rewards_best_k_tree(7)
    returns, adv = returns_and_advantages(turns, 0.9, "aligned", dropped=[t.dropped for t in turns])
    assert returns[0] == [[3.8, 3.8, 3.8, 3.8]]
    assert adv[0] == [[0.0] * 4, [0.0] * 4] and adv[1] == [[0.0] * 4, [0.0] * 4]


def test_best_k_ties_are_broken_by_the_nodes_seeded_stream_not_by_index():
    def kept(key):
        return list(equal_rewards_best_k_tree(key)[0].children)

    chosen = [kept(key) for key in range(12)]
    assert chosen == [kept(key) for key in range(12)]  # the same key, the same choice
    assert len({c[0][1] for c in chosen}) > 1  # ties do not all go to joint action 0
