"""The model cache's location, the quieting of transformers' own progress bars, and the
``architectures`` every converted model's config names (vLLM picks its model class from it)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from magrpo.models.store import (
    cache_dir,
    causal_lm_architectures,
    ensure_architectures,
    mend_converted,
    quiet_library_progress,
    untied_state_dict,
)


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MAGRPO_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MAGRPO_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "magrpo"


def test_library_bars_are_hidden_then_restored_unless_verbose(monkeypatch):
    monkeypatch.delenv("MAGRPO_VERBOSE", raising=False)
    hf_logging.enable_progress_bar()
    with quiet_library_progress():
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled()

    hf_logging.disable_progress_bar()  # a user who turned them off keeps them off
    with quiet_library_progress():
        assert not hf_logging.is_progress_bar_enabled()
    assert not hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()

    monkeypatch.setenv("MAGRPO_VERBOSE", "1")
    with quiet_library_progress():
        assert hf_logging.is_progress_bar_enabled()


def config_of(folder) -> dict:
    return json.loads((Path(folder) / "config.json").read_text())


def as_an_older_magrpo_left_it(folder) -> None:
    """The entry's config.json without ``architectures``, as magrpo wrote it before naming them."""
    config = config_of(folder)
    del config["architectures"]
    (Path(folder) / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def test_a_gguf_of_another_family_converts_naming_its_class_and_an_older_entry_is_mended_in_place(
    monkeypatch, tmp_path
):
    """A Qwen2 GGUF (biases, no q/k permutation: not the bundled model's family) converts to its
    very weights with ``architectures`` in its config; an entry converted before, without it,
    gets it on its next use and is not converted again."""
    from magrpo.models.presets import bundled_gguf_path
    from magrpo.models.store import converted_gguf_dir
    from tests.models.gguf_files import tiny_qwen2, write_gguf

    monkeypatch.setenv("MAGRPO_CACHE", str(tmp_path / "cache"))
    written = tiny_qwen2(49152, seed=5)
    path = write_gguf(written, tmp_path / "tiny-qwen2.gguf", bundled_gguf_path(), name="tiny-test-qwen2")
    converted = converted_gguf_dir(path)
    assert config_of(converted)["architectures"] == ["Qwen2ForCausalLM"]
    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32)
    assert type(model) is type(written)
    expected = written.state_dict()
    assert model.state_dict().keys() == expected.keys()
    for name, weight in model.state_dict().items():
        assert torch.equal(weight, expected[name]), name

    as_an_older_magrpo_left_it(converted)
    weights = (converted / "model.safetensors").stat().st_mtime_ns
    assert converted_gguf_dir(path) == converted
    assert config_of(converted)["architectures"] == ["Qwen2ForCausalLM"]
    assert (converted / "model.safetensors").stat().st_mtime_ns == weights  # mended, not converted again
    stamp = (converted / "config.json").stat().st_mtime_ns
    assert converted_gguf_dir(path) == converted
    assert (converted / "config.json").stat().st_mtime_ns == stamp  # a whole entry is left alone


