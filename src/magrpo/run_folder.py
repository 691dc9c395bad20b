"""The layout of a run folder, in one place (the trainer, checkpoints and the CLI all read it):

RUN/config.yaml              the resolved config (and the CLI's task and models)
RUN/provenance.json          what produced it, per sitting (a resume adds one): the commit, the
                             versions of magrpo, torch, transformers, peft, vLLM, the CPU and GPU
RUN/metrics.jsonl            one row per step
RUN/samples.jsonl            per joint action: the item, each agent's chat messages and completion,
                             the joint reward and its levels, the return, the advantages
RUN/eval_before.json         the held-out figures before and after training (the CLI's), and
RUN/eval_after.json          the answers behind them: eval_before_samples.jsonl,
                             eval_after_samples.jsonl
RUN/reward_curve.png
RUN/checkpoints/step-N/      full, resumable checkpoints (step-N-interrupted: weights only)
RUN/final/agent_i/           the trained agents
"""

from __future__ import annotations

import re
from pathlib import Path

CONFIG_FILE = "config.yaml"
PROVENANCE_FILE = "provenance.json"
CHECKPOINTS = "checkpoints"
FINAL = "final"
#: a complete checkpoint's folder name; unfinished saves are hidden (``.step-N.*``)
STEP_DIR = re.compile(r"^step-(\d+)$")


class RunFolder:
    """The paths of one run folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def of(cls, path: str | Path) -> "RunFolder":
        """The run a path names: the run folder itself, or RUN for RUN/checkpoints/step-N."""
        path = Path(path)
        return cls(path.parent.parent if path.parent.name == CHECKPOINTS else path)

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def provenance(self) -> Path:
        return self.path / PROVENANCE_FILE

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def samples(self) -> Path:
        return self.path / "samples.jsonl"

    def held_out(self, when: str) -> Path:
        """The held-out figures ``when`` is "before" or "after" training (the CLI's evaluations)."""
        return self.path / f"eval_{when}.json"

    def held_out_samples(self, when: str) -> Path:
        """The held-out answers behind :meth:`held_out`'s figures (:mod:`magrpo.samples` rows)."""
        return self.path / f"eval_{when}_samples.jsonl"

    @property
    def reward_curve(self) -> Path:
        return self.path / "reward_curve.png"

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    def checkpoint(self, step: int, suffix: str = "") -> Path:
        return self.checkpoints / f"step-{step}{suffix}"

    @property
    def final(self) -> Path:
        return self.path / FINAL


__all__ = ["CHECKPOINTS", "CONFIG_FILE", "FINAL", "PROVENANCE_FILE", "STEP_DIR", "RunFolder"]
