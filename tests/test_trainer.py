"""The trainer: it learns (a reward that needs BOTH agents rises from chance to >= 0.9, a second
turn learns to use its feedback), it is reproducible, it scores exactly the sampled token ids, its
fast paths change nothing, and bad input stops it before any compute."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from magrpo import ConfigError, MAGRPOConfig, MAGRPOTrainer, MultiAgentEnv, RewardError, StepResult
from magrpo.models import build_agents
from magrpo.prepare import bf16_by_default, computes_bf16_in_hardware, resolve_precision
from magrpo.ranks import OneProcess
from magrpo.sampling import SamplingSettings, make_sampler
from magrpo.sampling.fast import sample_fast
from magrpo.team import Precision
from magrpo.trainer import DatasetError
from magrpo.tree import expand_tree
from tests.conftest import after_all_started, letter_count_reward, make_tiny_model


def both_agents_right(*, completions, prompts, **_):
    # agent 0 must open with "a" and agent 1 with "b"; either alone earns nothing
    return [float(c0.split()[:1] == ["a"] and c1.split()[:1] == ["b"]) for c0, c1 in completions]


def train_cooperative(agents, tmp_path, **config) -> tuple[MAGRPOTrainer, list[dict]]:
    """Train ``agents`` on :func:`both_agents_right` (chance about 1/36); returns the trainer and
    its history, the first and last rewards printed."""
    args = MAGRPOConfig(
        **{
            "num_generations": 8,
            "batch_size": 4,
            "max_new_tokens": 3,
            "learning_rate": 3e-3,
            "max_steps": 60,
            "seed": 0,
            "output_dir": str(tmp_path),
            "log_samples_steps": 0,
            **config,
        }
    )
    trainer = MAGRPOTrainer(
        agents=agents,
        reward_func=both_agents_right,
        train_dataset=[{"question": "q"}] * 8,
        eval_dataset=[{"question": "q"}],
        formatters=[lambda item: item["question"], lambda item: item["question"]],
        args=args,
    )
    history = trainer.train(progress=False)
    first = sum(h["reward_mean"] for h in history[:3]) / 3
    last = sum(h["reward_mean"] for h in history[-5:]) / 5
    print(f"reward first 3 steps {first:.3f}, last 5 steps {last:.3f}")
    assert first < 0.2  # chance: about 1/6 * 1/6 for a near-uniform 6-token policy
    assert last >= 0.9
    return trainer, history


@pytest.mark.parametrize("rollout_dtype", ["same", "bfloat16"])
def test_cooperative_reward_rises_from_chance_to_090(tiny_agents, tmp_path, rollout_dtype):
    # "bfloat16": a reduced-precision copy samples, the correction keeps the update on course
    trainer, _ = train_cooperative(tiny_agents, tmp_path, rollout_dtype=rollout_dtype)
    assert trainer.evaluate()["reward"] == 1.0  # greedy decoding now answers as a team


def test_same_seed_same_run(tiny_tokenizer, tmp_path):
    """Seeded and reproducible on CPU: two runs give identical rewards and identical weights."""
    from magrpo.models import build_agents
    from tests.conftest import make_tiny_model

    runs = []
    for k in range(2):
        agents = build_agents(
            [(make_tiny_model(len(tiny_tokenizer), seed=s), tiny_tokenizer) for s in (1, 2)], device="cpu"
        )
        args = MAGRPOConfig(
            num_generations=4,
            batch_size=2,
            max_new_tokens=3,
            learning_rate=3e-3,
            max_steps=3,
            seed=7,
            output_dir=str(tmp_path / str(k)),
            log_samples_steps=0,
        )
        trainer = MAGRPOTrainer(
            agents=agents,
            reward_func=both_agents_right,
            train_dataset=[{"question": "q"}] * 3,
            formatters=[lambda item: item["question"]] * 2,
            args=args,
        )
        history = trainer.train(progress=False)
        runs.append(
            ([h["reward_mean"] for h in history], [p.detach().clone() for a in agents for p in a.model.parameters()])
        )
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


def test_a_step_without_learning_signal_leaves_the_agents_as_they_were(tiny_agents, tmp_path):
    """After a real step (AdamW now has momentum), a step whose groups all got equal rewards has
    no gradient: the weights stay bit for bit, where a plain optimiser step would drift them."""
    from tests.conftest import letter_count_reward

    signal = {"on": True}

    def reward(*, completions, **kw):
        return letter_count_reward(completions=completions) if signal["on"] else [1.0] * len(completions)

    args = MAGRPOConfig(
        num_generations=4,
        batch_size=2,
        max_new_tokens=4,
        learning_rate=1e-2,
        max_steps=2,
        seed=0,
        output_dir=str(tmp_path),
        log_samples_steps=0,
    )
    trainer = MAGRPOTrainer(
        agents=tiny_agents,
        reward_func=reward,
        train_dataset=[{"q": "q"}] * 2,
        formatters=[lambda item: item["q"]] * 2,
        args=args,
    )
    initial = [p.detach().clone() for a in tiny_agents for p in a.model.parameters()]
    trainer.train_step(trainer.next_batch())
    after_signal = [p.detach().clone() for a in tiny_agents for p in a.model.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(initial, after_signal))
    assert all(p.grad is None for a in tiny_agents for p in a.model.parameters())  # freed between updates

    signal["on"] = False
    metrics, _ = trainer.train_step(trainer.next_batch())
    assert metrics["agent_0/grad_norm"] == 0.0 and metrics["agent_1/loss"] == 0.0
    assert all(torch.equal(a, p) for a, p in zip(after_signal, (p for a in tiny_agents for p in a.model.parameters())))


NAMES = ["agent_0", "agent_1"]


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
        return StepResult(
            obs,
            {n: reward for n in NAMES},
            {n: False for n in NAMES},
            {n: False for n in NAMES},
            {n: {"reward": reward} for n in NAMES},
        )


@pytest.mark.long
def test_second_turn_learns_to_use_the_feedback(tiny_agents, tmp_path):
    args = MAGRPOConfig(
        num_generations=4,
        batch_size=6,
        max_new_tokens=2,
        learning_rate=3e-3,
        max_steps=60,
        num_turns=2,
        discount=0.5,
        output_dir=str(tmp_path),
        log_samples_steps=0,
    )
    items = [{"secret": s} for s in "abc"]
    trainer = MAGRPOTrainer(
        agents=tiny_agents, env_factory=SecretEnv, train_dataset=items, eval_dataset=items, args=args
    )
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
    sampler = make_sampler(num_generations=2, max_new_tokens=4, temperature=0.9, top_p=1.0, backend=backend)
    torch.manual_seed(3)
    turns = expand_tree(tiny_agents, [SecretEnv({"secret": "b"})], sampler=sampler, joint_mode="aligned", num_turns=2)
    from magrpo.logprobs import completion_token_logprobs

    calls = iter(at_sampling)
    for turn in turns:
        for agent, rollout in zip(tiny_agents, turn.rollouts):
            if backend == "plain":
                sequences, scores = next(calls)
                assert torch.equal(rollout.completion_ids, sequences[:, rollout.prompt_ids.shape[1] :])
                sampled = scores.gather(-1, rollout.completion_ids.unsqueeze(-1)).squeeze(-1)
            else:
                sampled = rollout.token_logprobs
            ours = completion_token_logprobs(
                agent.model,
                rollout.prompt_ids.repeat_interleave(2, 0),
                rollout.prompt_mask.repeat_interleave(2, 0),
                rollout.completion_ids,
                rollout.completion_mask,
                temperature=0.9,
            )
            m = rollout.completion_mask
            assert torch.allclose(ours[m], sampled[m], atol=1e-5)
    # the second turn's prompt is the rendered history that holds the first turn's feedback
    assert turns[1].rollouts[0].prompts[0] == "q b"


def test_more_than_one_turn_needs_feedback(tiny_agents):
    from magrpo import ConfigError

    with pytest.raises(ConfigError, match="num_turns=2 needs feedback between turns"):
        MAGRPOTrainer(
            agents=tiny_agents,
            reward_func=lambda **k: [0.0],
            train_dataset=[{"q": "q"}],
            formatters=[str, str],
            args=MAGRPOConfig(num_turns=2),
        )


def test_feedback_is_asked_only_for_branches_that_continue(tiny_agents, tmp_path):
    from magrpo.feedback import CallableFeedback

    asked = []

    def feedback(request):
        asked.append(request.turn)
        return ("try again", "try again")

    args = MAGRPOConfig(num_generations=2, max_new_tokens=2, max_steps=1, num_turns=2, output_dir=str(tmp_path))
    trainer = MAGRPOTrainer(
        agents=tiny_agents,
        reward_func=lambda completions, **_: [0.0] * len(completions),
        train_dataset=[{"q": "q"}],
        formatters=[lambda x: x["q"]] * 2,
        args=args,
        feedback=CallableFeedback(feedback),
    )
    trainer.train(progress=False)
    assert asked == [1, 1]  # the 2 joint actions of turn 1; none after the last turn


@pytest.mark.parametrize(
    "config, expected",
    [
        ({"expand": "best-k", "expand_k": 1}, [1]),  # 4 joint actions, only the kept one is asked about
        ({"expand": "best-k", "expand_k": 2}, [1, 1]),
        ({"early_stop_reward": 0.0}, []),  # every branch reached the goal: nobody continues
    ],
)
def test_feedback_is_not_asked_for_branches_that_best_k_or_an_early_stop_ends(tiny_agents, tmp_path, config, expected):
    from magrpo.feedback import CallableFeedback

    asked = []

    def feedback(request):
        asked.append(request.turn)
        return ("try again", "try again")

    args = MAGRPOConfig(
        num_generations=4, max_new_tokens=2, max_steps=1, num_turns=2, output_dir=str(tmp_path), **config
    )
    trainer = MAGRPOTrainer(
        agents=tiny_agents,
        reward_func=lambda completions, **_: [0.0] * len(completions),
        train_dataset=[{"q": "q"}],
        formatters=[lambda x: x["q"]] * 2,
        args=args,
        feedback=CallableFeedback(feedback),
    )
    trainer.train(progress=False)
    assert asked == expected


def sgd_step_deltas(tokenizer, folder, before_step=None, **config) -> list[torch.Tensor]:
    """Two tiny full agents take one training step with plain SGD (lr 1: the change is the
    clipped gradient itself; AdamW would blow float noise in near-zero gradient entries up to
    +-lr); returns every parameter's change. ``before_step(trainer)`` runs just before the step."""
    from tests.conftest import letter_count_reward

    agents = build_agents([(make_tiny_model(len(tokenizer), seed=s), tokenizer) for s in (1, 2)], device="cpu")
    initial = [p.detach().clone() for a in agents for p in a.model.parameters()]
    settings = dict(num_generations=4, batch_size=3, max_new_tokens=4, max_steps=1, seed=3, log_samples_steps=0)
    trainer = MAGRPOTrainer(
        agents=agents,
        reward_func=letter_count_reward,
        train_dataset=[{"q": "q"}, {"q": "a b"}, {"q": "c"}],
        formatters=[lambda item: item["q"]] * 2,
        args=MAGRPOConfig(**settings, output_dir=str(folder), autocast="no", **config),
    )
    trainer.optimizers = [torch.optim.SGD(a.trainable_parameters(), lr=1.0) for a in agents]
    if before_step is not None:
        before_step(trainer)
    metrics, _ = trainer.train_step(trainer.next_batch())
    assert metrics["reward_std"] > 0  # some rows carry advantage: there is a gradient to compare
    return [p.detach() - p0 for p, p0 in zip((p for a in agents for p in a.model.parameters()), initial)]


