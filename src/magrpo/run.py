"""The run around the steps: resume, the run log and trackers, checkpoint cadence, clean stops on
signals, the final save, and each step's memory figures. Nothing here changes what a step
computes; :mod:`magrpo.step` is the algorithm."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch

from magrpo.checkpoint import (
    MANIFEST,
    check_holds_run_state,
    check_resumable_config,
    checkpoints_of,
    load_checkpoint,
    prune_checkpoints,
    resolve_resume,
    save_checkpoint,
)
from magrpo.config import MAGRPOConfig
from magrpo.disk import check_free_space, checkpoint_size, folder_bytes, human, is_out_of_space, out_of_space_message
from magrpo.envs.check import check_env
from magrpo.errors import ConfigError, DiskFullError, RolloutServerError
from magrpo.report import RunLog, progress_bar
from magrpo.samples import merge_shares
from magrpo.team import Precision, Team
from magrpo.trackers import Trackers

if TYPE_CHECKING:
    from magrpo.data import ItemOrder
    from magrpo.trainer import MAGRPOTrainer


class CheckpointCadence:
    """When the next full checkpoint is due: every ``save_steps`` steps or ``save_minutes`` minutes;
    never with ``save_strategy="no"``."""

    def __init__(self, args: MAGRPOConfig, step: int = 0) -> None:
        self.args = args
        self.writes = args.save_strategy != "no"  # checkpoints and weights at all
        self.saved(step)

    def saved(self, step: int) -> None:
        self.last_step, self.last_time = step, time.monotonic()

    def due(self, step: int) -> bool:
        if not self.writes:
            return False
        by_steps = self.args.save_steps and step % self.args.save_steps == 0
        by_time = self.args.save_minutes and time.monotonic() - self.last_time >= 60 * self.args.save_minutes
        return bool(by_steps or by_time)


@dataclass
class RunState:
    """Where a run stands: the steps taken, their metrics rows, the position in the data, and
    when the next checkpoint is due. Checkpoints carry it; a resume puts it back."""

    item_order: ItemOrder
    cadence: CheckpointCadence
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def train_loop(
    trainer: "MAGRPOTrainer", log: RunLog | None, progress: bool | str, resume_from_checkpoint: str | Path | bool | None
) -> list[dict[str, Any]]:
    """:meth:`MAGRPOTrainer.train`: steps until ``max_steps``, logging, checkpointing, stopping cleanly."""
    args, ranks, state = trainer.args, trainer.team.ranks, trainer.state
    if not trainer.train_items:
        raise ConfigError("train_dataset is empty")
    # the first item's environment must keep the contract before any compute is spent on it
    # (every step's results are checked as they come: tree.step_joint_actions)
    check_env(trainer.env_factory(trainer.train_items[0]), trainer.agent_names, step=False)
    resumed = resume(trainer, resume_from_checkpoint) if resume_from_checkpoint else None
    main = ranks.is_main  # rank 0 alone writes files and prints
    trackers = Trackers(args.report_to if main else [], args.output_dir, args.to_dict())
    log = log or RunLog(args.output_dir, args, resume=resumed is not None, writes=main)
    if resumed is not None:
        state.history = log.resume_at(state.step)
        if main:
            print(f"resumed from {resumed} at step {state.step}", flush=True)
    check_space(trainer)  # before step 1: a checkpoint's size is known
    if main:
        on_ranks = f" on {ranks.world_size} ranks" if ranks.world_size > 1 else ""
        print(f"plan: {args.plan().describe()}{on_ranks}", flush=True)
    stop, out_of_space = StopRequest(), False
    with (
        progress_bar(progress if main else False, args.max_steps, completed=state.step) as bar,
        stop.on_signals(trainer),
    ):
        try:
            while state.step < args.max_steps:
                metrics, samples = take_step(trainer, log)
                state.history.append(metrics)
                log.metrics(metrics)
                trackers.log(metrics, state.step)
                if args.log_samples_steps and state.step % args.log_samples_steps == 0:
                    samples = merge_shares(ranks.gather(samples))  # every rank's items (collective)
                    log.samples(state.step, samples)
                    trackers.log_samples(samples, state.step)
                    if args.log_completions and main:
                        print_completions(samples, state.step, args.num_completions_to_print)
                if ranks.any(stop.signal is not None) and stop.signal is None:
                    stop.signal = signal.SIGTERM  # another rank was asked to stop: stop together
                # decided together: the minutes since the last save differ a little between ranks
                if ranks.any(state.cadence.due(state.step)) or (stop.signal is not None and state.cadence.writes):
                    trainer.checkpoint(log.checkpoint_dir(state.step))
                bar(metrics)
                if stop.signal is not None:
                    stop.raise_stop(trainer, log)
        except _Stopped as stopped:
            raise stopped.exit from None
        except DiskFullError:
            out_of_space = True  # the weights alone would not fit either
            raise
        finally:
            trackers.close()
            # a run that died (an error; not a clean stop, nor a second Ctrl-C) still leaves the
            # weights of its last step when the last full checkpoint is older
            died = state.step < args.max_steps and stop.signal is None and not out_of_space and state.cadence.writes
            # (not when sharded: gathering the weights needs every rank, and the others may be gone)
            if died and state.step > state.cadence.last_step and main and not ranks.sharded:
                save_interrupted(trainer, log.checkpoint_dir(state.step, suffix="-interrupted"))
    # the end writes the final weights; a resumable checkpoint of the last step only when asked
    if args.save_final_checkpoint and state.cadence.last_step != state.step:
        trainer.checkpoint(log.checkpoint_dir(state.step))
    if state.cadence.writes and (main or ranks.sharded):
        save_weights(trainer, log.final_dir(), what="the final weights")
    if main:
        log.plot_rewards(state.history)
        print(f"the run folder {str(log.dir)!r} holds {human(folder_bytes(log.dir))}", flush=True)
    ranks.barrier()  # the other ranks return once the run's files are written
    return state.history


def print_completions(samples: Sequence[dict[str, Any]], step: int, limit: int | None) -> None:
    """log_completions: the step's samples as a table, on the console the progress bar draws on
    (rich keeps the bar below it)."""
    from rich import get_console

    from magrpo.samples import completions_table

    get_console().print(completions_table(samples, step, limit))


def take_step(trainer: "MAGRPOTrainer", log: RunLog) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One training step on the next batch (with rollouts sampled ahead: on the tree sampled
    during the last update, the next one started first: magrpo.overlap). A rollout server that
    stops answering ends the run with a checkpoint of its last complete step (the failed step
    changed no weight; its items come again on resume) and a message naming the server and the
    resume command."""
    state, ahead = trainer.state, trainer.ahead
    position = state.item_order.state()
    try:
        if ahead is None:
            indices = trainer.next_batch_indices()
            return trainer.train_step([trainer.train_items[i] for i in indices], indices)
        sampled = ahead.next()
        if state.step + 1 < trainer.args.max_steps:
            ahead.start(state.step + 1)
        return trainer.train_step_on(sampled, ahead.indices.pop(sampled.step, None))
    except RolloutServerError as exc:
        if ahead is not None:
            ahead.forget()
        state.item_order.load_state(position)
        if state.step > state.cadence.last_step and state.cadence.writes:
            trainer.checkpoint(log.checkpoint_dir(state.step))
        hint = trainer.resume_hint or f"trainer.train(resume_from_checkpoint={str(log.dir)!r})"
        saved = f"checkpoint {log.checkpoint_dir(state.step)}" if state.step else "no step had finished"
        if not state.cadence.writes:
            saved, hint = "save_strategy='no': nothing saved", "a new run"
        raise RolloutServerError(
            exc.url,
            f"{str(exc).removeprefix(f'rollout server {exc.url}: ')}; the run stopped after step {state.step} "
            f"({saved}): restart the server, then resume with: {hint}",
        ) from exc


