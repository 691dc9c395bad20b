"""The ``magrpo`` command line: train and evaluate teams on the built-in tasks or your own data.

Only light modules are imported at start-up: torch and transformers load when a command needs a
model, so ``--help`` and ``magrpo tasks`` answer at once.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from magrpo.cli_options import Option, command, config_fields_epilog, config_values
from magrpo.config import MAGRPOConfig, load_yaml_mapping
from magrpo.errors import DiskFullError
from magrpo.run_folder import FINAL, RunFolder
from magrpo.tasks import CENTRALISED, TASKS, check_task_name

console = Console()
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train teams of LLM agents to cooperate with MAGRPO (multi-agent group relative policy optimization).",
)

TASK_HELP = "Task: " + "; ".join(f"{name} = {desc}" for name, (desc, _) in TASKS.items()) + "."
MODEL_HELP = (
    "Model of the agents: 'default' (the bundled SmolLM2-135M-Instruct), 'qwen2.5-coder-0.5b' (opt-in preset), "
    "a local model directory, or a Hub id. Give it once for every agent, or once per agent."
)

VERBOSE_HELP = "Also show transformers' own progress bars and messages (loading, converting, saving models)."

FEEDBACK_HELP = (
    "Feedback between turns (with --turns > 1): execution (test results and static checks; the coding task) "
    "or reviewer (a model behind --reviewer-url; key from $MAGRPO_REVIEWER_API_KEY)."
)


class UsageError(Exception):
    """Bad input from the command line; printed without a traceback."""


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code=2)


def _parse_overrides(pairs: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise UsageError(
                f"--set {pair!r} is not of the form FIELD=VALUE (VALUE read as YAML; --help lists the fields)"
            )
        key, value = pair.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise UsageError(
                f"--set {pair!r}: VALUE is read as YAML, and {value!r} is not valid YAML ({problem})"
            ) from None
    return out


def resolve_config(
    task_name: str, config_file: Optional[Path], flags: dict[str, Any], overrides: list[str]
) -> MAGRPOConfig:
    """Defaults < the task's preferences < the YAML file < --set pairs < explicit flags."""
    from magrpo.tasks import get_task

    values: dict[str, Any] = dict(get_task(task_name).config_overrides)
    if config_file is not None:
        values.update(load_yaml_mapping(config_file))
    values.update(_parse_overrides(overrides))
    values.update({k: v for k, v in flags.items() if v is not None})
    return MAGRPOConfig.from_dict(values)


def _set_verbose(verbose: bool) -> None:
    if verbose:
        os.environ["MAGRPO_VERBOSE"] = "1"


def _model_specs(models: list[str], num_agents: int) -> list[str]:
    from magrpo.models.loading import resolve_model_source

    models = models or ["default"]
    if len(models) == 1:
        models = models * num_agents
    if len(models) != num_agents:
        raise UsageError(f"{len(models)} --model values for {num_agents} agents; give one for all or one per agent")
    for spec in set(models):
        if spec != "default":
            resolve_model_source(spec)  # names the choices when nothing matches, before any loading
    return models


def _explicit_fields(config_file: Optional[Path], overrides: list[str]) -> set[str]:
    fields = set(_parse_overrides(overrides))
    if config_file is not None:
        fields |= set(load_yaml_mapping(config_file))
    return fields


def _columns(columns: Optional[str]) -> Optional[dict[str, str]]:
    from magrpo.data import parse_column_map

    return parse_column_map(columns) if columns else None


def _load_items(
    task, data: Optional[str], column_map: Optional[dict[str, str]], split: str, data_split: Optional[str] = None
) -> list[dict[str, Any]]:
    """The task's own ``split`` ("train" / "eval"), or the user's ``data`` (its ``data_split``)."""
    if data is None:
        return task.load_split(split)
    from magrpo.data import load_items

    return load_items(data, column_map=column_map, required=task.required_columns, split=data_split)


def _held_out_items(
    task, cfg: MAGRPOConfig, train_items: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train items, held-out items): your --eval-data, a seeded --eval-fraction of your --data,
    nothing for --data alone, else the task's own held-out split."""
    if cfg.eval_fraction is not None:
        from magrpo.data import split_items

        return split_items(train_items, cfg.eval_fraction, cfg.seed)
    if cfg.train_data and not cfg.eval_data:
        return train_items, []
    return train_items, _load_items(task, cfg.eval_data, cfg.column_map, "eval", cfg.eval_split)


def _print_skipped(task, items: list[dict[str, Any]]) -> None:
    for note in task.skipped_figures(items):
        console.print(f"[yellow]note:[/] {note}", highlight=False)


