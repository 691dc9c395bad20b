"""A reward model as a reward function: a tiny random classifier built from a config, saved to a
folder and loaded from it (no hub), scores each joint answer's text in batches, alone or weighted
beside a callable, in a real training step."""

from __future__ import annotations

import pytest
import torch

from magrpo import MAGRPOConfig, MAGRPOTrainer, ModelError, RewardModel
from tests.conftest import make_tiny_tokenizer, tiny_llama_config


def tiny_classifier(vocab_size: int):
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(0)
    return LlamaForSequenceClassification(tiny_llama_config(vocab_size, num_labels=1))


@pytest.fixture
def classifier_dir(tmp_path):
    tokenizer = make_tiny_tokenizer()
    folder = tmp_path / "judge"
    tiny_classifier(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def one_by_one(reward: RewardModel, texts: list[str]) -> list[float]:
    """The classifier's first logit on each text alone: no padding at all."""
    out = []
    with torch.no_grad():
        for text in texts:
            batch = reward.tokenizer([text], return_tensors="pt")
            out.append(float(reward.model(**batch).logits[0, 0]))
    return out


def test_batched_scores_are_each_texts_own_score(classifier_dir):
    reward = RewardModel(classifier_dir, batch_size=2)
    assert reward.__name__ == "judge"  # logged as reward/judge beside other functions
    completions = [("a b", "c"), ("a", "b b b q"), ("q", "q"), ("c c c", "a")]
    prompts = [("q a", "b")] * 4
    texts = reward.texts(completions, prompts)
    assert texts[1] == "q a\n\na\n\nb b b q"  # the task (first agent's prompt), then every agent's part
    scores = reward(completions=completions, prompts=prompts)
    assert len(scores) == 4 and len(set(scores)) == 4  # the texts differ, and so do their scores
    assert scores == pytest.approx(one_by_one(reward, texts), abs=1e-5)  # padding changes nothing
    no_prompt = RewardModel(classifier_dir, include_prompt=False, separator=" ")
    assert no_prompt.texts(completions, prompts)[1] == "a b b b q"


def test_a_folder_that_is_no_model_is_refused_by_name(tmp_path):
    with pytest.raises(ModelError, match=f"reward model '{tmp_path}' is not a model folder"):
        RewardModel(tmp_path)


def test_a_reward_model_folder_trains_beside_a_weighted_callable(tiny_agents, classifier_dir, tmp_path):
    def ends_with_a(*, completions, **_):
        return [float(c1.endswith("a")) for _, c1 in completions]

    args = MAGRPOConfig(num_generations=4, max_new_tokens=3, max_steps=1, output_dir=str(tmp_path / "run"))
    trainer = MAGRPOTrainer(
        agents=tiny_agents,
        reward_func=[str(classifier_dir), ends_with_a],
        reward_weights=[1.0, 0.5],
        train_dataset=[{"question": "q a"}],
        formatters=[lambda item: item["question"]] * 2,
        args=args,
    )
    metrics, samples = trainer.train_step(trainer.next_batch())
    judge = RewardModel(classifier_dir)
    joint = [tuple(s["completions"]) for s in samples]
    expected = [
        j + 0.5 * e
        for j, e in zip(
            judge(completions=joint, prompts=[tuple(p[-1]["content"] for p in s["prompts"]) for s in samples]),
            ends_with_a(completions=joint),
        )
    ]
    assert [s["reward"] for s in samples] == pytest.approx(expected, abs=1e-5)
    assert metrics["reward_mean"] == pytest.approx(sum(expected) / len(expected), abs=1e-5)
