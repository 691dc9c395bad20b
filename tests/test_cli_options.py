"""Options declared once: a command made from a table of options, the flags' config values, and
the config fields' help read from their #: comments in config.py."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typer.testing import CliRunner

from magrpo.cli_options import Option, command, config_values, one_line, yaml_value
from magrpo.config import field_help


def test_a_fields_help_is_its_comment_lines_joined():
    helps = field_help()
    assert helps["warmup_ratio"] == "... or over this fraction of max_steps"
    assert helps["lr_scheduler_type"] == (
        'transformers\' get_scheduler: "constant", "linear", "cosine", ... (magrpo.choices.LR_SCHEDULERS), '
        "stepped once per training step over max_steps; lr_scheduler_kwargs go to it as scheduler_specific_kwargs "
        '(e.g. {"min_lr_rate": 0.1} for "cosine_with_min_lr")'
    )


def test_one_line_is_the_first_sentence_cut_at_a_word():
    assert one_line("how the advantages are made. More follows.") == "how the advantages are made"
    assert one_line("task column -> your column, e.g. {'source': 'article'}") == (
        "task column -> your column, e.g. {'source': 'article'}"
    )
    assert one_line("linear warm-up over n steps ...") == "linear warm-up over n steps ..."
    assert one_line("one two three four five six", width=17) == "one two three ..."
    assert one_line("one two three four five six", width=16) == "one two ..."
    assert one_line("a list: one, two, three", width=20) == "a list: one ..."


def test_defaults_are_shown_as_yaml():
    assert [yaml_value(v) for v in (None, True, 1e-5, "all-linear", [], {}, ["a", "b"])] == [
        "null",
        "true",
        "1.0e-05",
        "all-linear",
        "[]",
        "{}",
        "[a, b]",
    ]


def test_a_command_made_from_options_parses_them_and_gives_their_config_values():
    options = (
        Option(("--steps", "-s"), Optional[int], help="Steps.", field="max_steps"),
        Option(("--output-dir",), Optional[Path], field="output_dir", to_field=str),
        Option(("--lora/--full",), Optional[bool], field="use_lora"),
        Option(("--name",), str, "x", "A name."),
    )
    app = typer.Typer()
    got = []

    @command(app, "run", options)
    def run(given):
        """Run it."""
        got.append((vars(given), config_values(options, given)))

    @app.command()
    def other() -> None:  # two commands: typer then takes the command's name
        pass

    result = CliRunner().invoke(app, ["run", "-s", "3", "--output-dir", "out", "--full"])
    assert result.exit_code == 0, result.output
    assert got == [
        (
            {"steps": 3, "output_dir": Path("out"), "lora": False, "name": "x"},
            {"max_steps": 3, "output_dir": "out", "use_lora": False},
        )
    ]
    help_text = " ".join(CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "300"}).output.split())
    assert "Run it." in help_text and "Steps." in help_text
    assert "The run's folder: config, metrics, samples, checkpoints, final weights." in help_text  # the field's help
