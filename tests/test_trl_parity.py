"""benchmarks/trl_parity.py: finished runs are kept for a rerun with the same settings only, and
the page's verdict is Welch's t on the per-seed held-out rewards."""

from __future__ import annotations

import argparse
import json

from tests.test_study import load


def args_of(**changes):
    values = dict(steps=20, prompts=2, num_generations=4, max_new_tokens=48, lr=2e-5, target_chars=60, eval_items=16)
    return argparse.Namespace(**{**values, "train_items": None, **changes})


def test_a_rerun_keeps_the_runs_of_the_same_settings_only(tmp_path):
    parity = load("trl_parity")
    path = tmp_path / "results.json"
    saved = {"settings": parity.settings(args_of()), "runs": {"magrpo/0": {"held_out": -1.0, "minutes": 2.0}}}
    path.write_text(json.dumps(saved))
    assert parity.load_results(path, args_of())["runs"] == saved["runs"]
    assert parity.load_results(path, args_of(steps=30))["runs"] == {}


def test_the_page_tests_the_difference_of_the_seeds(tmp_path):
    parity = load("trl_parity")
    difference = load("difference")
    magrpo, trl = [-0.9, -0.8, -1.0], [-1.2, -1.1, -1.3]
    runs = {f"magrpo/{s}": {"held_out": v, "minutes": 2.0} for s, v in enumerate(magrpo)}
    runs |= {f"trl/{s}": {"held_out": v, "minutes": 8.0} for s, v in enumerate(trl)}
    results = {"settings": parity.settings(args_of()), "runs": runs, "untrained": -1.7, "produced_by": {}}
    parity.write_page(results, tmp_path)
    page = (tmp_path / "README.md").read_text()
    d = difference.difference(magrpo, trl)
    assert f"**magrpo is above TRL** on held-out reward: {d}." in page and d.p < 0.05
    assert "| magrpo | 3 | -0.9000, -0.8000, -1.0000 | -0.9000 |" in page
    assert "magrpo 2.0, trl 8.0" in page


def test_sittings_of_other_systems_keep_each_others_runs(tmp_path):
    parity = load("trl_parity")
    settings = parity.settings(args_of())
    mine = {"settings": settings, "runs": {"magrpo/0": {"held_out": -1.0, "minutes": 2.0}}, "untrained": None}
    theirs = {"settings": settings, "runs": {"trl/0": {"held_out": -1.5, "minutes": 8.0}}, "untrained": -1.7}
    (tmp_path / "results.json").write_text(json.dumps(theirs))
    parity.save({**mine, "produced_by": {}}, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["runs"] == {**theirs["runs"], **mine["runs"]} and saved["untrained"] == -1.7
    # a file of other settings is not merged: the sitting that reads it starts over (load_results)
    other = {**theirs, "settings": parity.settings(args_of(steps=30))}
    (tmp_path / "results.json").write_text(json.dumps(other))
    parity.save({**mine, "produced_by": {}}, tmp_path)
    assert json.loads((tmp_path / "results.json").read_text())["runs"] == mine["runs"]


def test_the_results_page_shows_the_parity_study_with_the_command_that_made_it(tmp_path, monkeypatch):
    parity, results_doc = load("trl_parity"), load("results_doc")
    monkeypatch.setattr(results_doc, "RESULTS", tmp_path)
    assert "Not measured yet:" in results_doc.parity_section()
    runs = {
        f"{system}/{seed}": {"held_out": -1.0 - seed / 10, "minutes": 1.0}
        for system in ("magrpo", "trl")
        for seed in (0, 1)
    }
    results = {"settings": parity.settings(args_of(steps=6)), "runs": runs, "untrained": -1.9, "produced_by": {}}
    (tmp_path / "trl_parity").mkdir()
    parity.save(results, tmp_path / "trl_parity")
    section = "\n".join(results_doc.parity_section())
    assert ".venv/bin/python benchmarks/trl_parity.py --seeds 2 --steps 6" in section
    assert "| magrpo | 2 | -1.0000, -1.1000 | -1.0500 |" in section
    assert "# Learning parity" not in section  # the page's own title gives way to the section's
