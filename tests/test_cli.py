"""The command line: bad input stops with a clear message; one real training step end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from magrpo.cli import app

runner = CliRunner()


def run_cli(*args):
    # a wide terminal: rich wraps help and messages at the terminal's width, which would split the phrases checked
    result = runner.invoke(app, list(args), env={"COLUMNS": "400"})
    return result.exit_code, " ".join(result.output.split())


def test_help_lists_the_tasks():
    code, out = run_cli("train", "--help")
    assert code == 0
    for task in ("coding", "summarize", "expand"):
        assert task in out
    assert "--verbose" in out and "Also show transformers' own" in out


def test_unknown_model_path_names_the_value_and_the_choices():
    code, out = run_cli("train", "--model", "./no/such/model/dir", "--steps", "1")
    assert code == 2
    assert (
        "model './no/such/model/dir' is not a known name ('default', 'qwen2.5-coder-0.5b'), an existing directory"
        in out
    )


def test_unknown_task_names_the_choices():
    code, out = run_cli("train", "--task", "poetry")
    assert code == 2 and "unknown task 'poetry'; choose one of coding, summarize, expand" in out


def test_invalid_config_value_names_the_choices():
    code, out = run_cli("train", "--joint-mode", "diagonal")
    assert code == 2 and "joint_mode='diagonal' is not valid; choose one of 'aligned', 'cross'" in out
    code, out = run_cli("train", "--set", "temperature=-1")
    assert code == 2 and "temperature=-1 is not valid" in out
    code, out = run_cli("train", "--set", "temperature")
    assert code == 2 and "--set 'temperature' is not of the form FIELD=VALUE" in out


def test_the_algorithm_is_a_flag_and_a_group_of_one_needs_a_critic():
    code, out = run_cli("train", "--help")
    assert "--algorithm" in out and "maac (one centralised critic)" in out
    code, out = run_cli("train", "--algorithm", "ppo")
    assert code == 2 and "algorithm='ppo' is not valid; choose one of 'magrpo', 'iac', 'maac', 'madpo'" in out
    code, out = run_cli("train", "-G", "1")
    assert code == 2 and "num_generations=1 with algorithm='magrpo': a group of one is its own baseline" in out
    code, out = run_cli("train", "--algorithm", "iac", "--joint-mode", "cross")
    assert code == 2 and "joint_mode='cross' is for algorithm='magrpo'" in out
    assert "--critic-type" in run_cli("train", "--help")[1]
    code, out = run_cli("train", "--algorithm", "maac", "--critic-type", "q", "-G", "1")
    assert code == 2 and "critic_type='q' with num_generations=1" in out
    code, out = run_cli("train", "--critic-type", "q")
    assert code == 2 and "critic_type='q' set up a critic, which algorithm='magrpo' has none of" in out


def test_centralised_magrpo_is_a_flag_and_a_task_name():
    code, out = run_cli("train", "--help")
    assert "--centralised" in out and "Centralised MAGRPO: one model writes the whole joint answer" in out
    code, out = run_cli("eval", "--task", "poetry-centralised")
    assert code == 2 and "unknown task 'poetry-centralised'; choose one of coding" in out
    code, out = run_cli("train", "--task", "summarize", "--centralised", "--turns", "2")
    assert code == 2 and "task 'summarize-centralised' has no execution feedback; use --feedback reviewer" in out


def test_config_file_with_an_unknown_field(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("num_generations: 4\nlearnin_rate: 0.1\n")
    code, out = run_cli("train", "--config", str(path))
    assert code == 2 and "unknown config field(s) ['learnin_rate']" in out


def test_user_data_missing_a_column_names_it_and_the_available_ones(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps({"question": "x", "tests": "y"}) + "\n")
    code, out = run_cli("train", "--data", str(path), "--steps", "1")
    assert code == 2 and "prompt" in out and "question" in out


def test_wrong_number_of_models():
    code, out = run_cli("train", "--model", "default", "--model", "default", "--model", "default")
    assert code == 2 and "3 --model values for 2 agents" in out


def test_eval_checkpoint_without_agents(tmp_path):
    code, out = run_cli("eval", "--checkpoint", str(tmp_path))
    assert code == 2 and "lacks" in out and "agent_0" in out


def test_eval_setup_names_the_choices_and_keeps_its_old_name_out_of_the_help():
    code, out = run_cli("eval", "--setup", "solo")
    assert code == 2 and "--setup='solo' is not valid; choose one of 'single', 'parallel', 'sequential'" in out
    code, out = run_cli("eval", "--baseline", "solo")  # the old name still works, told as --setup
    assert code == 2 and "--setup='solo' is not valid" in out
    code, out = run_cli("eval", "--setup", "single", "--baseline", "parallel")
    assert code == 2 and "--setup single and --baseline parallel (its old name) disagree" in out
    code, out = run_cli("eval", "--help")
    assert code == 0 and "--setup" in out and "--baseline" not in out


@pytest.mark.slow
def test_train_one_step_on_the_default_model_then_eval_the_checkpoint(tmp_path):
    exe = Path(sys.executable).with_name("magrpo")
    run_dir = tmp_path / "run"
    env = dict(os.environ, COLUMNS="200")
    out = subprocess.run(
        [
            str(exe),
            "train",
            "--task",
            "coding",
            "--steps",
            "1",
            "-G",
            "2",
            "--max-new-tokens",
            "12",
            "--eval-items",
            "1",
            "--output-dir",
            str(run_dir),
            "--no-progress",
            "--set",
            "save_final_checkpoint=true",  # the end resumable too
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "held-out results" in out.stdout and "pass@1" in out.stdout
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and metrics[0]["step"] == 1
    for key in (
        "reward_mean",
        "reward_std",
        "reward_min",
        "reward_max",
        "agent_0/loss",
        "agent_1/loss",
        "tokens_generated",
        "seconds",
    ):
        assert key in metrics[0]
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and len(samples[0]["completions"]) == 2
    for name in ("config.yaml", "eval_before.json", "eval_after.json", "reward_curve.png"):
        assert (run_dir / name).is_file()

    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run_dir / "final" / "agent_1")  # loads directly
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-1"]  # the run's end is resumable, as asked

    moved = tmp_path / "moved"  # a run folder moved elsewhere resumes where it now is
    run_dir.rename(moved)
    run_dir = moved
    out = subprocess.run(  # one more step, from the run's own task, models and config
        [str(exe), "train", "--resume", str(run_dir / "checkpoints" / "step-1"), "--steps", "2", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"resumed from {run_dir / 'checkpoints' / 'step-1'} at step 1" in out.stdout
    assert not (tmp_path / "run").exists()
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]

    out = subprocess.run(
        [
            str(exe),
            "eval",
            "--task",
            "coding",
            "--checkpoint",
            str(run_dir),  # a run folder: its final weights (as --resume takes a run folder)
            "--eval-items",
            "1",
            "--max-new-tokens",
            "12",
            "--output",
            str(tmp_path / "e.json"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    figures = json.loads((tmp_path / "e.json").read_text())
    assert figures["items"] == 1.0 and {"reward", "tests_passed", "pass@1"} <= set(figures)


@pytest.mark.slow
def test_own_articles_without_references_train_with_a_held_out_fraction_of_one_split(tmp_path):
    exe = Path(sys.executable).with_name("magrpo")
    articles = [
        {
            "article": f"Article {i}. The city council met on Monday and agreed on a new park budget. "
            "Residents asked for more trees and a playground."
        }
        for i in range(4)
    ]
    data = tmp_path / "news.json"
    data.write_text(json.dumps({"train": articles, "test": articles[:1]}))
    env = dict(os.environ, COLUMNS="200")
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [
            str(exe),
            "train",
            "--task",
            "summarize",
            "--data",
            str(data),
            "--data-split",
            "train",
            "--columns",
            "source=article",
            "--eval-fraction",
            "0.5",
            "--steps",
            "1",
            "-G",
            "2",
            "--max-new-tokens",
            "8",
            "--eval-items",
            "1",
            "--output-dir",
            str(run_dir),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = " ".join(out.stdout.split())
    assert "ROUGE-1/2/L skipped for 1 of 1 items: no 'reference' column" in text
    import yaml

    config = yaml.safe_load((run_dir / "config.yaml").read_text())["config"]
    assert (config["eval_fraction"], config["train_split"], config["train_data"]) == (0.5, "train", str(data))
    before = json.loads((run_dir / "eval_before.json").read_text())
    assert before["items"] == 1.0 and "reward" in before and "rouge1" not in before

    out = subprocess.run(  # 0 held-out items means none, in eval as in train
        [
            str(exe),
            "eval",
            "--task",
            "summarize",
            "--data",
            str(data),
            "--data-split",
            "test",
            "--columns",
            "source=article",
            "--eval-items",
            "0",
            "--latency-items",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no held-out items evaluated (--eval-items 0)" in out.stdout


def test_eval_on_the_data_a_run_trained_on_scores_only_what_the_run_held_out(tmp_path):
    import yaml

    from magrpo.cli import held_out_part
    from magrpo.data import split_items

    data = tmp_path / "mine.jsonl"
    data.write_text("")
    items = [{"source": f"text {k}"} for k in range(8)]
    run_dir = tmp_path / "run"
    (run_dir / "final").mkdir(parents=True)
    trained = {"eval_fraction": 0.25, "train_data": str(data), "seed": 3}
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"config": trained, "task": "summarize"}))
    train_part, held_out = split_items(items, 0.25, 3)
    kept, note = held_out_part(items, data, run_dir / "final")
    assert kept == held_out and len(kept) == 2 and not any(item in train_part for item in kept)
    assert note == (
        f"{str(data)!r} is the data this checkpoint trained on with eval_fraction=0.25: evaluating only the 2 "
        "of its 8 items the run held out (seed 3)"
    )
    # other data, or a run without a held-out fraction: every item
    assert held_out_part(items, tmp_path / "other.jsonl", run_dir / "final") == (items, None)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"config": {**trained, "eval_fraction": None}}))
    assert held_out_part(items, data, run_dir / "final") == (items, None)


def test_train_help_ends_with_every_config_field_its_default_and_its_help():
    from magrpo import MAGRPOConfig

    code, out = run_cli("train", "--help")
    assert code == 0
    assert (
        "Config fields: --set FIELD=VALUE sets any of them (repeatable; a --config YAML file takes the same fields, "
        "and flags win over both). VALUE is read as YAML: --set use_lora=[true,false], --set autocast=no, "
        "--set 'lr_scheduler_kwargs={min_lr_rate: 0.1}'. The fields, with their defaults:"
    ) in out
    fields = out.split("The fields, with their defaults:")[1]
    # the first sentence of each field's #: comment in config.py, and the flag that sets it, if one does
    assert "warmup_ratio=0.0 ... or over this fraction of max_steps" in fields
    assert "max_steps=10 (--steps) training steps of the run" in fields
    assert "use_lora=false (--lora/--full) True / False for the whole team, or one bool per agent" in fields
    assert "algorithm=magrpo (--algorithm) how the advantages are made " in fields
    assert "lr_scheduler_kwargs=null the schedule's own arguments (see lr_scheduler_type)" in fields
    assert "report_to=[] experiment trackers" in fields and "extra={} your own values" in fields
    assert [name for name in MAGRPOConfig.field_names() if f" {name}=" not in f" {fields}"] == []


def test_eval_help_lists_the_fields_with_the_flags_of_eval():
    code, out = run_cli("eval", "--help")
    assert code == 0 and "VALUE is read as YAML" in out
    fields = out.split("The fields, with their defaults:")[1]
    assert "eval_data=null (--data) your own held-out data" in fields
    assert "max_steps=10 training steps of the run" in fields  # no flag of eval sets it


def test_an_option_without_help_of_its_own_shows_the_help_of_its_config_field():
    code, out = run_cli("train", "--help")
    assert (
        '--joint-mode <str> "aligned": G joint actions, the g-th completion of every agent together; "cross": every '
        "combination, G ** num_agents joint actions (sequential: each answer continued once, or num_continuations "
        'times). None: "aligned", but "cross" with credit="counterfactual"'
    ) in out
    assert "-G <int> G, completions per agent per item (>= 2 for the group baseline; >= 1 with a critic)." in out
    code, out = run_cli("eval", "--help")  # eval's options show help they had none of before
    assert "--max-new-tokens <int> The longest completion, in tokens, one for the team or one per agent" in out
    assert "--reviewer-model <str> Model name sent to the reviewer endpoint." in out


def test_a_typo_in_set_names_the_closest_field():
    code, out = run_cli("train", "--set", "lerning_rate=1e-5")
    assert code == 2
    assert (
        "unknown config field(s) ['lerning_rate']; did you mean 'learning_rate'? (`magrpo train --help` lists the "
        "fields)"
    ) in out
    code, out = run_cli("eval", "--set", "max_new_token=8")
    assert code == 2 and "did you mean 'max_new_tokens'?" in out


def test_a_typo_in_a_config_file_names_the_closest_field(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("num_generations: 4\nlearnin_rate: 0.1\n")
    code, out = run_cli("train", "--config", str(path))
    assert code == 2
    assert "unknown config field(s) ['learnin_rate']; did you mean 'learning_rate'?" in out
    assert "num_agents" not in out  # not every field's name


def test_a_set_value_that_is_not_yaml_says_that_values_are_read_as_yaml():
    code, out = run_cli("train", "--set", "use_lora=[true,")
    assert code == 2
    assert (
        "--set 'use_lora=[true,': VALUE is read as YAML, and '[true,' is not valid YAML (expected the node content, "
        "but found '<stream end>')"
    ) in out
    code, out = run_cli("train", "--set", "temperature")
    assert code == 2
    assert "--set 'temperature' is not of the form FIELD=VALUE (VALUE read as YAML; --help lists the fields)" in out


def test_every_option_that_sets_a_config_field_names_an_existing_field():
    from magrpo import MAGRPOConfig
    from magrpo.cli import EVAL_OPTIONS, TRAIN_OPTIONS

    fields = set(MAGRPOConfig.field_names())
    assert [o.flags[0] for o in TRAIN_OPTIONS + EVAL_OPTIONS if o.field is not None and o.field not in fields] == []
    assert {o.flags[0]: o.field for o in TRAIN_OPTIONS if o.field} == {
        "--num-generations": "num_generations",
        "--steps": "max_steps",
        "--batch-size": "batch_size",
        "--max-new-tokens": "max_new_tokens",
        "--lr": "learning_rate",
        "--joint-mode": "joint_mode",
        "--protocol": "protocol",
        "--algorithm": "algorithm",
        "--critic-type": "critic_type",
        "--lora/--full": "use_lora",
        "--seed": "seed",
        "--output-dir": "output_dir",
        "--turns": "num_turns",
        "--expand": "expand",
        "--expand-k": "expand_k",
        "--data": "train_data",
        "--data-split": "train_split",
        "--eval-data": "eval_data",
        "--eval-split": "eval_split",
        "--eval-fraction": "eval_fraction",
        "--columns": "column_map",
        "--log-completions/--no-log-completions": "log_completions",
    }
    assert {o.flags[0]: o.field for o in EVAL_OPTIONS if o.field} == {
        "--max-new-tokens": "max_new_tokens",
        "--turns": "num_turns",
        "--protocol": "protocol",
        "--data": "eval_data",
        "--data-split": "eval_split",
        "--columns": "column_map",
    }


def flags_given_to_the_config(monkeypatch, *args):
    """The config values a command's flags set (those given), caught before any task data or model loads."""
    from magrpo import cli

    seen = {}

    def catch(task, config_file, flags, overrides):
        seen.update({k: v for k, v in flags.items() if v is not None})
        raise cli.UsageError("caught")

    monkeypatch.setattr(cli, "resolve_config", catch)
    code, out = run_cli(*args)
    assert code == 2 and "caught" in out
    return seen


