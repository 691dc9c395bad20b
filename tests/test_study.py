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


def test_the_95_percent_interval_is_students_t_over_the_seeds(study):
    # three seeds: df 2, t = 4.303; stdev of (1, 2, 3) is 1; half-width 4.303 / sqrt(3)
    mean, half = study.mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 / 3**0.5, rel=1e-12)
    assert study.mean_interval([0.7]) == (0.7, 0.0)  # one run (an untrained baseline): no interval
    assert study.mean_interval([0.5] * 40)[1] == 0.0


def test_the_single_model_answers_on_the_same_budget_trained_or_not(study, tmp_path):
    two_turns = arguments(tmp_path, turns=2, max_new_tokens=128)
    # the trained single model and the untrained one both answer with the team's tokens over its turns
    assert study.setup_tokens("single", two_turns) == 256
    assert study.setup_tokens("parallel", two_turns) == study.setup_tokens("discussion", two_turns) == 128


def test_the_header_names_the_items_evaluated_not_the_items_asked(study, tmp_path):
    args = arguments(tmp_path, eval_items=50, batch_size=1, max_new_tokens=64, turns=1, lora=False)
    runs = {"team": [{"seed": 0, "curve": [0.1], "held_out": {"reward": 0.5, "items": 8.0}}]}
    assert study.evaluated_items(runs, args) == 8
    study.write_markdown(tmp_path / "results.md", {"team": {"reward": (0.5, 0.0)}}, runs, args, 60.0)
    assert "8 held-out items" in (tmp_path / "results.md").read_text()


@pytest.fixture(scope="module")
def results_doc():
    spec = importlib.util.spec_from_file_location("results_doc", STUDY.parent / "results_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_separates_only_where_the_intervals_do_not_overlap(results_doc):
    assert results_doc.compare([0.6, 0.1], [0.4, 0.05]) == "above"  # 0.5 > 0.45
    assert results_doc.compare([0.3, 0.05], [0.5, 0.1]) == "below"
    assert results_doc.compare([0.5, 0.1], [0.45, 0.0]) == "not separated from"
    assert results_doc.compare([0.5, 0.05], [0.4, 0.05]) == "not separated from"  # they touch: not separated


def test_the_verdicts_need_two_seeds_and_name_the_missing_ones(results_doc):
    study = {
        "args": {"seeds": 3},
        "runs": {"team": [{"seed": s} for s in range(3)], "single-grpo": [{"seed": 0}], "parallel": [{"seed": None}]},
        "summary": {
            "team": {"reward_normalised": [0.6, 0.05]},
            "single-grpo": {"reward_normalised": [0.2, 0.0]},
            "parallel": {"reward_normalised": [0.3, 0.0]},
        },
    }
    lines = results_doc.trained_verdicts(study, "")
    assert "Cut short by this 2-core CPU: single-grpo has 1 of 3 seeds." in lines
    assert lines[-1] == (
        "On held-out normalised return (95% intervals): team is above the untrained team; "
        "a system with one seed has no interval, so no verdict."
    )


def test_each_precision_names_its_own_system_and_sets_the_config_fields(study, tmp_path):
    assert study.system_name("team", "default") == "team"
    assert study.system_name("team", "bf16-sampling") == "team@bf16-sampling"
    assert study.base_system("team@bf16-sampling") == "team"
    args = arguments(tmp_path, batch_size=1, max_new_tokens=8, lora=False)
    fp32 = study.config(args, 0, tmp_path, **study.PRECISIONS["float32"])
    assert (fp32.autocast, fp32.rollout_dtype) == ("no", "same")
    sampling = study.config(args, 0, tmp_path, **study.PRECISIONS["bf16-sampling"])
    assert (sampling.autocast, sampling.rollout_dtype) == ("no", "bfloat16")
    default = study.config(args, 0, tmp_path, **study.PRECISIONS["default"])
    assert (default.autocast, default.rollout_dtype) == ("auto", "auto")


def test_the_header_names_the_commit_machine_and_resolved_precision_of_the_runs(study, tmp_path):
    args = arguments(tmp_path, eval_items=8, batch_size=1, max_new_tokens=64, turns=1, lora=False)
    machine = {
        "commit": "abc123",
        "dirty": False,
        "python": "3.11.7",
        "packages": {"torch": "2.13.0+cpu", "transformers": "5.19.0"},
        "cpu": {"model": "AMD EPYC", "cores": 2, "flags": ["avx2"]},
        "gpu": None,
    }
    runs = {
        "team@float32": [
            {"seed": 0, "curve": [0.1], "held_out": {"reward": 0.5}, "produced_by": machine}
            | {"precision": {"autocast": "no", "rollout_dtype": "same"}}
        ]
    }
    study.write_markdown(tmp_path / "results.md", {"team@float32": {"reward": (0.5, 0.0)}}, runs, args, 60.0)
    text = (tmp_path / "results.md").read_text()
    assert (
        "Produced by commit `abc123`; AMD EPYC x2 [avx2]; Python 3.11.7, torch 2.13.0+cpu, transformers 5.19.0. "
        "Precision as resolved: team@float32: autocast no, sampling same." in text
    )
    assert "| team@float32 | 1 |" in text
