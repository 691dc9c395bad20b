"""benchmarks/study.py: a study cut short resumes with the runs it has, and only with the same settings;
benchmarks/difference.py and results_doc.py: verdicts come from a test of the difference."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    """benchmarks/NAME.py as a module (registered, as its dataclasses need)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def study():
    return load("study")


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
    return load("results_doc")


@pytest.fixture(scope="module")
def difference():
    return load("difference")


def mean(values):
    return sum(values) / len(values)


def variance(values):
    return sum((v - mean(values)) ** 2 for v in values) / (len(values) - 1)


def two_sided_p(t, df, steps=20_000):
    """P(|T| > |t|) of Student's t with df degrees of freedom: its density integrated (Simpson) from 0 to |t|."""
    c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
    density = [c * (1 + (abs(t) * i / steps) ** 2 / df) ** (-(df + 1) / 2) for i in range(steps + 1)]
    weights = [1 if i in (0, steps) else 4 if i % 2 else 2 for i in range(steps + 1)]
    return 1 - 2 * abs(t) / steps / 3 * sum(w * f for w, f in zip(weights, density))


# section 1's held-out reward per seed, to three decimals (the unrounded figures give t = 5.47):
# the MAGRPO team and single-agent GRPO
TEAM, SINGLE = [1.888, 1.510, 1.414], [0.675, 0.143, 0.501]


def test_two_trained_systems_are_compared_by_welchs_t_on_their_seeds(difference):
    se2 = variance(TEAM) / 3 + variance(SINGLE) / 3
    t = (mean(TEAM) - mean(SINGLE)) / math.sqrt(se2)
    df = se2**2 / ((variance(TEAM) / 3) ** 2 / 2 + (variance(SINGLE) / 3) ** 2 / 2)  # Welch-Satterthwaite
    d = difference.difference(TEAM, SINGLE)
    assert d.test == "Welch"
    assert d.difference == pytest.approx(1.604 - 1.319 / 3, rel=1e-12)
    assert (d.t, d.df) == (pytest.approx(t, rel=1e-9), pytest.approx(df, rel=1e-9))
    assert (round(t, 2), round(df, 2)) == (5.46, 3.98)
    assert d.p == pytest.approx(two_sided_p(t, df), abs=1e-6) and round(d.p, 3) == 0.006
    # the 95% interval's half-width is the t quantile at which the two-sided p is 0.05
    half = d.high - d.difference
    assert d.difference - d.low == pytest.approx(half, rel=1e-12)
    assert two_sided_p(half / math.sqrt(se2), df) == pytest.approx(0.05, abs=1e-6)
    assert (round(d.low, 3), round(d.high, 3)) == (0.571, 1.758)


def test_a_trained_system_is_tested_against_an_untrained_run_as_a_constant(difference):
    # df 2: P(|T| > t) = 1 - t / sqrt(2 + t^2), and the 0.975 quantile is 0.95 * sqrt(2 / (1 - 0.95^2))
    se = math.sqrt(variance(TEAM) / 3)
    t = (mean(TEAM) - 0.5808) / se
    d = difference.difference(TEAM, 0.5808)
    assert (d.test, d.df) == ("one-sample", 2)
    assert d.difference == pytest.approx(1.604 - 0.5808, rel=1e-12)
    assert d.t == pytest.approx(t, rel=1e-9) and round(t, 2) == 7.07
    assert d.p == pytest.approx(1 - t / math.sqrt(2 + t**2), rel=1e-9)
    half = 0.95 * math.sqrt(2 / (1 - 0.95**2)) * se
    assert (d.low, d.high) == (
        pytest.approx(d.difference - half, rel=1e-9),
        pytest.approx(d.difference + half, rel=1e-9),
    )


def test_figures_of_the_same_seeds_are_tested_on_their_differences(difference):
    after, before = [0.30, 0.35, 0.37], [0.20, 0.31, 0.36]  # differences 0.10, 0.04, 0.01
    d = difference.difference(after, before, paired=True)
    t = 0.05 / math.sqrt(variance([0.10, 0.04, 0.01]) / 3)
    assert (d.test, d.df) == ("paired", 2)
    assert d.difference == pytest.approx(0.05) and d.t == pytest.approx(t, rel=1e-9)
    assert d.p == pytest.approx(1 - t / math.sqrt(2 + t**2), rel=1e-9)
    with pytest.raises(ValueError, match="one figure of b per seed of a"):
        difference.difference(after, before[:2], paired=True)