def test_trainer_update_is_the_same_with_and_without_prompt_sharing(tiny_tokenizer, tmp_path):
    """A whole training step (micro-batches that split groups, two agents): the weight change is
    the same either way (the two orders of summation agree to float32 rounding)."""
    deltas = [
        sgd_step_deltas(tiny_tokenizer, tmp_path / str(share), update_micro_batch_size=5, share_prompt_in_update=share)
        for share in (True, False)
    ]
    assert max(d.abs().max().item() for d in deltas[0]) > 1e-3
    for shared, full in zip(*deltas):
        assert torch.allclose(shared, full, rtol=1e-4, atol=1e-6)


def test_agents_with_their_own_models_update_at_once_as_they_would_one_after_the_other(tiny_tokenizer, tmp_path):
    """On CPU in one process, two full agents' updates run in two threads (one core each): the
    same weight change as one after the other, to float32 rounding (fewer threads per matmul may
    round a last bit differently)."""
    import threading

    threads = torch.get_num_threads()

    def check(at_once):
        def before_step(trainer):
            assert trainer.team.updates_at_once() == at_once
            if at_once:  # each optimiser step waits for the other's: one update after the other would break it
                barrier = threading.Barrier(2, timeout=60)
                for optimizer in trainer.optimizers:
                    optimizer.step = after_all_started(optimizer.step, barrier)

        return before_step

    deltas = [
        sgd_step_deltas(tiny_tokenizer, tmp_path / str(at_once), check(at_once), concurrent_agents=at_once)
        for at_once in (False, True)
    ]
    assert torch.get_num_threads() == threads
    assert max(d.abs().max().item() for d in deltas[0]) > 1e-3
    for apart, together in zip(*deltas):
        assert torch.allclose(apart, together, rtol=1e-4, atol=1e-6)


