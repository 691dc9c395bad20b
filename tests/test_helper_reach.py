"""benchmarks/helper_reach.py: what the untrained team's sampled answers reach of the paper's helper bonus."""

from __future__ import annotations

import json

import pytest

from tests.test_study import load


@pytest.fixture(scope="module")
def helper_reach():
    return load("helper_reach")


def row(reward, helper_used, tests_passed, defined=1.0):
    figures = {"helper_used": helper_used, "tests_passed": tests_passed, "level_defined": defined}
    return {"reward": reward, "figures": figures}


def test_the_bonus_is_counted_only_where_the_helper_is_called_and_a_test_passes(helper_reach):
    # the last calls an aux that is not defined with a return: the reward pays it no bonus
    rows = [row(3.0, 1.0, 0.5), row(1.5, 1.0, 0.0), row(2.0, 0.0, 0.5), row(0.0, 0.0, 0.0), row(1.5, 1.0, 0.5, 0.0)]
    counts = helper_reach.tally(rows)
    assert counts["answers"] == 5 and counts["reward_mean"] == pytest.approx(8.0 / 5)
    assert [counts[name]["count"] for name in ("helper_called", "a_test_passed", "bonus_paid")] == [3, 3, 1]
    assert counts["bonus_paid"]["share"] == 0.2


def test_a_share_of_none_still_has_an_upper_bound(helper_reach):
    # Clopper-Pearson at 0 hits: the upper bound solves (1 - p)^n = 0.025; at n hits it mirrors
    low, high = helper_reach.share_interval(0, 128)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 128), rel=1e-9)
    low, high = helper_reach.share_interval(128, 128)
    assert (low, high) == (pytest.approx(0.025 ** (1 / 128), rel=1e-9), 1.0)


def test_the_untrained_teams_training_samples_are_tallied_and_written(helper_reach, tmp_path):
    from tests.conftest import save_tiny_model

    model = save_tiny_model(tmp_path / "tiny", seed=1)
    out = tmp_path / "reach"
    result = helper_reach.main(
        ["--model", model, "--items", "2", "-G", "2", "--max-new-tokens", "4", "--output", str(out)]
    )
    # 2 items x G = 2 joint answers each, every one scored by the paper's reward
    assert result["untrained"]["answers"] == 4
    assert json.loads((out / "results.json").read_text())["untrained"] == json.loads(json.dumps(result["untrained"]))
    assert result["settings"]["items"] == 2 and result["produced_by"]["commit"]
    # the sequential team as the protocols study trains it: M = 3 main answers after each helper answer
    sequential = helper_reach.main(
        ["--model", model, "--items", "2", "-G", "2", "--max-new-tokens", "4", "--output", str(out),
         "--protocol", "sequential", "--num-continuations", "3"]
    )  # fmt: skip
    assert sequential["untrained"]["answers"] == 2 * 2 * 3 and sequential["settings"]["protocol"] == "sequential"
    with pytest.raises(SystemExit):
        helper_reach.main(["--items", "3", "--batch-size", "2"])
    with pytest.raises(SystemExit):  # M belongs to the sequential team
        helper_reach.main(["--items", "2", "--num-continuations", "2"])


def test_the_protocols_page_says_how_many_steps_meet_the_bonus_once(helper_reach, tmp_path, monkeypatch):
    results_doc = load("results_doc")
    monkeypatch.setattr(results_doc, "RESULTS", tmp_path)
    study_args = {"num_generations": 4, "batch_size": 1, "steps": 6, "num_continuations": 2}
    assert results_doc.helper_reach_lines(study_args) == []  # not measured: nothing said

    def written(rows, folder="helper_reach", **protocol):
        (tmp_path / folder).mkdir(exist_ok=True)
        settings = {"items": 16, "num_generations": 8, "max_new_tokens": 64, **protocol}
        counted = {"settings": settings, "untrained": helper_reach.tally(rows)}
        (tmp_path / folder / "results.json").write_text(json.dumps(counted))

    # 2 of 128 joint answers are paid: once in 16 steps of 4 joint answers; the sequential team, not
    # sampled, is not extrapolated to (its main agent sees the helper's code)
    written([row(3.0, 1.0, 0.5)] * 2 + [row(0.0, 0.0, 0.0)] * 126)
    (line,) = results_doc.helper_reach_lines(study_args)[1:]
    assert (
        "the simultaneous team's (`benchmarks/helper_reach.py --items 16 -G 8`: 128 joint answers on the first 16 "
        "training problems, 64 new tokens)" in line
    )
    assert "the bonus is paid in 2 (0.016, 95% interval [0.002, 0.055])" in line
    # (1 - 2/128) ** (4 x 6) = 0.685 that 6 steps sample no paid answer
    assert (
        "At these shares a first paid sample comes about once in 16 steps of the simultaneous team (4 joint "
        "answers a step), against the 6 steps run here (the chance that they sampled no paid answer at all: 0.69 "
        "for the simultaneous team): in runs this short the bonus more likely than not never paid" in line
    )
    assert "The sequential team was not sampled: nothing is said of it." in line
    # none of 128: the interval's upper end, 1 - 0.025 ** (1 / 128) = 0.0284, bounds it: 1 / (4 x 0.0284) = 8.8
    # steps, 8 or more, and a chance of at least 0.025 ** (24 / 128) = 0.5007 of no paid answer in 6 steps; the
    # sequential team's own sample, 1 paid of 128: 1 / (8 x 1/128) = 16 steps, (127/128) ** 48 = 0.686
    written([row(0.0, 0.0, 0.0)] * 128)
    written([row(3.0, 1.0, 0.5)] + [row(0.0, 0.0, 0.0)] * 127, "helper_reach_sequential", protocol="sequential",
            num_continuations=2)  # fmt: skip
    (line,) = results_doc.helper_reach_lines(study_args)[1:]
    assert "the main function calls `aux` in 0 (0.000, 95% interval [0.000, 0.028])" in line
    assert "--protocol sequential --num-continuations 2`: 128 joint answers" in line
    assert (
        "At these shares a first paid sample comes once in 8 steps or more of the simultaneous team (4 joint answers "
        "a step) and about once in 16 steps of the sequential team (8 joint answers a step), against the 6 steps "
        "run here (the chance that they sampled no paid answer at all: at least 0.50 for the simultaneous team, "
        "0.69 for the sequential team): in runs this short the bonus more likely than not" in line
    )
    assert "not sampled" not in line
    # none paid in either: the sequential team's chance of no paid answer in 6 steps is only bounded below by
    # 0.025 ** (48 / 128) = 0.25: no conclusion, but a wider sample
    written([row(0.0, 0.0, 0.0)] * 128, "helper_reach_sequential", protocol="sequential", num_continuations=2)
    (line,) = results_doc.helper_reach_lines(study_args)[1:]
    # a sample filed under the other protocol's folder is refused, naming it
    written([row(0.0, 0.0, 0.0)] * 8, "helper_reach_sequential", protocol="simultaneous")
    with pytest.raises(ValueError, match="helper_reach_sequential/results.json samples the simultaneous team"):
        results_doc.helper_reach_lines(study_args)
    assert (
        "None was paid: at the intervals' upper ends a first paid sample comes once in 8 steps or more of the "
        "simultaneous team (4 joint answers a step) and once in 4 steps or more of the sequential team (8 joint "
        "answers a step), against the 6 steps run here (the chance that they sampled no paid answer at all: at "
        "least 0.50 for the simultaneous team, at least 0.25 for the sequential team); these samples do not show "
        "that the bonus never paid" in line
    )
