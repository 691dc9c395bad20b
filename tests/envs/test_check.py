"""check_env: every built-in environment keeps the contract, and each way of breaking it is named."""

from __future__ import annotations

import math

import pytest

from magrpo import EnvError, MAGRPOConfig, MAGRPOTrainer, MultiAgentEnv, StepResult, check_env
from magrpo.envs import reward_env_factory
from magrpo.tasks import get_task

NAMES = ["agent_0", "agent_1"]


def task_env(name: str, num_turns: int):
    task = get_task(name)
    feedback = task.execution_feedback() if num_turns > 1 else None
    factory = reward_env_factory(
        task.formatters,
        task.scorer,
        NAMES,
        feedback=feedback,
        is_solved=task.is_solved,
        agent_roles=task.agent_roles,
        num_turns=num_turns,
    )
    return factory(task.load_split("train")[0])


@pytest.mark.parametrize("name, num_turns", [("coding", 1), ("coding", 2), ("summarize", 1), ("expand", 1)])
def test_every_built_in_environment_keeps_the_contract(name, num_turns):
    env = task_env(name, num_turns)
    check_env(env, NAMES)
    check_env(env, NAMES, actions={"agent_0": "def aux(x):\n    return x", "agent_1": "def f(x):\n    return aux(x)"})


class CounterEnv(MultiAgentEnv):
    """A correct environment with mutable state: the reward counts the steps taken on this branch."""

    possible_agents = NAMES

    def __init__(self):
        self.history: list[str] = []

    def reset(self, seed=None, options=None):
        return {n: "go" for n in NAMES}, {n: {} for n in NAMES}

    def step(self, actions):
        self.history.append(actions["agent_0"])
        reward = float(len(self.history))
        return StepResult(
            {n: "again" for n in NAMES},
            {n: reward for n in NAMES},
            {n: False for n in NAMES},
            {n: False for n in NAMES},
            {n: {} for n in NAMES},
        )


def test_a_correct_environment_with_state_passes():
    check_env(CounterEnv(), NAMES)


class SharedStateEnv(CounterEnv):
    def branch(self):
        twin = CounterEnv.__new__(type(self))
        twin.history = self.history  # the bug: siblings share one list
        return twin


class MissingAgentReset(CounterEnv):
    def reset(self, seed=None, options=None):
        return {"agent_0": "go"}, {n: {} for n in NAMES}


class UnequalRewards(CounterEnv):
    def step(self, actions):
        result = super().step(actions)
        return result._replace(rewards={"agent_0": 1.0, "agent_1": 0.0})


class NanReward(CounterEnv):
    def step(self, actions):
        return super().step(actions)._replace(rewards={n: math.nan for n in NAMES})


class IntFlags(CounterEnv):
    def step(self, actions):
        return super().step(actions)._replace(terminations={n: 0 for n in NAMES})


class BadObservation(CounterEnv):
    def step(self, actions):
        return super().step(actions)._replace(observations={n: {"text": "x"} for n in NAMES})


class SelfBranch(CounterEnv):
    def branch(self):
        return self


class DisagreeingBatch(CounterEnv):
    @classmethod
    def step_many(cls, envs, actions):
        return [env.step(a)._replace(rewards={n: -1.0 for n in NAMES}) for env, a in zip(envs, actions)]


class OtherAgents(CounterEnv):
    possible_agents = ["helper", "main"]


@pytest.mark.parametrize(
    "env_class, message",
    [
        (
            MissingAgentReset,
            r"reset\(\) observations are keyed \['agent_0'\]; expected one entry per agent \['agent_0', 'agent_1'\]",
        ),
        (
            UnequalRewards,
            r"rewards \{'agent_0': 1.0, 'agent_1': 0.0\} differ between agents; the team shares one joint reward",
        ),
        (NanReward, r"rewards\['agent_0'\] is nan; expected a finite real number"),
        (IntFlags, r"terminations\['agent_0'\] is 0; expected True or False"),
        (
            BadObservation,
            r"observations\['agent_0'\] is \{'text': 'x'\}; expected a string or a non-empty list of chat messages",
        ),
        (SelfBranch, r"branch\(\) must return a new MultiAgentEnv"),
        (
            SharedStateEnv,
            r"two branches of one state stepped with the same joint action disagree \(rewards \{'agent_0': 1.0, 'agent_1': 1.0\} vs \{'agent_0': 2.0",
        ),
        (DisagreeingBatch, r"step_many\(\)\[0\] disagrees with step\(\) on the same joint action"),
        (OtherAgents, r"possible_agents \['helper', 'main'\] are not the team's agents \['agent_0', 'agent_1'\]"),
    ],
)
def test_each_broken_rule_is_named(env_class, message):
    with pytest.raises(EnvError, match=message):
        check_env(env_class(), NAMES)


def test_a_random_step_can_skip_the_branch_comparison():
    check_env(SharedStateEnv(), NAMES, check_branches=False)


def test_the_trainer_refuses_a_broken_environment_before_and_during_training(tiny_agents, tmp_path):
    args = MAGRPOConfig(num_generations=2, max_new_tokens=2, max_steps=1, output_dir=str(tmp_path), log_samples_steps=0)
    trainer = MAGRPOTrainer(agents=tiny_agents, env_factory=lambda item: OtherAgents(), train_dataset=[{}], args=args)
    with pytest.raises(EnvError, match="are not the team's agents"):
        trainer.train(progress=False)
    assert trainer.step == 0 and not (tmp_path / "metrics.jsonl").exists()  # refused before any step

    trainer = MAGRPOTrainer(agents=tiny_agents, env_factory=lambda item: NanReward(), train_dataset=[{}], args=args)
    with pytest.raises(EnvError, match=r"NanReward.step\(\) rewards\['agent_0'\] is nan"):
        trainer.train(progress=False)
    assert trainer.step == 0