def test_the_verdict_states_the_difference_its_interval_and_p(difference):
    assert difference.verdict("the team", "single-agent GRPO", difference.difference(TEAM, SINGLE)) == (
        "the team is above single-agent GRPO: +1.164 [0.571, 1.758], Welch t = 5.46, df 4.0, p = 0.006"
    )
    assert difference.verdict("single-agent GRPO", "the team", difference.difference(SINGLE, TEAM)) == (
        "single-agent GRPO is below the team: -1.164 [-1.758, -0.571], Welch t = -5.46, df 4.0, p = 0.006"
    )
    # t = 0.1 / (0.1 / sqrt(3)) = sqrt(3) at df 2: p = 1 - sqrt(3) / sqrt(5) = 0.225 (not below 0.05)
    level = difference.difference([0.5, 0.6, 0.7], 0.5)
    assert level.p == pytest.approx(1 - math.sqrt(3) / math.sqrt(5), rel=1e-9)
    assert difference.verdict("the team", "the untrained team", level) == (
        "the team is not separated from the untrained team: +0.100 [-0.148, 0.348], one-sample t = 1.73, df 2, p = 0.225"
    )
    far = difference.difference([10.0, 10.1, 10.2], [0.0, 0.1, 0.2])
    assert str(far).endswith("p < 0.001")


def test_one_seed_or_no_spread_leaves_the_difference_untested(difference):
    for d in (
        difference.difference([0.5, 0.5], [0.4, 0.4]),
        difference.difference([0.5, 0.5], 0.4),
        difference.difference([0.5], [0.3, 0.4]),
    ):
        assert math.isnan(d.p) and d.relation == "not separated from"
    assert str(difference.difference([0.5, 0.5], 0.4)) == "+0.100, untested: no spread over seeds"


def test_the_power_is_the_two_sample_t_tests_and_welchs_test_reaches_it(difference):
    # Cohen's tables (two-sided, 5%): 64 per group for d = 0.5, 26 for d = 0.8, 17 for d = 1 (power 0.807)
    assert [difference.seeds_for(1.0, d) for d in (0.5, 0.8, 1.0)] == [64, 26, 17]
    assert difference.seeds_for(0.2, 0.2) == 17 and round(difference.power(1.0, 1.0, 17), 3) == 0.807
    assert difference.power(1.0, 1.0, 16) < 0.8 < difference.power(1.0, 1.0, 17)
    # the difference 64 seeds separate with 80% power: just under d = 0.5, where the power is 0.8015
    assert difference.detectable(1.0, 64) == pytest.approx(0.4991, abs=1e-4)
    assert difference.power(0.3, difference.detectable(0.3, 10), 10) == pytest.approx(0.8, abs=1e-9)
    # the page's test is Welch's: drawn 20000 times at equal spreads, it separates as often as computed
    import numpy as np
    from scipy import stats

    rng = np.random.default_rng(0)
    sd, effect, seeds = 0.15, 0.2, 10
    a = rng.normal(effect, sd, size=(20_000, seeds))
    b = rng.normal(0.0, sd, size=(20_000, seeds))
    separated = (stats.ttest_ind(a, b, axis=1, equal_var=False).pvalue < 0.05).mean()
    assert separated == pytest.approx(difference.power(sd, effect, seeds), abs=0.01)
    with pytest.raises(ValueError, match="seeds=1: a test over seeds needs at least 2"):
        difference.power(sd, effect, 1)


def test_the_spread_is_pooled_over_the_systems_seeds(difference):
    # squares about each mean: 2 (1, 2, 3) and 2 (4, 6); degrees of freedom 2 + 1
    assert difference.pooled_sd([[1.0, 2.0, 3.0], [4.0, 6.0], [9.0]]) == pytest.approx(math.sqrt(4 / 3), rel=1e-12)
    with pytest.raises(ValueError, match=r"no group of \[1, 1\] seeds"):
        difference.pooled_sd([[1.0], [2.0]])


