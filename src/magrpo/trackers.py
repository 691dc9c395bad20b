"""Experiment trackers: every step's metrics also go to TensorBoard, Weights & Biases or MLflow
(``report_to``, TRL's name). None is a dependency: a tracker asked for but not installed is an
error that names the pip command, raised before training starts."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Mapping, Sequence

from magrpo.errors import ConfigError

_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def check_trackers_installed(names: Sequence[str]) -> None:
    """:class:`ConfigError` naming the pip command when a tracker of ``report_to`` is not installed
    (the trainer asks before it loads any model)."""
    missing = [n for n in names if importlib.util.find_spec(_PACKAGES[n]) is None]
    if missing:
        raise ConfigError(
            f"report_to={list(names)!r}: {', '.join(missing)} is not installed; "
            f"run: pip install {' '.join(_PACKAGES[n] for n in missing)}"
        )


class Trackers:
    """The trackers of one run; ``log(metrics, step)`` sends the numeric figures to each."""

    def __init__(self, names: Sequence[str], run_dir: str | Path, config: Mapping[str, Any]) -> None:
        check_trackers_installed(names)
        self._sinks: list[Any] = []
        run_dir = Path(run_dir)
        for name in names:
            if name == "tensorboard":
                from torch.utils.tensorboard import SummaryWriter

                self._sinks.append(("tensorboard", SummaryWriter(log_dir=str(run_dir / "tensorboard"))))
            elif name == "wandb":
                import wandb

                self._sinks.append(("wandb", wandb.init(dir=str(run_dir), config=dict(config), name=run_dir.name)))
            else:
                import mlflow

                mlflow.start_run(run_name=run_dir.name)
                mlflow.log_params({k: v for k, v in config.items() if isinstance(v, (int, float, str, bool))})
                self._sinks.append(("mlflow", mlflow))

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        figures = {
            k: float(v)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"
        }
        for kind, sink in self._sinks:
            if kind == "tensorboard":
                for key, value in figures.items():
                    sink.add_scalar(key, value, step)
                sink.flush()
            elif kind == "wandb":
                sink.log(figures, step=step)
            else:
                sink.log_metrics({k.replace("/", "."): v for k, v in figures.items()}, step=step)

    def log_samples(self, rows: Sequence[Mapping[str, Any]], step: int) -> None:
        """A logged step's samples (:mod:`magrpo.samples`) as text, to TensorBoard: each joint
        action's item, joint reward, advantages and completions."""
        from magrpo.samples import samples_markdown

        for kind, sink in self._sinks:
            if kind == "tensorboard" and rows:
                sink.add_text("samples", samples_markdown(rows), step)
                sink.flush()

    def close(self) -> None:
        for kind, sink in self._sinks:
            if kind == "tensorboard":
                sink.close()
            elif kind == "wandb":
                sink.finish()
            else:
                sink.end_run()
        self._sinks = []


__all__ = ["Trackers", "check_trackers_installed"]
