"""What a run shows and leaves behind: the run directory (the resolved config, what produced it,
metrics.jsonl, samples.jsonl, checkpoint folders, the reward curve) and the progress bar of a
training run."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from magrpo.config import MAGRPOConfig, dump_yaml
from magrpo.run_folder import RunFolder


class RunLog:
    """A run folder. ``resume=True`` keeps the logs of the run it continues (see :meth:`resume_at`).
    ``writes=False`` (every data-parallel rank but the first) reads the folder and writes nothing."""

    def __init__(
        self,
        output_dir: str | Path,
        config: MAGRPOConfig,
        extra: dict[str, Any] | None = None,
        *,
        resume: bool = False,
        writes: bool = True,
    ) -> None:
        self.folder = RunFolder(output_dir)
        self.dir = self.folder.path
        self.writes = writes
        self.metrics_path = self.folder.metrics
        self.samples_path = self.folder.samples
        if not writes:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        resolved = {"config": config.to_dict(), **(extra or {})}
        self.folder.config.write_text(dump_yaml(resolved))
        self.record_provenance(resume)
        if not resume:
            for path in (self.metrics_path, self.samples_path):  # a re-used directory starts afresh
                path.unlink(missing_ok=True)

    def record_provenance(self, resume: bool) -> None:
        """``provenance.json``: what produces this sitting of the run (the commit, the versions of
        magrpo, torch, transformers, peft and vLLM, the CPU and GPU), after those of the sittings
        it resumes (a run resumed elsewhere shows it)."""
        from magrpo.provenance import provenance

        path, sittings = self.folder.provenance, []
        if resume and path.is_file():
            try:
                sittings = list(json.loads(path.read_text())["sittings"])
            except (ValueError, KeyError, TypeError):
                sittings = []  # a damaged record: this sitting's stands alone
        sittings.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "resumed": resume, **provenance()})
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"sittings": sittings}, indent=1) + "\n")
        os.replace(tmp, path)

    def resume_at(self, step: int) -> list[dict[str, Any]]:
        """Drop the rows logged after ``step`` (a run killed after its last checkpoint logged them;
        the resumed run logs them again) and return the metrics rows up to it."""
        kept: list[dict[str, Any]] = []
        for path in (self.metrics_path, self.samples_path):
            rows = [r for r in read_jsonl_rows(path) if r.get("step", 0) <= step]
            if self.writes:
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
                os.replace(tmp, path)  # a kill during the rewrite leaves the old file, never half of it
            if path == self.metrics_path:
                kept = rows
        return kept

    def metrics(self, row: dict[str, Any]) -> None:
        if self.writes:
            _append_jsonl(self.metrics_path, [row])

    def samples(self, step: int, rows: Sequence[dict[str, Any]]) -> None:
        if self.writes:
            _append_jsonl(self.samples_path, [{"step": step, **row} for row in rows])

    def held_out(self, when: str, figures: dict[str, float], samples: Sequence[dict[str, Any]]) -> None:
        """The held-out figures ``when`` ("before" or "after" training) and the answers behind them."""
        if self.writes:
            self.folder.held_out(when).write_text(json.dumps(figures, indent=2))
            path = self.folder.held_out_samples(when)
            path.unlink(missing_ok=True)
            _append_jsonl(path, samples)

    def write_json(self, name: str, payload: Any) -> Path:
        path = self.dir / name
        if self.writes:
            path.write_text(json.dumps(payload, indent=2))
        return path

    def checkpoint_dir(self, step: int, suffix: str = "") -> Path:
        return self.folder.checkpoint(step, suffix)

    def final_dir(self) -> Path:
        return self.folder.final

    def plot_rewards(self, history: Sequence[dict[str, Any]]) -> Path | None:
        """reward_curve.png: mean joint reward per step with its min-max band, the held-out mean
        reward before and after training where the folder has it (eval_before.json,
        eval_after.json), and each critic's mean value of the nodes (IAC, MAAC), which should
        follow it (for one turn, the mean return)."""
        if not history or not self.writes:
            return None
        from magrpo.plots import draw_reward, pyplot

        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 3.8))
        draw_reward(ax, history, {when: self.read_held_out(when) for when in ("before", "after")})
        steps = [h["step"] for h in history]
        for key in [k for k in history[0] if k.endswith("/value_mean")]:
            ax.plot(steps, [h.get(key, float("nan")) for h in history], linestyle="--", label=f"{key} (critic)")
        ax.set_title(f"joint reward per step: {self.dir.name}", fontsize=10)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        path = self.folder.reward_curve
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path

    def read_held_out(self, when: str) -> dict[str, Any] | None:
        """The held-out figures ``when`` ("before", "after") in the folder, or None."""
        path = self.folder.held_out(when)
        return json.loads(path.read_text()) if path.is_file() else None


def read_jsonl_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL log; a last line torn by a kill mid-write is dropped (its step is
    logged again by the resumed run), any other bad line is an error naming the file."""
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise ValueError(f"{str(path)!r} line {number} is not valid JSON; the run log is damaged") from None
    return rows


def _append_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with path.open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        f.flush()


def critic_figure(metrics: dict[str, Any]) -> str:
    """IAC, MAAC: how far the critics are from the returns (their mean value loss); "" without critics."""
    values = [v for k, v in metrics.items() if k.endswith("/value_loss")]
    return f"value loss {sum(values) / len(values):.3f}" if values else ""


def step_line(metrics: dict[str, Any], total: int) -> str:
    """One plain line for a step, for logs: the step, the mean joint reward, each agent's loss,
    the critics' value loss, completion tokens/s and the step's seconds."""
    losses = [f"{v:+.4f}" for k, v in sorted(metrics.items()) if k.startswith("agent_") and k.endswith("/loss")]
    critic = critic_figure(metrics)
    critic = f"  {critic}" if critic else ""
    return (
        f"step {metrics['step']}/{total}  reward {metrics['reward_mean']:+.3f}  loss {' '.join(losses) or '-'}"
        f"{critic}  {metrics['tokens_per_second']:.0f} tok/s  {metrics['seconds']:.1f} s"
    )


@contextlib.contextmanager
def progress_bar(enabled: bool | str, total: int, completed: int = 0) -> Iterator[Callable[[dict[str, Any]], None]]:
    """Progress over ``total`` steps; the yielded function advances it by one step's metrics.
    ``enabled``: True, a rich bar on a terminal (step, mean joint reward, completion tokens/s, the
    critics' value loss, elapsed and remaining time) and one plain line per step elsewhere (a log
    file); ``"lines"``: the plain lines; False: nothing."""
    if not enabled:
        yield lambda metrics: None
        return
    if enabled == "lines" or not sys.stdout.isatty():
        yield lambda metrics: print(step_line(metrics, total), flush=True)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[bold]step"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn("reward {task.fields[reward]}"),
        TextColumn("{task.fields[tps]} tok/s"),
        TextColumn("{task.fields[critic]}"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
    )
    with Progress(*columns) as progress:
        task = progress.add_task("train", total=total, completed=completed, reward="-", tps="-", critic="")

        def advance(metrics: dict[str, Any]) -> None:
            progress.update(
                task,
                advance=1,
                reward=f"{metrics['reward_mean']:+.3f}",
                tps=f"{metrics['tokens_per_second']:.0f}",
                critic=critic_figure(metrics),
            )

        yield advance


__all__ = ["RunLog", "progress_bar", "read_jsonl_rows", "step_line"]