def test_the_verdicts_test_the_held_out_figures_of_the_seeds_and_name_the_missing_ones(results_doc):
    # summarize's maximum reward is 3: normalised team 0.6, 0.5, 0.5 against 0.3 untrained;
    # mean difference 0.2333, se 0.0577 / sqrt(3) = 0.0333, t = 7, p = 1 - 7 / sqrt(51) = 0.0198 at df 2
    study = {
        "args": {"seeds": 3, "task": "summarize"},
        "runs": {
            "team": [{"seed": s, "held_out": {"reward": r}} for s, r in ((2, 1.5), (0, 1.8), (1, 1.5))],
            "single-grpo": [{"seed": 0, "held_out": {"reward": 0.6}}],
            "parallel": [{"seed": None, "held_out": {"reward": 0.9}}],
        },
        "summary": {"team": {}, "single-grpo": {}, "parallel": {}},
    }
    assert results_doc.held_out(study, "team") == pytest.approx([0.6, 0.5, 0.5])  # in seed order
    assert results_doc.held_out(study, "parallel") == pytest.approx(0.3)  # one greedy run: a constant
    lines = results_doc.trained_verdicts(study, "")
    assert "Cut short by this 2-core CPU: single-grpo has 1 of 3 seeds." in lines
    assert lines[-4:] == [
        "On held-out normalised return (difference of means [95% interval], test):",
        "",
        "- the team is above the untrained team: +0.233 [0.090, 0.377], one-sample t = 7.00, df 2, p = 0.020",
        "- a system with one seed has no spread to test, so no verdict",
    ]