def test_agents_on_one_base_update_one_after_the_other(tiny_tokenizer):
    from magrpo.team import Team

    base = make_tiny_model(len(tiny_tokenizer), seed=4)
    shared = build_agents([(base, tiny_tokenizer)] * 2, device="cpu", use_lora=True, lora_r=4)
    own = build_agents([(make_tiny_model(len(tiny_tokenizer), seed=s), tiny_tokenizer) for s in (1, 2)], device="cpu")
    precision = Precision(autocast=None, rollout_dtype="same")

    def team(agents, **config):
        return Team(agents, [], MAGRPOConfig(**config), OneProcess(), precision)

    assert team(own).updates_at_once()
    assert not team(own, concurrent_agents=False).updates_at_once()
    assert not team(shared).updates_at_once()  # one model: its adapters take turns
    assert not team(own[:1]).updates_at_once()
    # under bf16 autocast concurrent updates were not bit-for-bit repeatable: they take turns
    bf16 = Team(own, [], MAGRPOConfig(), OneProcess(), Precision(autocast=torch.bfloat16, rollout_dtype="same"))
    assert not bf16.updates_at_once()


PROMPTS = ["a b c", "q", "a a b b c c q q a"]


def _bf16_config(tmp_path, **overrides) -> MAGRPOConfig:
    values = dict(
        num_generations=4,
        batch_size=2,
        max_new_tokens=4,
        learning_rate=3e-3,
        max_steps=1,
        seed=0,
        output_dir=str(tmp_path),
        log_samples_steps=0,
        rollout_dtype="bfloat16",
    )
    values.update(overrides)
    return MAGRPOConfig(**values)


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_the_copy_is_the_training_weights_rounded_once_before_and_after_every_update(tiny_tokenizer, tmp_path):
    agents = build_agents(
        [(make_tiny_model(len(tiny_tokenizer), seed=s), tiny_tokenizer) for s in (1, 2)], device="cpu"
    )
    trainer = MAGRPOTrainer(
        agents=agents,
        reward_func=letter_count_reward,
        train_dataset=[{"q": "q"}] * 2,
        formatters=[lambda item: item["q"]] * 2,
        args=_bf16_config(tmp_path),
    )
    before = [_params(a.model) for a in agents]
    for agent in agents:
        assert agent.sampling_copy is not None and agent.sampling_copy is not agent.model
        assert agent.sampling_copy.dtype == torch.bfloat16 and agent.model.dtype == torch.float32
        for name, p in agent.sampling_copy.named_parameters():
            assert not p.requires_grad
            assert torch.equal(p, agent.model.get_parameter(name).detach().to(torch.bfloat16)), name

    metrics, _ = trainer.train_step(trainer.next_batch())
    for agent, old in zip(agents, before):
        moved = [n for n, p in agent.model.named_parameters() if not torch.equal(p, old[n])]
        assert moved  # the update changed the training weights ...
        for name, p in agent.sampling_copy.named_parameters():  # ... and the copy follows them
            assert torch.equal(p, agent.model.get_parameter(name).detach().to(torch.bfloat16)), name
        assert (
            0.0 < metrics[f"{agent.name}/is_weight_mean"] and 0.0 <= metrics[f"{agent.name}/is_capped_fraction"] <= 1.0
        )