def check_space(trainer: "MAGRPOTrainer") -> None:
    """Refuse to start where the output folder cannot hold one checkpoint, warn where it cannot
    hold the checkpoints the run keeps (:func:`magrpo.disk.check_free_space`); decided on the
    first rank, which writes them, and obeyed by all."""
    ranks, refusal = trainer.team.ranks, None
    if not trainer.state.cadence.writes:
        return
    if ranks.is_main:
        existing = [p for p in checkpoints_of(trainer.args.output_dir) if (p / MANIFEST).is_file()]
        try:
            check_free_space(trainer, existing)
        except ConfigError as exc:
            refusal = exc
    if ranks.any(refusal is not None):
        raise refusal or ConfigError("the first rank's output folder cannot hold a checkpoint of this run")


def resume_hint(trainer: "MAGRPOTrainer") -> str:
    """The command (CLI) or call (Python) that resumes this run."""
    return trainer.resume_hint or f"trainer.train(resume_from_checkpoint={str(trainer.args.output_dir)!r})"


def newest_complete(run_dir: str | Path) -> tuple[Path | None, int | None]:
    """The run's newest checkpoint that has its manifest (written last), and its step."""
    for path in reversed(checkpoints_of(run_dir)):
        if (path / MANIFEST).is_file():
            return path, int(path.name.split("-")[1])
    return None, None


