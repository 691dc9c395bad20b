"""What produced a study's or a benchmark's figures: :mod:`magrpo.provenance`, which every run
folder records too (``provenance.json``); the benchmarks import it from here by name."""

from __future__ import annotations

from magrpo.provenance import (  # noqa: F401
    PACKAGES,
    commit,
    cpu,
    describe,
    gpu,
    machine_kind,
    package_versions,
    provenance,
)

__all__ = ["commit", "cpu", "describe", "gpu", "machine_kind", "package_versions", "provenance"]