def _results_table(before: dict[str, float] | None, after: dict[str, float]) -> Table:
    table = Table(title="held-out results", show_lines=False)
    table.add_column("metric")
    if before is not None:
        table.add_column("before", justify="right")
    table.add_column("after" if before is not None else "value", justify="right")
    if before is not None:
        table.add_column("change", justify="right")
    for key, value in after.items():
        if key == "items":
            continue
        row = [key]
        if before is not None:
            b = before.get(key, float("nan"))
            row += [f"{b:.4f}", f"{value:.4f}", f"{value - b:+.4f}"]
        else:
            row.append(f"{value:.4f}")
        table.add_row(*row)
    return table


@app.command()
def tasks() -> None:
    """List the built-in tasks."""
    for name, (desc, _) in TASKS.items():
        console.print(f"[bold]{name}[/]: {desc}")


@app.command()
def view(
    runs: list[Path] = typer.Argument(..., help="Run folders (several: their curves overlaid).", show_default=False),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="The page to write (default: RUN/view.html for one run, view.html for several)."
    ),
    last_steps: Optional[int] = typer.Option(
        None, "--last-steps", min=1, help="Show the samples of each run's last N logged steps only (default: all)."
    ),
) -> None:
    """One self-contained HTML page of a run or of several side by side: training curves, the team's
    samples step by step (each agent's prompt, completion and advantage, the joint reward and its
    levels), the held-out answers before and after training. No server, nothing loaded from the network."""
    from magrpo.view import write_view

    try:
        path = write_view(runs, output, last_steps)
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    console.print(f"wrote {path}", highlight=False)


