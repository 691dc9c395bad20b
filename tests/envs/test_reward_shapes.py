"""What reward functions receive: a team's joint actions as tuples, one agent's completions as
TRL passes them (plain strings, or an assistant message after a chat prompt), so that TRL's own
reward functions run unchanged."""

from __future__ import annotations

import pytest

from magrpo import MAGRPOConfig, MAGRPOTrainer, RewardError
from magrpo.models import build_agents
from tests.conftest import make_tiny_model


def reward_len(completions, **kwargs):
    """TRL's documented example reward, unchanged."""
    return [-abs(20 - len(completion)) for completion in completions]


def one_agent_trainer(tokenizer, tmp_path, reward, formatter):
    (agent,) = build_agents([(make_tiny_model(len(tokenizer), seed=8), tokenizer)], device="cpu")
    args = MAGRPOConfig(num_agents=1, num_generations=4, max_new_tokens=6, max_steps=1, output_dir=str(tmp_path))
    return MAGRPOTrainer(
        agents=[agent], reward_func=reward, train_dataset=[{"q": "q a"}], formatters=[formatter], args=args
    )


def test_one_agent_gets_plain_strings_and_trls_reward_runs_unchanged(tiny_tokenizer, tmp_path):
    seen = {}

    def spy(completions, prompts, **kwargs):
        seen.update(completions=completions, prompts=prompts)
        return reward_len(completions)

    trainer = one_agent_trainer(tiny_tokenizer, tmp_path, spy, lambda x: x["q"])
    _, samples = trainer.train_step(trainer.next_batch())
    assert all(isinstance(c, str) for c in seen["completions"]) and seen["prompts"] == ["q a"] * 4
    texts = [s["completions"][0] for s in samples]
    assert seen["completions"] == texts
    assert [s["reward"] for s in samples] == [-abs(20 - len(t)) for t in texts]  # the length of the text
    assert len({s["reward"] for s in samples}) > 1  # not one constant (the length of a 1-tuple)


def test_one_agent_after_a_chat_prompt_gets_assistant_messages(tiny_tokenizer, tmp_path):
    seen = {}
    chat = [{"role": "user", "content": "q a"}]

    def spy(completions, prompts, **kwargs):
        seen.update(completions=completions, prompts=prompts)
        return [float(len(c[-1]["content"])) for c in completions]

    trainer = one_agent_trainer(tiny_tokenizer, tmp_path, spy, lambda x: chat)
    _, samples = trainer.train_step(trainer.next_batch())
    assert seen["prompts"] == [chat] * 4
    assert seen["completions"] == [[{"role": "assistant", "content": s["completions"][0]}] for s in samples]


def test_a_team_gets_one_tuple_per_joint_action(tiny_agents, tmp_path):
    seen = {}

    def spy(completions, prompts, **kwargs):
        seen.update(completions=completions, prompts=prompts)
        return [float(len(a) - len(b)) for a, b in completions]

    args = MAGRPOConfig(num_generations=2, max_new_tokens=3, max_steps=1, output_dir=str(tmp_path))
    trainer = MAGRPOTrainer(
        agents=tiny_agents,
        reward_func=spy,
        train_dataset=[{"q": "q"}],
        formatters=[lambda x: x["q"], lambda x: x["q"] + " a"],
        args=args,
    )
    _, samples = trainer.train_step(trainer.next_batch())
    assert seen["prompts"] == [("q", "q a")] * 2
    assert seen["completions"] == [tuple(s["completions"]) for s in samples]


def test_a_reward_function_that_raises_is_named_with_the_step_and_the_item_and_the_run_keeps_its_weights(
    tiny_agents, tmp_path
):
    calls = []

    def flaky_judge(completions, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise ZeroDivisionError("division by zero")
        return [float(len(a)) for a, _ in completions]

    args = MAGRPOConfig(
        num_generations=2, max_new_tokens=3, max_steps=5, save_steps=0, save_minutes=0, output_dir=str(tmp_path)
    )
    trainer = MAGRPOTrainer(
        agents=tiny_agents,
        reward_func=flaky_judge,
        train_dataset=[{"q": "q b"}],
        formatters=[lambda x: x["q"]] * 2,
        args=args,
    )
    with pytest.raises(RewardError) as err:
        trainer.train(progress=False)
    assert str(err.value) == (
        "step 3: reward function 'flaky_judge' raised ZeroDivisionError: division by zero (scoring items q='q b')"
    )
    assert isinstance(err.value.__cause__.__cause__, ZeroDivisionError)
    assert (tmp_path / "checkpoints" / "step-2-interrupted" / "agent_0").is_dir()  # the two steps it took
