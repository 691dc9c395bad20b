"""Evaluation figures per turn: a chain that ends early carries its last figures forward, so every
turn averages over every item; means skip the rows that lack a figure."""

from __future__ import annotations

import torch

from magrpo import MultiAgentEnv, StepResult
from magrpo.eval.figures import final_figures_per_turn, mean_figures
from magrpo.sampling import Rollout
from magrpo.tree import expand_tree
from tests.conftest import scripted_sampler_of

NAMES = ["agent_0", "agent_1"]


class Agent:
    def __init__(self, name):
        self.name = name


def echo_sampler():
    """One completion per observation: the observation itself (the env decides everything)."""

    def sample(agent, observations, generator=None):
        P = len(observations)
        ids = torch.zeros(P, 1, dtype=torch.long)
        return Rollout(ids, torch.ones(P, 1), ids, ids == 0, list(observations), list(observations), 1)

    return scripted_sampler_of(sample, 1)


class TwoTurnEnv(MultiAgentEnv):
    """Item "done" is solved at turn 1 (reward 1, figure hit=1); item "open" scores 0 then 3."""

    possible_agents = NAMES

    def __init__(self, item):
        self.kind, self.turn = item["kind"], 0

    def reset(self, seed=None, options=None):
        return {n: self.kind for n in NAMES}, {n: {} for n in NAMES}

    def step(self, actions):
        self.turn += 1
        done = self.kind == "done"
        reward = 1.0 if done else (0.0 if self.turn == 1 else 3.0)
        info = {"hit": float(done or self.turn == 2), "solved": done}  # booleans are not figures
        return StepResult(
            {n: self.kind for n in NAMES},
            {n: reward for n in NAMES},
            {n: done for n in NAMES},
            {n: False for n in NAMES},
            {n: dict(info) for n in NAMES},
        )


def test_an_early_finish_is_carried_forward_to_later_turns():
    envs = [TwoTurnEnv({"kind": "done"}), TwoTurnEnv({"kind": "open"})]
    turns = expand_tree([Agent(n) for n in NAMES], envs, sampler=echo_sampler(), joint_mode="aligned", num_turns=2)
    assert [t.num_nodes for t in turns] == [2, 1]  # the solved item is not expanded
    per_turn = final_figures_per_turn(turns, num_items=2, num_turns=2)
    assert per_turn == [
        [{"reward": 1.0, "hit": 1.0}, {"reward": 0.0, "hit": 0.0}],
        [{"reward": 1.0, "hit": 1.0}, {"reward": 3.0, "hit": 1.0}],
    ]
    assert mean_figures(per_turn[1]) == {"reward": 2.0, "hit": 1.0}


def test_means_skip_rows_without_the_figure():
    assert mean_figures([{"reward": 1.0, "rouge1": 0.5}, {"reward": 3.0}]) == {"reward": 2.0, "rouge1": 0.5}
    assert mean_figures([]) == {}
