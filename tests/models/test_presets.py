"""Model presets that ship split over wheels: joined in order, checked by size and sha256, cached.

The mechanics run everywhere on small real part files in throw-away packages; the real
``qwen2.5-coder-0.5b`` preset (a 490 MB opt-in install) is exercised where it is installed."""

from __future__ import annotations

import hashlib
import importlib.util

import pytest

from magrpo.models import ModelError, presets
from magrpo.sampling import SamplingSettings


def _fake_preset(tmp_path, monkeypatch, chunks: list[bytes], *, sha256: str | None = None) -> str:
    site = tmp_path / "site"
    packages = []
    for i, chunk in enumerate(chunks):
        package = f"magrpo_fake_part{i}"
        (site / package / "data").mkdir(parents=True)
        (site / package / "__init__.py").write_text("")
        (site / package / "data" / f"part{i}.bin").write_bytes(chunk)
        packages.append(package)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("MAGRPO_CACHE", str(tmp_path / "cache"))
    joined = b"".join(chunks)
    preset = presets.GGUFPreset(
        description="test",
        packages=tuple(packages),
        part_glob="data/part*.bin",
        size=len(joined),
        sha256=sha256 or hashlib.sha256(joined).hexdigest(),
        pip_install="pip install fake-parts",
    )
    monkeypatch.setitem(presets.PRESETS, "fake", preset)
    return "fake"


def test_parts_are_joined_in_package_order_and_cached(tmp_path, monkeypatch):
    chunks = [b"GGUF" + bytes(range(7)), b"second part", b"\x00" * 1000]
    name = _fake_preset(tmp_path, monkeypatch, chunks)
    path = presets.joined_gguf(name)
    assert path.read_bytes() == b"".join(chunks)
    assert path == tmp_path / "cache" / "gguf" / "fake.gguf"
    assert presets.joined_gguf(name) == path  # found in the cache the second time


def test_a_part_that_does_not_hash_right_is_refused_and_nothing_is_left(tmp_path, monkeypatch):
    name = _fake_preset(tmp_path, monkeypatch, [b"abc", b"def"], sha256="0" * 64)
    with pytest.raises(
        ModelError, match=r"model preset 'fake': the joined parts do not match .*reinstall: pip install fake-parts"
    ):
        presets.joined_gguf(name)
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []


def test_a_missing_part_names_the_install_command(tmp_path, monkeypatch):
    name = _fake_preset(tmp_path, monkeypatch, [b"abc"])
    monkeypatch.setitem(
        presets.PRESETS,
        name,
        presets.GGUFPreset(
            description="test",
            packages=("magrpo_fake_part0", "magrpo_no_such_part"),
            part_glob="data/part*.bin",
            size=3,
            sha256="0" * 64,
            pip_install="pip install fake-parts",
        ),
    )
    with pytest.raises(ModelError, match=r"not installed \(missing magrpo_no_such_part\); run: pip install fake-parts"):
        presets.joined_gguf(name)


QWEN_INSTALLED = all(importlib.util.find_spec(p) for p in presets.PRESETS["qwen2.5-coder-0.5b"].packages)


@pytest.mark.skipif(
    not QWEN_INSTALLED,
    reason="opt-in preset wheels not installed: " + presets.PRESETS["qwen2.5-coder-0.5b"].pip_install,
)
def test_the_qwen_preset_loads_and_writes_python():
    from magrpo.models import build_agents
    from magrpo.sampling.fast import sample_fast
    from magrpo.tasks.coding import load_humaneval, main_prompt

    agent = build_agents(["qwen2.5-coder-0.5b"], device="cpu", dtype="float32")[0]
    assert agent.model.config.model_type == "qwen2" and agent.model.num_parameters() > 400_000_000
    item = load_humaneval("eval")[0]
    rollout = sample_fast(
        agent, [main_prompt(item)], SamplingSettings(num_generations=1, max_new_tokens=48, temperature=0.0)
    )
    assert f"def {item['entry_point']}(" in rollout.texts[0]