def test_the_powered_section_sizes_the_study_from_the_spread_measured_before(
    results_doc, difference, tmp_path, monkeypatch
):
    def written(folder, runs, seeds):
        (tmp_path / folder).mkdir()
        study = {"args": {"seeds": seeds, "task": "summarize", "resume": False, "eval_items": 8}}
        study |= {"runs": runs, "summary": {}}
        for system, system_runs in runs.items():
            study["summary"][system] = {
                "reward_normalised": [mean([r["held_out"]["reward"] / 3 for r in system_runs]), 0]
            }
        (tmp_path / folder / "results.json").write_text(json.dumps(study))
        (tmp_path / folder / "results.md").write_text("the study's table")

    def trained(*rewards):
        return [{"seed": seed, "held_out": {"reward": r}} for seed, r in enumerate(rewards)]

    def untrained(reward):
        return [{"seed": None, "held_out": {"reward": reward}}]

    monkeypatch.setattr(results_doc, "RESULTS", tmp_path)
    monkeypatch.setattr(results_doc, "LEDGER", tmp_path / "no-ledger.jsonl")
    # section 1: normalised team 0.6, 0.5, 0.5 (squares 0.00667), single-agent GRPO 0.2, 0.1, 0.3 (0.02): sd 0.0816
    written("summarize", {"team": trained(1.8, 1.5, 1.5), "single-grpo": trained(0.6, 0.3, 0.9)}, 3)
    written("critics", {"team": trained(0.9, 0.6, 0.6)}, 3)
    written("expand", {"parallel": untrained(2.64)}, 3)  # the untrained team at 0.88 of the maximum 3
    assert results_doc.planning_spread() == (
        pytest.approx(math.sqrt((0.02 / 3 + 0.02) / 4), rel=1e-9),
        "section 1's team, section 1's single-agent GRPO; 3 seeds each, 8 held-out items",
    )
    page = "\n".join(results_doc.powered_section())
    assert f"by {difference.seeds_for(math.sqrt((0.02 / 3 + 0.02) / 4), 0.2)} seeds per system" in page
    wide = statistics.stdev([0.6, 0.5, 0.5, 0.3, 0.2, 0.2])  # section 1's and section 5's teams as one system
    assert f"counts as spread): sd = {wide:.3f}, which asks for {difference.seeds_for(wide, 0.2)} seeds" in page
    assert page.endswith("--eval-items 32 --output docs/results/summarize_powered --resume\n```\n")  # not run yet

    team, single = trained(1.5, 1.8, 1.5, 1.2), trained(0.3, 0.6, 0.3, 0.6)
    written(
        "summarize_powered",
        {"team": team, "single-grpo": single, "parallel": untrained(0.6), "sequential": untrained(0.9)},
        4,
    )
    page = results_doc.powered_section()
    realised = difference.pooled_sd([[0.5, 0.6, 0.5, 0.4], [0.1, 0.2, 0.1, 0.2]])
    assert (
        f"The spread this study measured, pooled over the team and single-agent GRPO: sd = {realised:.3f}; at it, "
        f"4 seeds per system separate 0.2 with {difference.power(realised, 0.2, 4):.0%} power" in "\n".join(page)
    )
    assert (
        "Held-out normalised return of the prompt-only set-ups: parallel 0.200, sequential 0.300. The untrained "
        "team starts at 0.20 of the maximum reward, so this reward leaves room to learn. `expand` (section 1b) "
        "starts at 0.88 and is not powered here: a gain of 0.2 above its untrained team cannot exist"
    ) in "\n".join(page)
    # each trained system against the best prompt-only set-up, a constant: team 0.5 mean vs 0.3
    beside_best = [line for line in page if "the best prompt-only set-up (`sequential`)" in line]
    assert beside_best[0] == "- the team is above the best prompt-only set-up (`sequential`): " + str(
        difference.difference([0.5, 0.6, 0.5, 0.4], 0.3)
    )
    assert (
        "- the team is above single-agent GRPO: "
        + str(difference.difference([0.5, 0.6, 0.5, 0.4], [0.1, 0.2, 0.1, 0.2]))
        in page
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


@pytest.fixture(scope="module")
def learning_check():
    return load("learning_check")


def test_the_learning_check_compares_each_precision_with_the_last_entry_of_its_machine_paired_by_seed(
    learning_check,
):
    machine = {"commit": "old", "cpu": {"model": "EPYC", "cores": 2, "flags": ["avx2"]}, "gpu": None}
    other = {**machine, "cpu": {"model": "Xeon", "cores": 2, "flags": ["avx512_bf16"]}}
    settings = learning_check.SETTINGS

    def entry(produced_by, rewards, **changes):
        return {"produced_by": produced_by, "settings": {**settings, **changes}, "held_out_reward": rewards}

    entries = [
        entry(machine, {"float32": {"0": 1.0, "1": 1.2, "2": 0.8}}),
        entry(other, {"float32": {"0": 9.0, "1": 9.0, "2": 9.0}}),  # another machine kind: not compared
        entry(machine, {"float32": {"0": 0.0, "1": 0.0, "2": 0.0}}, steps=3),  # other settings: not compared
    ]
    now = entry({**machine, "commit": "new"}, {"float32": {"0": 0.9, "1": 1.0, "2": 0.5}})
    (line,) = learning_check.compare(entries, now)
    # differences -0.1, -0.2, -0.3: mean -0.2, sd 0.1, t = -0.2 / (0.1 / sqrt 3) = -3.464, df 2
    assert line.startswith("float32: not separated from commit old on seeds 0, 1, 2")
    assert "paired t = -3.46, df 2, p = 0.074" in line
    first = learning_check.compare([], now)
    assert first == ["float32: the first entry of this machine kind and settings (nothing to compare)"]


@pytest.fixture(scope="module")
def protocols_study():
    return load("protocols_study")


def test_the_protocols_study_records_every_arm_and_resumes_without_training_again(
    protocols_study, results_doc, tmp_path, monkeypatch, capsys
):
    from tests.conftest import save_tiny_model

    model = save_tiny_model(tmp_path / "tiny", seed=1)
    out = tmp_path / "protocols"
    given = ["--model", model, "--seeds", "1", "--steps", "1", "-G", "2", "--max-new-tokens", "3"]
    given += ["--train-items", "2", "--eval-items", "2", "--setups", "parallel", "--output", str(out)]
    trained = []
    train_team = protocols_study.train_team

    def counted(task, args, seed, *rest, overrides):
        trained.append((seed, overrides.get("protocol", "simultaneous"), overrides.get("max_steps")))
        return train_team(task, args, seed, *rest, overrides=overrides)

    monkeypatch.setattr(protocols_study, "train_team", counted)
    protocols_study.main(given)
    # the untrained team of each protocol (no step), then seed 0 of every arm
    assert trained == [(0, "simultaneous", 0), (0, "sequential", 0)] + [
        (0, "simultaneous", None),
        (0, "sequential", None),
        (0, "sequential", None),
    ]
    study = json.loads((out / "results.json").read_text())
    assert list(study["runs"]) == [
        "simultaneous",
        "sequential",
        "sequential-counterfactual",
        "untrained:simultaneous",
        "untrained:sequential",
        "setup:parallel",
    ]
    for name, runs in study["runs"].items():
        (run,) = runs
        assert run["seed"] == (0 if name in protocols_study.ARMS else None)
        assert run["held_out"]["items"] == 2.0
        assert {"reward", "helper_used", "scheme/none"} <= set(run["held_out"])
        # each held-out item's figures: the two first held-out problems, in order
        assert [row["item_id"] for row in run["per_item"]] == ["HumanEval/132", "HumanEval/133"]
        assert {"reward", "helper_used", "scheme/delegation"} <= set(run["per_item"][0])
        assert run["produced_by"]["commit"]
    counterfactual = study["runs"]["sequential-counterfactual"][0]
    assert counterfactual["config"] == {"protocol": "sequential", "joint_mode": "cross", "credit": "counterfactual"}
    assert len(counterfactual["curve"]) == 1 and counterfactual["seconds"] > 0
    assert {"results.md", "reward_curves.png", "held_out.png"} <= {p.name for p in out.iterdir()}
    assert "| sequential-counterfactual | 1 |" in (out / "results.md").read_text()

    # the same call again trains nothing; a second seed of one arm trains that run alone
    trained.clear()
    protocols_study.main(given)
    assert trained == []
    protocols_study.main([*given, "--seeds", "2", "--arms", "simultaneous"])
    assert trained == [(1, "simultaneous", None)]
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [r["seed"] for r in runs["simultaneous"]] == [0, 1] and runs["sequential"] == study["runs"]["sequential"]
    # the page's section says how many seeds and items are in, and that so few make a pilot
    monkeypatch.setattr(results_doc, "RESULTS", tmp_path)
    section = results_doc.protocols_section()
    assert (
        "Seeds finished: simultaneous 2, sequential 1, sequential-counterfactual 1 of the 8 per arm the study "
        "asks for; 2 held-out items per run. **Partial: a pilot" in "\n".join(section)
    )
    assert "| sequential-counterfactual | 0 | 0.000 | 0.000 | 0.000 |" in "\n".join(section)
    assert section[-2] == "- an arm with one seed has no spread to test, so no verdict on it"
    (beside_setup,) = [line for line in section if "prompt-only set-up (" in line]
    assert beside_setup.startswith("- normalised return: the simultaneous team is ")
    assert "the best prompt-only set-up (`setup:parallel`): " in beside_setup
    # settings that shape the figures are refused on the same output
    with pytest.raises(SystemExit, match="other settings"):
        protocols_study.main([*given, "--steps", "2"])

    # sittings of other seeds run beside each other on one output: this one trains seed 2 alone, and
    # keeps seed 3, which another sitting finished while seed 2 trained
    trained.clear()

    def beside_another_sitting(task, args, seed, *rest, overrides):
        result = counted(task, args, seed, *rest, overrides=overrides)
        on_disk = json.loads((out / "results.json").read_text())
        on_disk["runs"]["simultaneous"].append({**on_disk["runs"]["simultaneous"][0], "seed": 3})
        on_disk["seconds"] = 1e6  # the other sitting's study time: longer than this one's
        (out / "results.json").write_text(json.dumps(on_disk))
        return result

    monkeypatch.setattr(protocols_study, "train_team", beside_another_sitting)
    protocols_study.main([*given, "--seeds", "4", "--arms", "simultaneous", "--only-seeds", "2"])
    assert trained == [(2, "simultaneous", None)]
    after = json.loads((out / "results.json").read_text())
    assert [r["seed"] for r in after["runs"]["simultaneous"]] == [0, 1, 2, 3]
    assert after["runs"]["sequential"] == study["runs"]["sequential"]
    assert after["seconds"] >= 1e6
    with pytest.raises(SystemExit):
        protocols_study.parse([*given, "--seeds", "4", "--only-seeds", "2,4"])
    assert "--only-seeds: [4] outside the study's seeds 0..3 (--seeds 4)" in capsys.readouterr().err


def test_sittings_of_other_seeds_keep_each_others_runs(study, tmp_path, monkeypatch, capsys):
    from tests.conftest import save_tiny_model

    model = save_tiny_model(tmp_path / "tiny", seed=1)
    out = tmp_path / "study"
    given = ["--task", "summarize", "--model", model, "--seeds", "2", "--steps", "1", "-G", "2"]
    given += ["--max-new-tokens", "3", "--train-items", "2", "--eval-items", "2", "--systems", "team"]
    given += ["--output", str(out)]
    with pytest.raises(SystemExit):
        study.main([*given, "--only-seeds", "1"])
    assert "--only-seeds needs --resume" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study.main([*given, "--resume", "--only-seeds", "0,2"])
    assert "--only-seeds: [2] outside the study's seeds 0..1 (--seeds 2)" in capsys.readouterr().err

    trained = []
    train_team = study.train_team

    def beside_another_sitting(task, args, seed, *rest):
        """Trains this sitting's seed while the other sitting writes its finished seed 0."""
        trained.append(seed)
        result = train_team(task, args, seed, *rest)
        theirs = {**result, "seed": 0, "seconds": 1.0, "produced_by": study.provenance()}
        (out / "results.json").write_text(
            json.dumps({"args": study.recorded_args(args), "seconds": 1e6, "runs": {"team": [theirs]}})
        )
        return result

    monkeypatch.setattr(study, "train_team", beside_another_sitting)
    study.main([*given, "--resume", "--only-seeds", "1"])
    assert trained == [1]
    after = json.loads((out / "results.json").read_text())
    assert [r["seed"] for r in after["runs"]["team"]] == [0, 1]
    assert after["seconds"] >= 1e6  # the study's time is its longest sitting's
    assert "| team | 2 |" in (out / "results.md").read_text()


def test_a_run_that_stopped_early_is_not_recorded_as_a_whole_one(study):
    """A clean stop (SIGTERM) ends train() normally, with fewer steps than asked: refused."""
    assert study.whole_run([{}] * 3, 3) == [{}] * 3
    with pytest.raises(RuntimeError, match="the run stopped after 2 of 3 steps: not recorded"):
        study.whole_run([{}] * 2, 3)


def test_madpo_is_set_beside_the_ledgers_team_of_the_same_settings_machine_and_seeds(
    results_doc, tmp_path, monkeypatch
):
    ledger = tmp_path / "learning.jsonl"
    settings = dict(task="summarize", model="default", steps=15, batch_size=1, num_generations=4, max_new_tokens=64)
    settings |= dict(lr=2e-5, eval_items=8, turns=1)
    made = {"commit": "abc", "cpu": {"model": "AMD EPYC"}}
    entries = [
        {"settings": settings, "produced_by": made, "held_out_reward": {"float32": {"0": 1.0, "1": 1.5, "2": 2.0}}},
        {"settings": {**settings, "steps": 10}, "produced_by": made, "held_out_reward": {"float32": {"0": 9.0}}},
        {"settings": settings, "produced_by": {**made, "cpu": {"model": "Intel Xeon"}}, "held_out_reward": {}},
        # the same CPU model with other bf16-relevant flags is another machine kind (provenance.machine_kind)
        {
            "settings": settings,
            "produced_by": {**made, "cpu": {"model": "AMD EPYC", "flags": ["avx512_bf16"]}},
            "held_out_reward": {"float32": {"0": 7.0, "1": 7.0}},
        },
    ]
    ledger.write_text("".join(json.dumps(e) + "\n" for e in entries))
    monkeypatch.setattr(results_doc, "LEDGER", ledger)
    runs = [{"seed": k, "produced_by": made, "held_out": {"reward": 0.5}} for k in (0, 1)]
    study = {"args": settings, "runs": {"madpo": runs}}
    entry, rewards = results_doc.ledger_team(study)
    assert entry == entries[0]
    assert rewards == [1.0, 1.5]  # the seeds the study ran, in order
    assert results_doc.ledger_team({**study, "args": {**settings, "lr": 1e-5}}) is None