def test_train_flags_set_their_config_fields(monkeypatch):
    seen = flags_given_to_the_config(
        monkeypatch,
        *("train", "-G", "3", "--steps", "5", "--lr", "2e-5", "--full", "-o", "runs/x", "--turns", "2"),
        *("--data", "mine.jsonl", "--data-split", "train", "--columns", "source=article", "--eval-fraction", "0.5"),
        *("--protocol", "sequential"),
    )
    assert seen == {
        "protocol": "sequential",
        "num_agents": 2,
        "num_generations": 3,
        "max_steps": 5,
        "learning_rate": 2e-5,
        "use_lora": False,
        "output_dir": "runs/x",
        "num_turns": 2,
        "train_data": "mine.jsonl",
        "train_split": "train",
        "column_map": {"source": "article"},
        "eval_fraction": 0.5,
    }


def test_eval_flags_set_their_config_fields(monkeypatch):
    seen = flags_given_to_the_config(
        monkeypatch,
        *("eval", "--data", "held.jsonl", "--data-split", "test", "--max-new-tokens", "9", "--turns", "2"),
        *("--protocol", "sequential"),
    )
    assert seen == {
        "protocol": "sequential",
        "num_agents": 2,
        "eval_data": "held.jsonl",
        "eval_split": "test",
        "max_new_tokens": 9,
        "num_turns": 2,
    }


