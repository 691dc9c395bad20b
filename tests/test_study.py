"""benchmarks/study.py: a study cut short resumes with the runs it has, and only with the same settings."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

STUDY = Path(__file__).resolve().parents[1] / "benchmarks" / "study.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("study", STUDY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def arguments(output: Path, **changes) -> argparse.Namespace:
    values = dict(
        task="coding",
        model="default",
        seeds=3,
        steps=3,
        num_generations=4,
        lr=1e-4,
        expand_k=1,
        systems="team",
        device="auto",
        output=output,
        resume=True,
        rerun="",
    )
    values.update(changes)
    return argparse.Namespace(**values)


def run(seed):
    return {"seed": seed, "curve": [0.1], "held_out": {"reward": 0.5}}


@pytest.fixture
def earlier(study, tmp_path):
    recorded = study.recorded_args(arguments(tmp_path / "old"))
    del recorded["expand_k"], recorded["rerun"]  # written before these options existed: their defaults held
    (tmp_path / "results.json").write_text(
        json.dumps(
            {
                "args": recorded,
                "seconds": 120.0,
                "runs": {"team": [run(0), run(1), run(2)], "single-grpo": [run(0)], "discussion": [run(None)]},
            }
        )
    )
    return tmp_path


def test_the_finished_runs_are_kept_and_their_time_counted(study, earlier):
    runs, seconds = study.finished_runs(arguments(earlier, device="cpu", systems="team,single-grpo"))
    assert runs == {"team": [run(0), run(1), run(2)], "single-grpo": [run(0)], "discussion": [run(None)]}
    assert seconds == 120.0


def test_fewer_seeds_keep_only_those_seeds_and_the_untrained_runs(study, earlier):
    runs, _ = study.finished_runs(arguments(earlier, seeds=1))
    assert runs == {"team": [run(0)], "single-grpo": [run(0)], "discussion": [run(None)]}


def test_rerun_drops_the_named_systems(study, earlier):
    runs, _ = study.finished_runs(arguments(earlier, rerun="discussion,single-grpo"))
    assert runs == {"team": [run(0), run(1), run(2)]}
    with pytest.raises(
        SystemExit, match=r"--rerun: \['sequential'\] not among the runs of .*'discussion', 'single-grpo', 'team'"
    ):
        study.finished_runs(arguments(earlier, rerun="sequential"))


def test_settings_that_shape_the_figures_must_not_change(study, earlier):
    with pytest.raises(
        SystemExit, match=r"other settings \(earlier, now\): \{'steps': \(3, 4\), 'lr': \(0.0001, 2e-05\)\}"
    ):
        study.finished_runs(arguments(earlier, steps=4, lr=2e-5))


def test_a_study_without_results_starts_afresh(study, tmp_path):
    assert study.finished_runs(arguments(tmp_path)) == ({}, 0.0)