# ---------------------------------------------------------------------- options, each declared once
# Each command's parameters and the config fields its flags set come from its table of options
# (magrpo.cli_options); an option with a field and no help of its own shows the field's #: comment
# in config.py. These are the options train and eval share.
MODEL = Option(("--model", "-m"), list[str], [], MODEL_HELP)
MAX_NEW_TOKENS = Option(("--max-new-tokens",), Optional[int], field="max_new_tokens")
TURNS = Option(("--turns",), Optional[int], field="num_turns")
CONFIG = Option(("--config", "-c"), Optional[Path], help="YAML file of MAGRPOConfig fields; flags override it.")
SET = Option(("--set",), list[str], [], "Set any config field (listed below): --set FIELD=VALUE, VALUE read as YAML.")
FEEDBACK = Option(("--feedback",), str, "execution", FEEDBACK_HELP)
REVIEWER_URL = Option(("--reviewer-url",), help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1.")
REVIEWER_MODEL = Option(("--reviewer-model",), help="Model name sent to the reviewer endpoint.")
COLUMNS = Option(
    ("--columns",), help="Column mapping TASK_COLUMN=YOUR_COLUMN,... for --data.", field="column_map", to_field=_columns
)
VERBOSE = Option(("--verbose",), bool, False, VERBOSE_HELP)
ALLOW_PASS = Option(
    ("--allow-pass",),
    list[str],
    [],
    "A role that may pass (answer with an empty part), scored by the task's rule for a pass, e.g. --allow-pass "
    "helper on coding (the main function alone: at most 5.0 of 5.5) or coding-paper. docs/protocols.md",
)

NUM_GENERATIONS = Option(("--num-generations", "-G"), Optional[int], field="num_generations")
BATCH_SIZE = Option(("--batch-size",), Optional[int], field="batch_size")
JOINT_MODE = Option(("--joint-mode",), field="joint_mode")
PROTOCOL = Option(
    ("--protocol",),
    help="simultaneous (every agent answers from its own prompt at once; default) or sequential (each agent after "
    "the earlier ones, seeing their answers; --joint-mode aligned: each answer continued once, cross: G times). "
    "docs/protocols.md",
    field="protocol",
)
CENTRALISED_OPTION = Option(
    ("--centralised",),
    bool,
    False,
    "Centralised MAGRPO: one model writes the whole joint answer (the single set-up's prompt, its reply cut "
    "into the parts and scored as the team's, with the team's tokens); the task is then NAME-centralised.",
)
LORA = Option(
    ("--lora/--full",),
    Optional[bool],
    help="LoRA adapters per agent on one shared base, or full fine-tuning.",
    field="use_lora",
)
EXPAND = Option(
    ("--expand",),
    help="Multi-turn tree: full, or best-k (only the k best joint actions of a node continue).",
    field="expand",
)
EXPAND_K = Option(("--expand-k",), Optional[int], help="k of --expand best-k (1: the greedy chain).", field="expand_k")
NPROC = Option(
    ("--nproc",),
    int,
    1,
    "Data-parallel processes on this machine (launches torchrun; --batch-size is per process).",
    min=1,
)

#: the options of ``magrpo train``
TRAIN_OPTIONS = (
    Option(("--task",), help=TASK_HELP + " Default: coding (with --resume: the run's task)."),
    MODEL,
    NUM_GENERATIONS,
    Option(("--steps",), Optional[int], field="max_steps"),
    BATCH_SIZE,
    MAX_NEW_TOKENS,
    Option(("--lr",), Optional[float], help="AdamW learning rate.", field="learning_rate"),
    JOINT_MODE,
    PROTOCOL,
    ALLOW_PASS,
    CENTRALISED_OPTION,
    Option(
        ("--algorithm",),
        help="magrpo (the group's mean is the baseline; default), iac (each agent's own critic), maac "
        "(one centralised critic) or madpo (each agent's DPO loss on pairs of a node's joint actions ranked by their "
        "returns: docs/preference.md); the critic algorithms take -G 1 and up.",
        field="algorithm",
    ),
    Option(
        ("--critic-type",),
        help="iac, maac: v (the critic values the observation, A = R - V; default) or q (the observation and the "
        "action, A = Q - the mean Q of the node's joint actions; -G 2 and up).",
        field="critic_type",
    ),
    LORA,
    Option(("--seed",), Optional[int], field="seed"),
    Option(
        ("--output-dir", "-o"),
        Optional[Path],
        help="Run directory (default runs/TASK-TIMESTAMP).",
        field="output_dir",
        to_field=str,
    ),
    CONFIG,
    SET,
    TURNS,
    EXPAND,
    EXPAND_K,
    FEEDBACK,
    REVIEWER_URL,
    REVIEWER_MODEL,
    Option(("--eval-items",), int, 8, "Held-out items evaluated before and after training (0: none).", min=0),
    Option(
        ("--data",),
        Optional[Path],
        help="Your own training data (JSONL, JSON, CSV, Parquet, or a datasets save_to_disk folder).",
        field="train_data",
        to_field=str,
    ),
    Option(
        ("--data-split",),
        help="The split of --data to train on (a multi-split JSON or DatasetDict).",
        field="train_split",
    ),
    Option(
        ("--eval-data",), Optional[Path], help="Your own held-out data (same formats).", field="eval_data", to_field=str
    ),
    Option(("--eval-split",), help="The split of --eval-data to evaluate on.", field="eval_split"),
    Option(
        ("--eval-fraction",),
        Optional[float],
        help="Hold out this fraction of --data for evaluation (seeded by --seed; no --eval-data).",
        field="eval_fraction",
    ),
    COLUMNS,
    Option(("--no-progress",), bool, False, "No progress bar: one plain line per step (for logs)."),
    Option(
        ("--log-completions/--no-log-completions",),
        Optional[bool],
        help="Print each logged step's samples as a table: the item, each agent's completion and advantage, "
        "the joint reward.",
        field="log_completions",
    ),
    Option(
        ("--resume",),
        Optional[Path],
        help="Continue a run exactly where it stopped: its folder (newest complete checkpoint) or "
        "RUN/checkpoints/step-N. Task, models and config come from the run; flags may change max steps and logging.",
    ),
    NPROC,
    VERBOSE,
)


@command(app, "train", TRAIN_OPTIONS, epilog=config_fields_epilog(TRAIN_OPTIONS))
def train(given: SimpleNamespace) -> None:
    """Train a team (MAGRPO, or a critic baseline: --algorithm), evaluating it on held-out items before and after."""
    if given.nproc > 1 and "WORLD_SIZE" not in os.environ:
        _relaunch_with_torchrun(given.nproc)
    try:
        _train(given)
    except (UsageError, ValueError, ImportError, DiskFullError) as exc:  # a full disk: one message, no traceback
        _fail(str(exc))
    except KeyboardInterrupt:
        raise typer.Exit(code=130) from None


def _train(given: SimpleNamespace) -> None:
    _set_verbose(given.verbose)
    from magrpo.tasks import get_task

    if given.resume is not None:  # the run's own task, models and config, unless given again
        saved = _saved_run(given.resume)
        resumed = RunFolder.of(given.resume)
        given.task = given.task or saved.get("task")
        given.model = given.model or list(saved.get("models") or [])
        given.allow_pass = given.allow_pass or list(saved.get("allow_pass") or [])
        given.config = given.config or resumed.config
        # the folder given is the run's, wherever it was started from or moved to
        given.output_dir = given.output_dir or resumed.path
    task = given.task or "coding"
    if given.centralised and not task.endswith(CENTRALISED):
        task += CENTRALISED
    task_obj = _allowing_pass(get_task(task), given.allow_pass)  # an unknown name stops here, naming the choices
    flags = {"num_agents": task_obj.num_agents, **config_values(TRAIN_OPTIONS, given)}
    cfg = resolve_config(task, given.config, flags, given.set)
    if "output_dir" not in _explicit_fields(given.config, given.set) and given.output_dir is None:
        cfg.output_dir = str(Path("runs") / f"{task}-{time.strftime('%Y%m%d-%H%M%S')}")
    run = RunFolder(cfg.output_dir)
    feedback_source = _feedback(task_obj, cfg, given.feedback, given.reviewer_url, given.reviewer_model)
    specs = _model_specs(given.model, cfg.num_agents)
    train_items = _load_items(task_obj, cfg.train_data, cfg.column_map, "train", cfg.train_split)
    train_items, held_out = _held_out_items(task_obj, cfg, train_items)
    if given.eval_items and not held_out and cfg.train_data:  # said before any training, not after
        console.print(
            f"[yellow]note:[/] --eval-items {given.eval_items} asks for a held-out evaluation, but --data alone "
            "holds nothing out: add --eval-fraction 0.1 (a seeded part of your data) or --eval-data FILE",
            highlight=False,
        )
    held_out = held_out[: given.eval_items]
    _print_skipped(task_obj, held_out)
    console.print(
        f"[bold]magrpo[/] task={task} agents={specs} G={cfg.num_generations} steps={cfg.max_steps} -> {run.path}"
    )

    with _trainer(task_obj, specs, cfg, feedback_source, train_dataset=train_items, eval_dataset=held_out) as trainer:
        from magrpo import distributed
        from magrpo.report import RunLog

        main = distributed.is_main()  # data parallel: every rank evaluates its share, rank 0 writes and reports
        extra = {"task": task, "models": specs, "allow_pass": given.allow_pass}
        log = RunLog(run.path, cfg, extra=extra, resume=given.resume is not None, writes=main)
        trainer.resume_hint = f"magrpo train --resume {run.path}"
        if given.resume is None:
            before = task_obj.with_normalised_return(trainer.evaluate()) if held_out else None
            if before is not None and main:
                log.held_out("before", before, trainer.eval_samples)
        else:  # the figures the run started from
            before_path = run.held_out("before")
            before = json.loads(before_path.read_text()) if held_out and before_path.is_file() else None
        trainer.train(log=log, progress="lines" if given.no_progress else True, resume_from_checkpoint=given.resume)
        after = task_obj.with_normalised_return(trainer.evaluate()) if held_out else None
        if not main:
            return
        if after is not None:
            log.held_out("after", after, trainer.eval_samples)
            log.plot_rewards(trainer.history)  # again, with the held-out points
            console.print(_results_table(before, after))
        last = trainer.history[-1] if trainer.history else {}
        written = [p.name for p in (run.config, run.metrics, run.samples, run.reward_curve) if p.is_file()]
        if (run.path / FINAL).is_dir():
            written.append(f"{FINAL}/agent_*")
        console.print(
            f"trained {trainer.step} steps; last step mean joint reward {last.get('reward_mean', float('nan')):+.3f}\n"
            f"run files: {run.path} ({', '.join(written)})"
        )


def _relaunch_with_torchrun(nproc: int) -> None:
    """``magrpo train --nproc K ...`` is ``torchrun --standalone --nproc-per-node K -m magrpo.cli train ...``."""
    import subprocess

    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        "-m",
        "magrpo.cli",
        *args,
    ]
    console.print(f"launching: {' '.join(command[1:])}", highlight=False)
    raise typer.Exit(code=subprocess.call(command))