def disk_full(trainer: "MAGRPOTrainer", what: str, folder: Path, needed: int) -> DiskFullError:
    newest, step = newest_complete(trainer.args.output_dir)
    return DiskFullError(out_of_space_message(what, folder, needed, newest, step, resume_hint(trainer)))


def save_weights(trainer: "MAGRPOTrainer", directory: str | Path, what: str) -> Path:
    """The agents' weights (:meth:`MAGRPOTrainer.save`) into ``directory`` written whole or not
    at all: into a hidden folder beside it, renamed at the end; a save that runs out of space is
    a :class:`DiskFullError` naming what was needed."""
    directory = Path(directory)
    if not trainer.team.ranks.is_main:  # a sharded run's other ranks gather; the first writes
        return trainer.save(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        trainer.save(tmp)
        if directory.exists():
            shutil.rmtree(directory)
        tmp.chmod(0o755)
        os.rename(tmp, directory)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        needed = checkpoint_size(trainer, current=True).weights
        if is_out_of_space(exc, directory.parent, needed):
            raise disk_full(trainer, f"{what} ({directory})", directory.parent, needed) from exc
        raise
    return directory


def save_interrupted(trainer: "MAGRPOTrainer", directory: Path) -> None:
    """The weights of a run that died, where they can be written: a failure here is a warning,
    never the error the run died of."""
    try:
        save_weights(trainer, directory, what=f"the weights of step {trainer.state.step}")
    except Exception as exc:  # the run's own error is on its way up
        warnings.warn(f"the weights of step {trainer.state.step} could not be saved: {exc}", stacklevel=2)


def write_checkpoint(trainer: "MAGRPOTrainer", directory: str | Path) -> Path:
    """A full, resumable checkpoint (see :mod:`magrpo.checkpoint`); older ones beyond
    ``save_total_limit`` are deleted. A save that runs out of space leaves nothing of itself and
    is a :class:`DiskFullError` naming what was needed and the newest complete checkpoint."""
    team, state = trainer.team, trainer.state
    model_only = trainer.args.save_only_model
    # sharded: every rank gathers
    whole = team.ranks.whole_states(team.agents, team.optimizers, with_optimizers=not model_only)
    if team.ranks.is_main:  # the same weights and states on every rank (or gathered): one writes them
        schedules = [scheduler.state_dict() for scheduler in team.schedulers or []]
        saved = {
            "step": state.step,
            **state.item_order.state(),
            "schedulers": schedules,
            # each agent's entropy coefficient (use_adaptive_entropy moves it every optimiser step)
            "entropy_controls": [control.state_dict() for control in team.entropy_controls],
            # what the config's "auto" resolved to and how many ranks shared the batch: a resume
            # elsewhere must run the same maths (check_same_run)
            "precision": precision_policy(team.precision),
            "world_size": team.ranks.world_size,
        }
        try:
            save_checkpoint(
                directory,
                agents=team.agents,
                optimizers=team.optimizers,
                trainer_state=saved,
                config=trainer.args,
                whole_states=whole,
                critics=team.critics,
                write_extra=trainer.ahead.save if trainer.ahead is not None else None,  # a rollout sampled ahead
                model_only=model_only,
            )
        except Exception as exc:
            needed = checkpoint_size(trainer, current=True).total
            if is_out_of_space(exc, Path(directory).parent, needed):
                raise disk_full(trainer, f"checkpoint {Path(directory).name}", Path(directory).parent, needed) from exc
            raise
        prune_checkpoints(Path(directory).parent.parent, trainer.args.save_total_limit)
    team.ranks.barrier()  # a checkpoint is complete before any rank goes on
    state.cadence.saved(state.step)
    return Path(directory)


def resume(trainer: "MAGRPOTrainer", target: str | Path | bool) -> Path:
    """Put a checkpoint back into ``trainer``: weights, optimiser and random states, the data position."""
    path = resolve_resume(trainer.args.output_dir if target is True else target)
    check_holds_run_state(path)
    check_resumable_config(path, trainer.args)
    saved = load_checkpoint(path, agents=trainer.agents, optimizers=trainer.optimizers, critics=trainer.team.critics)
    check_same_run(saved, trainer.team)  # still before any step
    state = trainer.state
    state.step = int(saved["step"])
    state.item_order.load_state(saved)
    if trainer.ahead is not None:  # the rollout the straight run had sampled ahead
        trainer.ahead.restore(path)
    load_schedules(trainer.team.schedulers or [], saved.get("schedulers"), state.step)
    for control, control_state in zip(trainer.team.entropy_controls, saved.get("entropy_controls") or []):
        control.load_state_dict(control_state)
    state.cadence.saved(state.step)
    return path


def precision_policy(precision: Precision) -> dict[str, str]:
    """A run's resolved precision as plain names: the update's autocast and what samples."""
    autocast = "no" if precision.autocast is None else str(precision.autocast).removeprefix("torch.")
    return {"autocast": autocast, "rollout_dtype": precision.rollout_dtype}


def check_same_run(state: dict[str, Any], team: Team) -> None:
    """Refuse a resume whose devices or ranks would change the maths the checkpoint ran with: the
    precision "auto" resolved to (a CPU run resumed on CUDA would switch to bf16), or the number
    of ranks (the global batch is batch_size x ranks). Checkpoints written before these were
    recorded are not checked."""
    saved, now = state.get("precision"), precision_policy(team.precision)
    if saved is not None and saved != now:
        raise ConfigError(
            f"this checkpoint ran with autocast={saved['autocast']}, rollout_dtype={saved['rollout_dtype']}; here "
            f"the config resolves to autocast={now['autocast']}, rollout_dtype={now['rollout_dtype']} (other devices): "
            f"resume with --set autocast={saved['autocast']} --set rollout_dtype={saved['rollout_dtype']} "
            "to run as it ran"
        )
    ranks = state.get("world_size")
    if ranks is not None and ranks != team.ranks.world_size:
        raise ConfigError(
            f"this checkpoint ran on {ranks} rank(s) (a global batch of batch_size x {ranks}); here there are "
            f"{team.ranks.world_size}: resume with --nproc {ranks} (torchrun --nproc-per-node {ranks})"
        )


def load_schedules(schedulers: list[Any], states: list[dict[str, Any]] | None, step: int) -> None:
    """The learning-rate schedules where the checkpoint left them (one written before schedules
    were saved: moved on ``step`` steps, as the run did)."""
    for i, scheduler in enumerate(schedulers):
        if states and i < len(states):
            scheduler.load_state_dict(states[i])
        else:
            for _ in range(step):
                scheduler.step()


class StopRequest:
    """SIGTERM and a first Ctrl-C ask for a clean stop after the current step; a second Ctrl-C
    raises KeyboardInterrupt at once."""

    def __init__(self) -> None:
        self.signal: int | None = None

    @contextlib.contextmanager
    def on_signals(self, trainer: "MAGRPOTrainer") -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():  # only the main thread takes signals
            yield
            return

        def request_stop(signum: int, frame: Any) -> None:
            if self.signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.signal = signum
            print(
                f"\n{signal.Signals(signum).name}: finishing step {trainer.state.step + 1}, then saving a checkpoint "
                "(Ctrl-C again to abort at once)",
                flush=True,
            )

        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def raise_stop(self, trainer: "MAGRPOTrainer", log: RunLog) -> None:
        hint = trainer.resume_hint or f"trainer.train(resume_from_checkpoint={str(log.dir)!r})"
        if trainer.state.cadence.writes:
            said = f"checkpoint {log.checkpoint_dir(trainer.state.step)}\nresume with: {hint}"
        else:
            said = "nothing saved (save_strategy='no')"
        print(f"stopped after step {trainer.state.step}; {said}", flush=True)
        exit_ = KeyboardInterrupt() if self.signal == signal.SIGINT else SystemExit(128 + int(self.signal))
        raise _Stopped(exit_)


class _Stopped(Exception):
    """A clean stop on a signal, carrying the exception the caller should see."""

    def __init__(self, exit_: BaseException) -> None:
        super().__init__(str(exit_))
        self.exit = exit_


# ---------------------------------------------------------------------- memory figures
_HOST_PEAK = Path("/proc/self/status")  # Linux: VmHWM, the peak resident set, resettable per step


def reset_peak_memory(processes: Sequence[int] = ()) -> None:
    """Start a step's memory peaks afresh, this process's and those of ``processes`` (its vLLM
    engines' own; host: Linux only; elsewhere the process's peak so far)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    for process in ("self", *processes):
        try:
            Path(f"/proc/{process}/clear_refs").write_text("5")  # "5": reset VmHWM to the current resident set
        except OSError:
            pass  # not Linux, or not allowed: the peak is then the process's so far


def process_peak_rss_mib(status: Path = _HOST_PEAK) -> float:
    """A process's peak resident set in MiB, from its ``/proc/<pid>/status`` (Linux: VmHWM)."""
    return int(re.search(r"VmHWM:\s+(\d+)", status.read_text()).group(1)) / 1024


def _peak_or_zero(status: Path) -> float:
    try:
        return process_peak_rss_mib(status)
    except OSError:  # the process has ended
        return 0.0


def peak_memory_figures(processes: Sequence[int] = ()) -> dict[str, float]:
    """Peak memory in MiB: of this step on each GPU in use (``cuda_peak_mib``), and in host memory
    (``peak_rss_mib``: of this step on Linux, of the process so far elsewhere; with
    ``processes``, the vLLM engines' own, ``engines_peak_rss_mib``: the sum of their peaks)."""
    try:
        rss_mib = process_peak_rss_mib()
    except (OSError, AttributeError):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rss_mib = rss / (1024 * 1024 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB elsewhere
    figures = {"peak_rss_mib": rss_mib}
    if processes:
        figures["engines_peak_rss_mib"] = sum(_peak_or_zero(Path(f"/proc/{pid}/status")) for pid in processes)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        figures["cuda_peak_mib"] = (
            max(torch.cuda.max_memory_allocated(d) for d in range(torch.cuda.device_count())) / 2**20
        )
    return figures


__all__ = [
    "CheckpointCadence",
    "RunState",
    "StopRequest",
    "peak_memory_figures",
    "process_peak_rss_mib",
    "reset_peak_memory",
    "resume",
    "train_loop",
    "write_checkpoint",
]
