"""Rollout trees: exact rewards, returns and advantages on hand-built trees (scripted samplers and
environments), early termination, cross mode with best-k expansion."""

from __future__ import annotations

import torch

from magrpo import MultiAgentEnv, StepResult
from magrpo.advantages import agent_advantages, tree_returns
from magrpo.sampling import Rollout
from magrpo.tree import expand_tree


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