def _allowing_pass(task_obj: Any, roles: list[str]) -> Any:
    """The task with ``roles`` allowed to pass (--allow-pass), or a clear stop."""
    try:
        return task_obj.allowing_pass(roles)
    except ValueError as exc:
        _fail(str(exc))


def _saved_run(resume: Path) -> dict[str, Any]:
    import yaml

    path = RunFolder.of(resume).config
    if not path.is_file():
        raise UsageError(f"--resume {str(resume)!r}: no run there ({str(path)!r} is missing)")
    return yaml.safe_load(path.read_text()) or {}


def _feedback(task_obj, cfg: MAGRPOConfig, kind: str, url: Optional[str], model_name: Optional[str]):
    if cfg.num_turns == 1:
        return None
    if kind == "execution":
        if task_obj.execution_feedback is None:
            raise UsageError(f"task {task_obj.name!r} has no execution feedback; use --feedback reviewer")
        return task_obj.execution_feedback()
    if kind == "reviewer":
        from magrpo.feedback import ReviewerClient, ReviewerFeedback

        if not url or not model_name:
            raise UsageError("--feedback reviewer needs --reviewer-url and --reviewer-model")
        return ReviewerFeedback(ReviewerClient(url, model_name), task_field=task_obj.task_column)
    raise UsageError(f"--feedback {kind!r} is not one of 'execution', 'reviewer'")


def _trainer(task_obj, specs, cfg: MAGRPOConfig, feedback_source, **datasets):
    from magrpo.trainer import MAGRPOTrainer

    return MAGRPOTrainer(
        agents=specs,
        scorer=task_obj.scorer,
        formatters=task_obj.formatters,
        args=cfg,
        feedback=feedback_source,
        is_solved=task_obj.is_solved,
        agent_roles=task_obj.agent_roles,
        show_earlier_answers=task_obj.show_earlier_answers,
        **datasets,
    )