def test_evaluation_decodes_with_the_training_weights_not_the_copy(tiny_tokenizer, tmp_path):
    agents = build_agents(
        [(make_tiny_model(len(tiny_tokenizer), seed=s), tiny_tokenizer) for s in (1, 2)], device="cpu"
    )
    trainer = MAGRPOTrainer(
        agents=agents,
        reward_func=both_agents_right,
        train_dataset=[{"q": "q"}] * 2,
        eval_dataset=[{"q": "q"}] * 2,
        formatters=[lambda item: item["q"]] * 2,
        args=_bf16_config(tmp_path),
    )
    exact = trainer.evaluate()
    # give agent 0's copy the weights of an unrelated model: whatever it samples shows whose they are
    stranger = make_tiny_model(len(tiny_tokenizer), seed=9).to(torch.bfloat16)
    with torch.no_grad():
        stranger.lm_head.weight.mul_(8.0)
    agents[0].sampling_copy.load_state_dict(stranger.state_dict())
    assert trainer.evaluate() == exact
    stranger_agent = build_agents([(stranger, tiny_tokenizer)], device="cpu")[0]
    greedy = SamplingSettings(num_generations=1, max_new_tokens=6, temperature=0.0)
    by_copy = sample_fast(agents[0], PROMPTS, greedy)
    by_stranger = sample_fast(stranger_agent, PROMPTS, greedy)
    by_training_weights = sample_fast(agents[0], PROMPTS, dataclasses.replace(greedy, use_sampling_copy=False))
    assert torch.equal(by_copy.completion_ids, by_stranger.completion_ids)
    assert not torch.equal(by_copy.completion_ids, by_training_weights.completion_ids)