def test_own_data_without_a_held_out_part_is_said_before_training(tmp_path):
    from tests.conftest import save_tiny_model

    model = save_tiny_model(tmp_path / "tiny", seed=1)
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps({"source": f"a b c {i}"}) + "\n" for i in range(3)))
    code, out = run_cli(
        "train", "--task", "summarize", "--model", model, "--data", str(path), "--steps", "0",
        "--output-dir", str(tmp_path / "run"), "--set", "max_new_tokens=2", "--set", "save_steps=0",
    )  # fmt: skip
    assert code == 0, out
    note = "--eval-items 8 asks for a held-out evaluation, but --data alone holds nothing out: add --eval-fraction 0.1"
    assert note in out
    assert out.index(note) < out.index("trained 0 steps")


def test_eval_checkpoint_takes_a_run_folder_or_a_folder_of_agents(tmp_path):
    from magrpo.cli import _agents_folder

    run = tmp_path / "run"
    (run / "final" / "agent_0").mkdir(parents=True)
    (run / "checkpoints" / "step-2" / "agent_0").mkdir(parents=True)
    assert _agents_folder(run) == run / "final"
    assert _agents_folder(run / "final") == run / "final"
    assert _agents_folder(run / "checkpoints" / "step-2") == run / "checkpoints" / "step-2"
    assert _agents_folder(tmp_path) == tmp_path  # neither: refused later, naming the missing agent folders