#: the options of ``magrpo eval``
EVAL_OPTIONS = (
    Option(("--task",), str, "coding", TASK_HELP),
    Option(
        ("--checkpoint",),
        Optional[Path],
        help="A run folder (its final weights), or a folder holding agent_0, agent_1, ... (RUN/final, "
        "RUN/checkpoints/step-N).",
    ),
    replace(MODEL, help=MODEL_HELP + " Ignored with --checkpoint."),
    Option(
        ("--eval-items",),
        Optional[int],
        help="Evaluate the first N held-out items (default: all; 0: none, as in train).",
        min=0,
    ),
    MAX_NEW_TOKENS,
    replace(TURNS, help="Turns per episode; figures are reported per turn."),
    replace(
        PROTOCOL,
        help="simultaneous or sequential (each agent after the earlier ones, seeing their answers); "
        "default: the checkpoint's run's, else simultaneous.",
    ),
    ALLOW_PASS,
    FEEDBACK,
    REVIEWER_URL,
    REVIEWER_MODEL,
    CONFIG,
    SET,
    Option(
        ("--data",),
        Optional[Path],
        help="Your own held-out data instead of the task's.",
        field="eval_data",
        to_field=str,
    ),
    Option(("--data-split",), help="The split of --data to evaluate on.", field="eval_split"),
    COLUMNS,
    Option(
        ("--setup",),
        help="Evaluate an alternative to the team on the same reward: single (one model writes the whole "
        "answer), parallel (the team as given), sequential (agent 2 sees agent 1's answer), "
        "discussion (one round of revision).",
    ),
    # the old name of --setup, kept so that existing scripts run; not in the help
    Option(("--baseline",), hidden=True),
    Option(("--latency-items",), int, 4, "Writing tasks: items timed for team vs single-model latency (0: skip)."),
    Option(("--output",), Optional[Path], help="Write the figures to this JSON file."),
    VERBOSE,
)


@command(app, "eval", EVAL_OPTIONS, epilog=config_fields_epilog(EVAL_OPTIONS))
def evaluate(given: SimpleNamespace) -> None:
    """Evaluate a trained team (or untrained models) on the held-out split."""
    try:
        if given.setup is None:
            given.setup = given.baseline
        elif given.baseline not in (None, given.setup):
            raise UsageError(
                f"--setup {given.setup} and --baseline {given.baseline} (its old name) disagree; give --setup alone"
            )
        _evaluate(given)
    except (UsageError, ValueError, ImportError) as exc:
        _fail(str(exc))


def _agents_folder(path: Path) -> Path:
    """The folder of a run's agents that ``--checkpoint`` names: the folder itself, or a run
    folder's final weights (RUN/final), as --resume takes a run folder."""
    final = RunFolder(path).final
    return final if not (path / "agent_0").is_dir() and (final / "agent_0").is_dir() else path


def trained_config(checkpoint: Path) -> dict[str, Any] | None:
    """The config a checkpoint was trained with: its own config.yaml (a checkpoints/step-N
    folder) or its run's (a final folder); None where there is neither."""
    for path in (checkpoint / "config.yaml", checkpoint.parent / "config.yaml"):
        if path.is_file():
            return load_yaml_mapping(path)
    return None


def in_trained_order(cfg: MAGRPOConfig, checkpoint: Path, protocol: str | None) -> MAGRPOConfig:
    """``cfg`` with the protocol the checkpoint's run trained with (its agents answer in the order
    they learnt), unless ``protocol`` (--protocol) was given."""
    trained = (trained_config(checkpoint) or {}).get("protocol")
    if protocol is not None or trained in (None, cfg.protocol):
        return cfg
    return replace(cfg, protocol=trained)