def test_no_copy_when_the_rollout_dtype_is_the_training_dtype(tiny_agents, tmp_path):
    trainer = MAGRPOTrainer(
        agents=tiny_agents,
        reward_func=both_agents_right,
        train_dataset=[{"q": "q"}] * 2,
        formatters=[lambda item: item["q"]] * 2,
        args=_bf16_config(tmp_path, rollout_dtype="float32"),
    )
    assert all(a.sampling_copy is None for a in trainer.agents)
    metrics, _ = trainer.train_step(trainer.next_batch())
    assert not any("is_weight" in k for k in metrics)  # exactly on-policy: no correction at all
    assert math.isfinite(metrics["reward_mean"])


def reward_of_length(n):
    def bad_reward(*, completions, prompts, **_):
        return [1.0] * n

    return bad_reward


def test_wrong_length_reward_stops_training(tiny_agents, tmp_path):
    trainer = MAGRPOTrainer(
        agents=tiny_agents,
        reward_func=reward_of_length(1),
        train_dataset=[{"q": "q"}],
        formatters=[lambda x: x["q"]] * 2,
        args=MAGRPOConfig(max_new_tokens=2, max_steps=1, output_dir=str(tmp_path)),
    )
    with pytest.raises(RewardError, match="returned 1 rewards for 4 joint actions"):
        trainer.train(progress=False)


def test_item_missing_a_formatter_field_stops_before_any_compute(tiny_agents):
    with pytest.raises(DatasetError) as err:
        MAGRPOTrainer(
            agents=tiny_agents,
            reward_func=reward_of_length(4),
            train_dataset=[{"question": "q"}, {"text": "q"}],
            formatters=[lambda x: x["question"]] * 2,
            args=MAGRPOConfig(max_new_tokens=2),
        )
    assert str(err.value) == (
        "train_dataset[1]: the formatter of agent_0 needs field 'question', which the item lacks; "
        "the item has fields ['text']"
    )


def test_one_formatter_per_agent(tiny_agents):
    with pytest.raises(ConfigError, match="formatters: 1 given for num_agents=2; give one formatter per agent"):
        MAGRPOTrainer(agents=tiny_agents, reward_func=reward_of_length(4), train_dataset=[{"q": "q"}], formatters=[str])


def test_the_update_scores_the_sampled_policy_with_dropout_off(tiny_tokenizer, tmp_path):
    base = make_tiny_model(len(tiny_tokenizer), seed=7)
    agents = build_agents([(base, tiny_tokenizer)] * 2, device="cpu", use_lora=True, lora_r=4, lora_dropout=0.5)
    seen = []
    for module in agents[0].model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.register_forward_pre_hook(lambda mod, args: seen.append((torch.is_grad_enabled(), mod.training)))
    args = MAGRPOConfig(num_generations=4, max_new_tokens=4, max_steps=1, output_dir=str(tmp_path), log_samples_steps=0)
    trainer = MAGRPOTrainer(
        agents=agents,
        reward_func=letter_count_reward,
        train_dataset=[{"q": "q a"}],
        formatters=[lambda x: x["q"]] * 2,
        args=args,
    )
    metrics, _ = trainer.train_step(trainer.next_batch())
    assert any(grad for grad, _ in seen) and metrics["agent_0/grad_norm"] > 0  # the update ran through them
    assert not any(training for _, training in seen)


def paired_reward(c0: str, c1: str) -> float:
    """A joint reward that tells almost any two joint actions apart, so a mispairing shows."""
    return len(c0.split()) + 2.5 * c1.count("a") - 0.75 * c0.count("b") + 0.1 * len(c1)