def test_eval_answers_in_the_order_the_checkpoint_trained_with_unless_told(tmp_path):
    from magrpo import MAGRPOConfig
    from magrpo.cli import in_trained_order
    from magrpo.config import dump_yaml

    run = tmp_path / "run"
    (run / "final" / "agent_0").mkdir(parents=True)
    (run / "config.yaml").write_text(dump_yaml({"config": {"protocol": "sequential"}, "task": "coding"}))
    assert in_trained_order(MAGRPOConfig(), run / "final", None).protocol == "sequential"
    assert in_trained_order(MAGRPOConfig(), run / "final", "simultaneous").protocol == "simultaneous"
    assert in_trained_order(MAGRPOConfig(), tmp_path, None).protocol == "simultaneous"  # no run config


def test_the_protocol_is_a_flag_and_the_counterfactual_credit_is_refused_where_no_context_has_alternatives():
    code, out = run_cli("train", "--help")
    assert "--protocol" in out and "sequential (each agent after the earlier ones, seeing their answers" in out
    code, out = run_cli("train", "--protocol", "turns")
    assert code == 2 and "protocol='turns' is not valid; choose one of 'simultaneous', 'sequential'" in out
    code, out = run_cli(
        "train", "--protocol", "sequential", "--joint-mode", "aligned", "--set", "credit=counterfactual"
    )
    assert code == 2 and "credit='counterfactual' compares each answer with the alternatives" in out
    code, out = run_cli(
        "train", "--protocol", "sequential", "--set", "rollout_backend=vllm", "--set", "async_rollouts=1"
    )
    assert code == 2 and "protocol='sequential' with async_rollouts=1" in out
    assert "--protocol" in run_cli("eval", "--help")[1]


def test_a_pass_is_allowed_only_to_a_role_the_task_scores_a_pass_for():
    code, out = run_cli("train", "--task", "summarize", "--allow-pass", "tldr", "--steps", "1")
    assert code == 2 and "task 'summarize' has no rule for scoring a pass by its tldr; roles that may pass: none" in out
    code, out = run_cli("train", "--task", "coding", "--allow-pass", "poet", "--steps", "1")
    assert code == 2 and "--allow-pass 'poet': task 'coding' has the roles ['helper', 'main']" in out
    code, out = run_cli("eval", "--task", "coding", "--allow-pass", "main", "--eval-items", "0")
    assert (
        code == 2 and "task 'coding' has no rule for scoring a pass by its main; roles that may pass: ['helper']" in out
    )