def held_out_part(items: list[dict[str, Any]], data: Path, checkpoint: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The items of ``data`` a checkpoint did not train on: where its run trained on the same file
    with an eval_fraction, only the fraction it held out (the same seeded split), with a note."""
    trained = trained_config(checkpoint) or {}
    fraction, train_data = trained.get("eval_fraction"), trained.get("train_data")
    if fraction is None or train_data is None or Path(train_data).resolve() != data.resolve():
        return items, None
    from magrpo.data import split_items

    _, held_out = split_items(items, fraction, int(trained.get("seed", 0)))
    return held_out, (
        f"{str(data)!r} is the data this checkpoint trained on with eval_fraction={fraction}: evaluating only "
        f"the {len(held_out)} of its {len(items)} items the run held out (seed {trained.get('seed', 0)})"
    )


def _evaluate(given: SimpleNamespace) -> None:
    _set_verbose(given.verbose)
    from magrpo.tasks import get_task

    task, checkpoint, setup = given.task, given.checkpoint, given.setup
    check_task_name(task)  # before anything loads
    if setup is not None:
        from magrpo.choices import SETUPS, check_choice

        check_choice("--setup", setup, SETUPS)
    task_obj = _allowing_pass(get_task(task), given.allow_pass)
    flags = {"num_agents": task_obj.num_agents, **config_values(EVAL_OPTIONS, given)}
    cfg = resolve_config(task, given.config, flags, given.set)
    feedback_source = _feedback(task_obj, cfg, given.feedback, given.reviewer_url, given.reviewer_model)
    if checkpoint is not None:
        from magrpo.models.agent import agent_name

        checkpoint = _agents_folder(checkpoint)
        dirs = [checkpoint / agent_name(i) for i in range(cfg.num_agents)]
        missing = [str(d) for d in dirs if not d.is_dir()]
        if missing:
            raise UsageError(
                f"checkpoint {str(checkpoint)!r} lacks {missing}; expected one agent_i directory per agent"
            )
        specs = [str(d) for d in dirs]
        cfg.use_lora = False  # a LoRA checkpoint loads with its adapter merged; no fresh adapter on top
        cfg = in_trained_order(cfg, checkpoint, given.protocol)
    else:
        specs = _model_specs(given.model, cfg.num_agents)
    items = _load_items(task_obj, cfg.eval_data, cfg.column_map, "eval", cfg.eval_split)
    if checkpoint is not None and cfg.eval_data is not None:
        items, note = held_out_part(items, Path(cfg.eval_data), checkpoint)
        if note:
            console.print(f"[yellow]note:[/] {note}", highlight=False)
    items = items if given.eval_items is None else items[: given.eval_items]
    trainer = _trainer(task_obj, specs, cfg, feedback_source, eval_dataset=items)
    if items and setup is not None:
        if setup != "parallel" and cfg.num_turns > 1:
            raise UsageError(f"--setup {setup} answers in one turn; drop --turns")
        from magrpo.eval.setups import evaluate_setup

        _print_skipped(task_obj, items)
        figures = evaluate_setup(
            setup,
            trainer.agents,
            items,
            formatters=task_obj.formatters,
            scorer=task_obj.scorer,
            max_new_tokens=cfg.longest_completion(),
            roles=task_obj.agent_roles,
            single_formatter=task_obj.single_agent_formatter,
            split_single=task_obj.split_single_answer,
        )
    elif items:
        _print_skipped(task_obj, items)
        figures = trainer.evaluate()
    else:
        console.print("no held-out items evaluated (--eval-items 0)")
        figures = {"items": 0.0}
    if given.latency_items and items and task_obj.single_agent_formatter is not None:
        from magrpo.eval.latency import team_vs_single_latency

        figures.update(
            team_vs_single_latency(
                trainer.agents,
                task_obj.formatters,
                task_obj.single_agent_formatter,
                items[: given.latency_items],
                max_new_tokens=cfg.longest_completion(),
            )
        )
    figures = task_obj.with_normalised_return(figures)
    console.print(_results_table(None, figures))
    if given.output:
        given.output.write_text(json.dumps(figures, indent=2))


#: the options of ``magrpo vllm-serve``
SERVE_OPTIONS = (
    Option(
        ("--model", "-m"),
        list[str],
        [],
        "A model to serve, repeatable: one per fully trained agent (each needs an engine of its own), one for "
        "LoRA agents on one base (with --lora-rank). Names as for train: 'default', a preset, a folder, a GGUF file.",
    ),
    Option(("--host",), str, "127.0.0.1", "Address to answer on (0.0.0.0: every interface)."),
    Option(("--port",), int, 8000, "Port to answer on."),
    Option(
        ("--devices",),
        list[str],
        [],
        "Where each model's engine runs, one per --model: 'cpu', 'cpu:0-3', 'cuda:1', 'cuda:1,2' (tensor parallel). "
        "Default: the first GPU, else the CPU (several engines split its cores).",
    ),
    Option(
        ("--dtype",),
        str,
        "auto",
        "The engines' dtype: auto (bfloat16 on a GPU, float32 on the CPU), float32, bfloat16, float16.",
    ),  # fmt: skip
    Option(("--lora-rank",), Optional[int], help="Serve LoRA adapters up to this rank (LoRA agents on one base)."),
    Option(("--max-loras",), int, 4, "Adapters an engine holds at once (one per LoRA agent it serves)."),
    Option(("--max-model-len",), int, 4096, "The longest prompt + completion an engine takes (at most the model's)."),
    Option(("--kv-cache-gib",), float, 1.0, "On the CPU: GiB of KV cache per engine."),
    Option(
        ("--gpu-memory-utilization",),
        Optional[float],
        help="On a GPU: the share of its memory each engine takes (default 0.9 over the engines on it).",
    ),
    Option(("--seed",), int, 0, "The engines' seed (each request carries its own as well)."),
    Option(
        ("--scratch-dir",),
        Optional[Path],
        help="Where the engines keep their copies of the weights while serving, a model's size each, in a folder "
        "of their own removed when the server stops. Default: the system's temporary folder.",
    ),
    VERBOSE,
)


@command(app, "vllm-serve", SERVE_OPTIONS)
def vllm_serve(given: SimpleNamespace) -> None:
    """Serve vLLM engines that sample for a trainer elsewhere (train with --set vllm_mode=server --set
    vllm_server_url=http://HOST:PORT): weights pushed after every update, each push a policy version."""
    _set_verbose(given.verbose)
    try:
        from magrpo.sampling.placement import EnginePlacement
        from magrpo.sampling.vllm_engine import check_vllm_installed
        from magrpo.sampling.vllm_server import ServedModel, serve

        check_vllm_installed()
        models = given.model or ["default"]
        devices = given.devices or [_default_engine_device()] * len(models)
        if len(devices) != len(models):
            raise UsageError(f"{len(devices)} --devices for {len(models)} --model; give one per model, or none")
        scratch_dir = given.scratch_dir.expanduser() if given.scratch_dir is not None else None
        if scratch_dir is not None and not (scratch_dir.is_dir() and os.access(scratch_dir, os.W_OK)):
            raise UsageError(f"--scratch-dir {str(scratch_dir)!r} is not a folder this user can write to; give one")
        served = [
            ServedModel(
                spec,
                EnginePlacement.parse(device),
                dtype=given.dtype,
                max_model_len=given.max_model_len,
                lora_rank=given.lora_rank,
                max_loras=given.max_loras,
            )
            for spec, device in zip(_model_specs(models, len(models)), devices)
        ]
        serve(
            served,
            host=given.host,
            port=given.port,
            seed=given.seed,
            kv_cache_gib=given.kv_cache_gib,
            gpu_memory_utilization=given.gpu_memory_utilization,
            scratch_dir=scratch_dir,
        )
    except (UsageError, ValueError, ImportError) as exc:
        _fail(str(exc))


def _default_engine_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------------- magrpo plan
#: the longest first-turn prompt of each task's train split in tokens, counted with the bundled
#: model's tokenizer and chat template (another model's tokenizer counts otherwise: --prompt-tokens)
TASK_PROMPT_TOKENS = {"coding": 507, "coding-paper": 477, "summarize": 535, "expand": 488}
DEVICES_HELP = (
    "Devices to plan: 4xH100-80GB (4 GPUs, with a suggested placement for 1, 2, 4 and 8 of them), 2x80GB, "
    "cuda:0=80GB,cuda:1=40GB, cpu (this machine's memory), cpu=24GB. GB is read as GiB. Default: this machine."
)

#: the options of ``magrpo plan``: the train command's that shape memory, and what a plan needs besides
PLAN_OPTIONS = (
    Option(("--task",), str, "coding", TASK_HELP + " Its longest prompt is the default --prompt-tokens."),
    MODEL,
    NUM_GENERATIONS,
    BATCH_SIZE,
    MAX_NEW_TOKENS,
    TURNS,
    EXPAND,
    EXPAND_K,
    JOINT_MODE,
    PROTOCOL,
    CENTRALISED_OPTION,
    LORA,
    CONFIG,
    SET,
    replace(NPROC, help="Data-parallel processes to plan, one GPU each (sharded with --set data_parallel=shard)."),
    Option(("--devices",), help=DEVICES_HELP),
    Option(("--prompt-tokens",), Optional[int], help="The longest first-turn prompt in tokens (default: the task's)."),
    Option(
        ("--feedback-tokens",),
        int,
        128,
        "Tokens a later turn's prompt adds beside the previous answer (the feedback and the request to revise).",
        min=0,
    ),
)


@command(app, "plan", PLAN_OPTIONS, epilog=config_fields_epilog(PLAN_OPTIONS))
def plan(given: SimpleNamespace) -> None:
    """Plan a run's memory per device before it runs (weights, copies, gradients, AdamW moments, activations,
    engines), say whether it fits, and suggest where to place it on 1, 2, 4 and 8 GPUs."""
    try:
        _plan(given)
    except (UsageError, ValueError) as exc:
        _fail(str(exc))


def _plan(given: SimpleNamespace) -> None:
    from magrpo import memory_plan as mp
    from magrpo.tasks import get_task

    task = given.task + (CENTRALISED if given.centralised and not given.task.endswith(CENTRALISED) else "")
    task_obj = get_task(task)
    flags = {"num_agents": task_obj.num_agents, **config_values(PLAN_OPTIONS, given)}
    cfg = resolve_config(task, given.config, flags, given.set)
    specs = given.model or ["default"]
    specs = specs * cfg.num_agents if len(specs) == 1 else specs
    if len(specs) != cfg.num_agents:
        raise UsageError(f"{len(specs)} --model values for {cfg.num_agents} agents; give one for all or one per agent")
    models = [mp.model_shape(spec) for spec in specs]
    devices = mp.parse_devices(given.devices or "auto")
    prompt = given.prompt_tokens or TASK_PROMPT_TOKENS[task.removesuffix(CENTRALISED)]
    workload = mp.Workload(prompt, given.feedback_tokens if cfg.num_turns > 1 else 0)
    uniform_gpus = all(d.is_gpu and d.memory == devices[0].memory for d in devices)
    suggestions = mp.suggest_placements(cfg, models, devices[0], workload) if uniform_gpus else []
    if given.nproc > 1:
        shard = cfg.data_parallel == "shard"
        placement = mp.Placement((devices[0].name,) * cfg.num_agents, ranks=given.nproc, shard=shard)
        cfg = mp.for_placement(cfg, placement)
        devices = devices[:1]
    elif cfg.agent_devices or len(devices) == 1 or not suggestions:
        placement = None
    else:  # several GPUs and no placement asked for: the one suggested for this many
        chosen = [s for n, _, s in suggestions if n == len(devices)]
        found = chosen[0] if chosen else mp.suggest_placements(cfg, models, devices[0], workload, [len(devices)])[0][2]
        placement = found.placement
        cfg = mp.for_placement(cfg, placement)
    result = mp.plan_memory(cfg, models, devices, workload, placement)
    _print_plan(task, cfg, models, workload, result)
    if suggestions:
        console.print(_suggestions_table(devices[0], suggestions))


def _print_plan(task: str, cfg: MAGRPOConfig, models, workload, result) -> None:
    from magrpo.memory_plan import HELD, GiB

    names = sorted({m.name for m in models})
    lora = cfg.lora_per_agent()
    training = "LoRA" if all(lora) else "full fine-tuning" if not any(lora) else "LoRA and full agents"
    console.print(
        f"[bold]magrpo plan[/]: task {task}, {cfg.num_agents} agent(s) of {', '.join(names)}, {training}, "
        f"G={cfg.num_generations}, {cfg.batch_size} item(s) per step, {cfg.max_new_tokens} new tokens, "
        f"{cfg.num_turns} turn(s), micro-batch {cfg.update_micro_batch_size}",
        highlight=False,
    )
    later = ""
    if cfg.num_turns > 1:
        later = f"; a later turn adds the answer and {workload.feedback_tokens} feedback tokens"
    precision = ", ".join(f"{k} {v}" for k, v in result.precision.items())
    console.print(f"prompts up to {workload.prompt_tokens} tokens{later}; {precision}", highlight=False)
    console.print(f"placement: {escape(result.placement.describe())}{_run_with(result.placement)}", highlight=False)
    for device_plan in result.devices:
        title = device_plan.device.describe()
        table = Table(title=escape(title), show_lines=False, title_justify="left")
        for column, justify in (("term", "left"), ("GiB", "right"), ("alive", "left"), ("how estimated", "left")):
            table.add_column(column, justify=justify, overflow="fold")
        for term in device_plan.terms:
            alive = "whole step" if HELD in term.phases else ", ".join(term.phases)
            table.add_row(escape(term.what), f"{term.bytes / GiB:.2f}", escape(alive), escape(term.how))
        console.print(table)
        phases = ", ".join(f"{phase} {nbytes / GiB:.1f}" for phase, nbytes in device_plan.phase_bytes().items())
        console.print(f"GiB by phase (held + the phase's own): {escape(phases)}", highlight=False)
        for note in device_plan.notes:
            console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
        colour = "green" if device_plan.fits else "red"
        console.print(f"[bold {colour}]{escape(device_plan.verdict())}[/]", highlight=False)


def _run_with(placement) -> str:
    flags = placement.train_flags()
    return f" (magrpo train {flags})" if flags else ""


def _suggestions_table(gpu, suggestions) -> Table:
    from magrpo.memory_plan import GiB

    table = Table(title=escape(f"placements on GPUs of {gpu.memory / GiB:.0f} GiB ({gpu.label or gpu.name})"))
    for column in ("GPUs", "placement", "peak GiB per GPU", "verdict", ""):
        table.add_column(column, overflow="fold")
    for count, plans, chosen in suggestions:
        for candidate in plans:
            mark = ("suggested" if chosen.fits else "least short") if candidate is chosen else ""
            verdict = "fits" if candidate.fits else "does not fit"
            table.add_row(
                str(count),
                escape(candidate.placement.describe() + _run_with(candidate.placement)),
                f"{candidate.peak / GiB:.1f}",
                verdict,
                mark,
            )
    return table


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