def paired_step(agents, args, **options) -> MAGRPOTrainer:
    """A trainer on :func:`paired_reward` over two items, after one step (``trainer.last_step``)."""
    trainer = MAGRPOTrainer(
        agents=agents,
        reward_func=lambda completions, **_: [paired_reward(*c) for c in completions],
        train_dataset=[{"q": "q a"}, {"q": "b"}],
        formatters=[lambda x: x["q"], lambda x: x["q"] + " c"],
        args=args,
        **options,
    )
    trainer.train_step(trainer.next_batch())
    return trainer


def expected_advantages(texts, G, joint_mode, child_means=None, gamma=0.5):
    """Per agent, the advantage of every row recomputed from the decoded texts alone."""
    P = len(texts[0]) // G
    out = [[], []]
    for p in range(P):
        rows = [(texts[0][p * G + g], texts[1][p * G + g]) for g in range(G)]
        if joint_mode == "aligned":
            ret = [paired_reward(*rows[g]) + (gamma * child_means[p * G + g] if child_means else 0.0) for g in range(G)]
            for i in range(2):
                out[i] += [r - sum(ret) / G for r in ret]
        else:  # cross: completion g of agent i, averaged over every partner completion
            for i in range(2):
                ret = []
                for g in range(G):
                    mine = texts[i][p * G + g]
                    partners = [texts[1 - i][p * G + h] for h in range(G)]
                    pairs = [(mine, o) if i == 0 else (o, mine) for o in partners]
                    ret.append(sum(paired_reward(*pair) for pair in pairs) / G)
                out[i] += [r - sum(ret) / G for r in ret]
    return out