def old_entry(folder: Path, model) -> Path:
    """A cache entry as an older magrpo converted it: the config without ``architectures``, the
    weights with each tied tensor once."""
    folder.mkdir(parents=True)
    save_file(untied_state_dict(model), str(folder / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(folder)
    assert "architectures" not in config_of(folder)
    return folder


def tiny_gemma3(seed: int = 0):
    """A tiny Gemma-3 text model: the family vLLM takes for an embedding model without its class
    named (``model_type`` gemma3_text). Heads of 32, which vLLM's CPU attention serves."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=256,
        sliding_window=16,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return Gemma3ForCausalLM(config).eval()


def tiny_qwen2_model():
    from tests.models.gguf_files import tiny_qwen2

    return tiny_qwen2(64)


def test_the_named_models_entries_are_mended_on_use_without_a_conversion(monkeypatch, tmp_path):
    """The bundled model's and a preset's entries, converted by an older magrpo, name their
    class once used; nothing is converted (no GGUF file is even looked for)."""
    from magrpo.models import presets

    monkeypatch.setenv("MAGRPO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(presets, "convert_gguf", None)  # calling it would fail
    bundled = old_entry(tmp_path / "cache" / "models" / presets.BUNDLED_CACHE_NAME, tiny_gemma3())
    preset = old_entry(tmp_path / "cache" / "models" / "qwen2.5-coder-0.5b", tiny_qwen2_model())
    assert presets.named_model_dir("default") == bundled
    assert presets.named_model_dir("qwen2.5-coder-0.5b") == preset
    assert config_of(bundled)["architectures"] == ["Gemma3ForCausalLM"]
    assert config_of(preset)["architectures"] == ["Qwen2ForCausalLM"]


def test_a_folder_written_from_a_model_names_the_models_transformers_class(tmp_path):
    """``ensure_architectures(folder, model)``: what an engine's model folder calls, for a model
    built in memory (no ``architectures`` in its config), under LoRA, or of a user's subclass."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2ForCausalLM

    class MyQwen(Qwen2ForCausalLM):
        pass

    model = tiny_qwen2_model()
    for given, expected in [
        (model, ["Qwen2ForCausalLM"]),
        (get_peft_model(model, LoraConfig(r=2, target_modules="all-linear")), ["Qwen2ForCausalLM"]),
        (MyQwen(model.config), ["Qwen2ForCausalLM"]),
        (tiny_gemma3(), ["Gemma3ForCausalLM"]),
    ]:
        assert causal_lm_architectures(given) == expected
        folder = tmp_path / f"{type(given).__name__}-{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        base = given.get_base_model() if hasattr(given, "get_base_model") else given
        base.config.save_pretrained(folder)
        (folder / "config.json").chmod(0o640)
        assert ensure_architectures(folder, given)
        assert config_of(folder)["architectures"] == expected
        assert (folder / "config.json").stat().st_mode & 0o777 == 0o640  # the file's permissions kept
        assert not ensure_architectures(folder, given)  # named already: left alone
        assert sorted(p.name for p in folder.iterdir()) == ["config.json"]  # no temporary left


def test_an_entry_of_no_causal_lm_type_or_a_read_only_cache_is_left_as_it_is(monkeypatch, tmp_path):
    from magrpo.models import store

    folder = tmp_path / "entry"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "clip"}))
    assert not ensure_architectures(folder)
    assert config_of(folder) == {"model_type": "clip"}

    (folder / "config.json").write_text(json.dumps({"model_type": "gemma3_text"}))

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(folder))

    monkeypatch.setattr(store.tempfile, "mkstemp", refused)  # a shared cache this user may not write
    with pytest.raises(PermissionError):
        ensure_architectures(folder)
    assert mend_converted(folder) == folder  # used as it is: transformers loads it all the same
    assert config_of(folder) == {"model_type": "gemma3_text"}


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_vllm_serves_a_mended_gemma3_entry_as_the_causal_lm_transformers_runs(monkeypatch, tmp_path):
    """Unmended, vLLM takes this entry for an embedding model and fails to load its weights;
    mended, it starts an engine whose greedy tokens are transformers' own."""
    import vllm.envs
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    model = tiny_gemma3(seed=1)
    folder = mend_converted(old_entry(tmp_path / "gemma3", model))
    assert config_of(folder)["architectures"] == ["Gemma3ForCausalLM"]
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    vllm.envs.disable_envs_cache()
    set_num_threads = torch.set_num_threads
    try:
        llm = LLM(
            model=str(folder),
            dtype="float32",
            enforce_eager=True,
            max_model_len=128,
            skip_tokenizer_init=True,
            kv_cache_memory_bytes=2**26,
        )
    finally:
        torch.set_num_threads = set_num_threads  # vLLM's CPU worker replaces it by a no-op
    prompts = [[1, 5, 9, 200, 3], [1, 77]]
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True, detokenize=False)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    with torch.no_grad():
        expected = [
            model.generate(torch.tensor([p]), max_new_tokens=8, min_new_tokens=8, do_sample=False)[0, len(p) :].tolist()
            for p in prompts
        ]
    assert [list(output.outputs[0].token_ids) for output in outputs] == expected