def mismatched_rows(captured, G, joint_mode, num_turns):
    """Rows whose advantage in the update differs from the one recomputed from what was sampled."""
    texts = [[captured[i][1][t].texts for i in range(2)] for t in range(num_turns)]
    used = [[captured[i][2][t].tolist() for i in range(2)] for t in range(num_turns)]
    child_means = None
    bad = 0
    for t in reversed(range(num_turns)):
        want = expected_advantages(texts[t], G, joint_mode, child_means)
        bad += sum(abs(u - w) > 1e-9 for i in range(2) for u, w in zip(used[t][i], want[i]))
        # the return each node of this turn passes up to the joint action it continues
        rewards = [paired_reward(a, b) for a, b in zip(*texts[t])]
        child_means = [sum(rewards[n * G : (n + 1) * G]) / G for n in range(len(rewards) // G)]
    return bad


@pytest.mark.parametrize("joint_mode, num_turns", [("aligned", 1), ("cross", 1), ("aligned", 2)])
def test_every_updated_row_carries_the_advantage_of_what_it_sampled(tiny_agents, tmp_path, joint_mode, num_turns):
    from magrpo.feedback import CallableFeedback

    G = 4
    args = MAGRPOConfig(
        num_generations=G,
        batch_size=2,
        max_new_tokens=6,
        max_steps=1,
        num_turns=num_turns,
        joint_mode=joint_mode,
        discount=0.5,
        output_dir=str(tmp_path),
        log_samples_steps=0,
    )
    feedback = CallableFeedback(lambda request: ("again", "again")) if num_turns > 1 else None
    out = paired_step(
        tiny_agents, args, feedback=feedback
    ).last_step  # each agent's rollouts per turn and the advantages its update ran on
    captured = [(i, [turn.rollouts[i] for turn in out.turns], out.advantages[i]) for i in range(2)]
    assert len(captured[0][1]) == num_turns
    if num_turns > 1:  # full expansion: node k of turn 2 continues row k of turn 1, with that row's answers
        for i in range(2):
            first, second = captured[i][1]
            assert all(first.texts[k] in second.prompts[k] for k in range(len(second.prompts)))
    assert mismatched_rows(captured, G, joint_mode, num_turns) == 0
    # the check has teeth: one rolled advantage tensor is caught
    rolled = [(i, r, [torch.roll(adv[0], 1), *adv[1:]]) for i, r, adv in captured]
    assert mismatched_rows(rolled, G, joint_mode, num_turns) > 0


def test_the_trainer_gives_a_branch_solved_at_the_first_turn_its_absorbing_return(tiny_agents, tmp_path):
    """The issue's example through train_step: one joint action solves at turn 1 (5.5), three score
    2.0 and their revisions all pass. Absorbing returns: 5.5 * (1 + 0.9) = 10.45 for the early
    solver against 2.0 + 0.9 * 5.5 = 6.95 for the others, so the early solver's advantage is
    10.45 - 7.825 = +2.625 for both agents (it was -1.09 when a solved leaf earned its reward once)."""
    from magrpo.feedback import CallableFeedback

    def reward(*, completions, **_):
        return [5.5, 2.0, 2.0, 2.0] if len(completions) == 4 else [5.5] * len(completions)

    args = MAGRPOConfig(
        num_generations=4,
        max_new_tokens=2,
        max_steps=1,
        num_turns=2,
        discount=0.9,
        early_stop_reward=5.5,
        output_dir=str(tmp_path),
        log_samples_steps=0,
    )
    trainer = MAGRPOTrainer(
        agents=tiny_agents,
        reward_func=reward,
        train_dataset=[{"q": "q"}],
        formatters=[lambda x: x["q"]] * 2,
        args=args,
        feedback=CallableFeedback(lambda request: ("again", "again")),
    )
    trainer.train_step(trainer.next_batch())
    for advantages in trainer.last_step.advantages:  # agent 0, agent 1
        assert advantages[0].tolist() == pytest.approx([2.625, -0.875, -0.875, -0.875], abs=1e-6)
        assert advantages[1].tolist() == pytest.approx([0.0] * 12, abs=1e-6)  # the revisions all tie


def test_a_step_logs_the_mean_of_every_figure_the_scorer_reports(tiny_agents, tmp_path):
    def scorer(*, completions, **_):
        return [
            {"reward": float(len(a)), "words": float(len(b.split())), "label": "not a figure"} for a, b in completions
        ]

    args = MAGRPOConfig(num_generations=4, batch_size=2, max_new_tokens=3, max_steps=1, output_dir=str(tmp_path))
    trainer = MAGRPOTrainer(
        agents=tiny_agents,
        scorer=scorer,
        train_dataset=[{"q": "q"}, {"q": "a b"}],
        formatters=[lambda x: x["q"]] * 2,
        args=args,
    )
    metrics, samples = trainer.train_step(trainer.next_batch())
    assert metrics["figures/words"] == pytest.approx(sum(len(s["completions"][1].split()) for s in samples) / 8)
    assert metrics["figures/reward"] == pytest.approx(metrics["reward_mean"])
    assert "figures/label" not in metrics


def _changed_fraction(tokenizer, tmp_path, **config):
    """The share of the layers' weights that one AdamW step at lr 1e-5 changes."""
    model = make_tiny_model(len(tokenizer), seed=6).to(config.pop("weights", torch.float32))
    agents = build_agents([(model, tokenizer)], device="cpu")
    before = {n: p.detach().clone() for n, p in agents[0].model.named_parameters() if ".layers." in n}
    args = MAGRPOConfig(
        num_agents=1,
        num_generations=8,
        max_new_tokens=4,
        max_steps=1,
        learning_rate=1e-5,
        output_dir=str(tmp_path),
        save_steps=0,
        save_minutes=0,
        **config,
    )
    trainer = MAGRPOTrainer(
        agents=agents,
        reward_func=lambda completions, **_: [float(len(c)) for c in completions],  # one agent: strings
        train_dataset=[{"q": "q a"}],
        formatters=[lambda x: x["q"]],
        args=args,
    )
    trainer.train(progress=False)
    params = dict(agents[0].model.named_parameters())
    changed = sum(int((params[n] != b).sum()) for n, b in before.items())
    return changed / sum(b.numel() for b in before.values()), trainer


def test_float32_weights_with_bf16_autocast_learn_where_pure_bf16_weights_round_updates_away(tiny_tokenizer, tmp_path):
    mixed, trainer = _changed_fraction(tiny_tokenizer, tmp_path / "mixed", autocast="bfloat16")
    assert trainer.team.precision.autocast == torch.bfloat16 and trainer.agents[0].model.dtype == torch.float32
    with pytest.warns(
        UserWarning, match=r"the trainable weights are bfloat16: AdamW updates smaller than a weight's rounding step"
    ):
        pure, _ = _changed_fraction(tiny_tokenizer, tmp_path / "pure", weights=torch.bfloat16, autocast="no")
    print(f"weights changed by one lr 1e-5 step: float32 + bf16 autocast {mixed:.3f}, pure bf16 {pure:.3f}")
    assert mixed > 0.95 and pure < 0.3


def test_the_default_precision_on_a_cpu_is_float32_whatever_it_computes_in_hardware(cpu_agents, tmp_path):
    trainer = MAGRPOTrainer(
        agents=cpu_agents,
        reward_func=letter_count_reward,
        train_dataset=[{"q": "q"}],
        formatters=[lambda x: x["q"]] * 2,
        args=MAGRPOConfig(output_dir=str(tmp_path)),
    )
    assert (trainer.args.dtype, trainer.args.autocast, trainer.args.rollout_dtype) == ("auto", "auto", "auto")
    assert all(a.model.dtype == torch.float32 for a in trainer.agents)  # master weights stay float32
    # bf16 learned less on a CPU that computes it (docs/performance.md): float32 there too, exactly on-policy
    assert trainer.team.precision == Precision(autocast=None, rollout_dtype="same")
    assert all(a.sampling_copy is None for a in trainer.agents)
    assert not bf16_by_default(torch.device("cpu"))
    assert bf16_by_default(torch.device("cuda")) == (
        torch.cuda.is_available() and computes_bf16_in_hardware(torch.device("cuda"))
    )
    with pytest.raises(
        ConfigError, match="autocast='fp8' is not valid; choose one of 'auto', 'no', 'bfloat16', 'float16'"
    ):
        MAGRPOConfig(autocast="fp8")


@pytest.mark.parametrize(
    "settings, bf16_default, expected",
    [
        ({}, True, (torch.bfloat16, "bfloat16")),
        ({}, False, (None, "same")),
        ({"autocast": "no"}, True, (None, "same")),  # an exact float32 update samples with its own weights
        ({"rollout_backend": "plain"}, True, (torch.bfloat16, "same")),  # generate has no log-probs for a copy
        ({"autocast": "bfloat16"}, False, (torch.bfloat16, "bfloat16")),
        ({"rollout_dtype": "same"}, True, (torch.bfloat16, "same")),
        ({"autocast": "no", "rollout_dtype": "bfloat16"}, False, (None, "bfloat16")),
    ],
)
def test_auto_precision_is_bf16_exactly_where_the_devices_take_it_by_default(
    tiny_agents, settings, bf16_default, expected
):
    args = MAGRPOConfig(**settings)
    precision = resolve_precision(args, tiny_agents, OneProcess(), bf16_default=lambda device: bf16_default)
    assert (precision.autocast, precision.rollout_dtype) == expected


def test_bf16_asked_for_on_a_device_without_bf16_hardware_is_warned_of_by_name(cpu_agents):
    import warnings

    from magrpo.prepare import warn_if_bf16_is_emulated

    asked = Precision(autocast=torch.bfloat16, rollout_dtype="bfloat16")
    with pytest.warns(UserWarning, match=r"autocast=bfloat16 and rollout_dtype=bfloat16 on cpu, which has no bf16"):
        warn_if_bf16_is_emulated(asked, cpu_agents, bf16_in_hardware=lambda device: False)
    with pytest.warns(UserWarning, match=r"^rollout_dtype=bfloat16 on cpu"):
        warn_if_bf16_is_emulated(Precision(None, "bfloat16"), cpu_agents, bf16_in_hardware=lambda device: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_bf16_is_emulated(asked, cpu_agents, bf16_in_hardware=lambda device: True)
        warn_if_bf16_is_emulated(Precision(None, "same"), cpu_agents, bf16_in_hardware=lambda device: False)


def test_a_closed_trainer_lets_go_of_its_models_and_optimisers_and_says_so_when_used(tiny_tokenizer, tmp_path):
    import gc
    import weakref

    models = [make_tiny_model(len(tiny_tokenizer), seed=s) for s in (1, 2)]
    held = [weakref.ref(m) for m in models]
    with MAGRPOTrainer(
        agents=[(m, tiny_tokenizer) for m in models],
        reward_func=letter_count_reward,
        train_dataset=[{"q": "q a"}],
        formatters=[lambda x: x["q"]] * 2,
        args=MAGRPOConfig(max_new_tokens=2, max_steps=1, output_dir=str(tmp_path), log_samples_steps=0),
    ) as trainer:
        trainer.train(progress=False)
        optimisers = [weakref.ref(o) for o in trainer.optimizers]
    del models
    gc.collect()
    assert [r() for r in optimisers + held] == [None] * 4  # the trainer held the last references
    assert (tmp_path / "final" / "agent_0").is_dir()  # the run's files stay
    with pytest.raises(
        RuntimeError, match=r"this MAGRPOTrainer was closed \(close\(\), or the end of its with-block\)"
    ):
        trainer.evaluate([{"q": "q"}])
    trainer.close()  # a second close does nothing
