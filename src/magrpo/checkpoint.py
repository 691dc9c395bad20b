"""Full-state checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint ``RUN/checkpoints/step-N/`` holds, for each agent, its trainable weights in the form
transformers or peft loads directly (``agent_i/``) and its optimiser state
(``agent_i/optimizer.pt``), and with ``sync_ref_model`` its moved reference
(``agent_i/reference/model.safetensors``); each critic's value head (IAC, MAAC:
``<critic>/value_head.safetensors``; its AdamW moments are in its host agent's optimiser state,
or, for a critic model of its own, beside its weights in ``<critic>/optimizer.pt``);
the random states (python, numpy, torch, the data order) and the trainer's position
(``trainer_state.pt``); the run's config (``config.yaml``); and last a ``manifest.json`` with
every file's size and sha256. It is written into a temporary folder, every file fsynced, then
renamed into place: a folder named ``step-N`` is always complete, and a file damaged later is
found by its hash and named.

Sampling copies are not stored: they are the weights rounded once, so they are rebuilt exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from magrpo.config import MAGRPOConfig, dump_yaml
from magrpo.critics.critic import VALUE_HEAD_FILE, Critic, load_heads, save_critics
from magrpo.errors import CheckpointError, ConfigError
from magrpo.models.agent import AgentPolicy
from magrpo.models.loading import save_agent
from magrpo.run_folder import CONFIG_FILE, STEP_DIR, RunFolder
from magrpo.sharding import shard_optimizer_state

MANIFEST = "manifest.json"
STATE_FILE = "trainer_state.pt"
OPTIMIZER_FILE = "optimizer.pt"
#: a fully trained agent's reference where sync_ref_model moves it (beside the agent's weights)
REFERENCE_FILE = "reference/model.safetensors"

#: config fields a resumed run may change: they do not change the maths of the steps to come
RESUMABLE_CHANGES = frozenset(
    {
        "max_steps",
        "log_samples_steps",
        "vllm_server_url",  # a server restarted elsewhere serves the same policy: the trainer pushes it
        "vllm_server_timeout",
        "save_steps",
        "save_minutes",
        "save_total_limit",
        "output_dir",
        "eval_data",
        "eval_max_items",
        "eval_temperature",
        "num_threads",
        "extra",
        "report_to",
        "device",
        "agent_devices",
        "data_parallel",
        "reference_device",
        # "auto" and what it resolved to are the same maths: the resolved policy is checked on
        # resume (magrpo.run.check_same_run)
        "autocast",
        "rollout_dtype",
        # an engine's memory, not the policy it serves
        "vllm_kv_cache_gib",
        "vllm_gpu_memory_utilization",
        "vllm_sleep_mode",
    }
)


def save_checkpoint(
    directory: str | Path,
    *,
    agents: Sequence[AgentPolicy],
    optimizers: Sequence[torch.optim.Optimizer],
    trainer_state: dict[str, Any],
    config: MAGRPOConfig,
    whole_states: Sequence[tuple[dict, dict | None]] | None = None,
    critics: Sequence[Critic] = (),
    write_extra: Callable[[Path], None] | None = None,
    model_only: bool = False,
) -> Path:
    """Write a full checkpoint to ``directory`` atomically; returns ``directory``. With
    ``model_only`` (save_only_model) the agents' weights and the critics' heads only: no optimiser,
    reference, random or trainer state, so it loads as a model but resumes no run.
    ``whole_states``: per agent, (weights, optimiser state) gathered from shards, written instead
    of the agent's and optimiser's own (the same files: any run resumes from them).
    ``write_extra(folder)`` writes more of the run's state into it (a rollout sampled ahead), in
    the manifest like the rest."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        for i, (agent, optimizer) in enumerate(zip(agents, optimizers)):
            weights, optimizer_state = whole_states[i] if whole_states else (None, optimizer.state_dict())
            save_agent(agent, tmp / agent.name, state_dict=weights)
            if model_only:
                continue
            torch.save(optimizer_state, tmp / agent.name / OPTIMIZER_FILE)
            if config.sync_ref_model and agent.reference_model is not None:  # moved since the run began
                from safetensors.torch import save_model

                (tmp / agent.name / REFERENCE_FILE).parent.mkdir()
                save_model(agent.reference_model, str(tmp / agent.name / REFERENCE_FILE))
        save_critics(critics, tmp)  # a head on an agent's model: its moments are in that agent's optimiser state
        if not model_only:
            for critic in critics:  # a critic model of its own: its optimiser state beside its weights
                if critic.model is not None:
                    torch.save(critic.optimizer.state_dict(), tmp / critic.name / OPTIMIZER_FILE)
            torch.save({**trainer_state, "rng": _rng_states()}, tmp / STATE_FILE)
            if write_extra is not None:
                write_extra(tmp)
        (tmp / CONFIG_FILE).write_text(dump_yaml(config.to_dict()))
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {str(p.relative_to(tmp)): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}
        described = {"step": trainer_state["step"], "model_only": model_only, "files": manifest}
        (tmp / MANIFEST).write_text(json.dumps(described, indent=1))
        folders = sorted({p.parent for p in files} | {tmp}, key=lambda p: len(p.parts), reverse=True)
        for path in [*files, tmp / MANIFEST, *folders]:
            _fsync(path)
        if directory.exists():  # a checkpoint of the same step (a run resumed there): replace it
            shutil.rmtree(directory)
        tmp.chmod(0o755)
        os.rename(tmp, directory)
        _fsync(directory.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def verify_checkpoint(directory: str | Path) -> dict[str, Any]:
    """The manifest of a complete, undamaged checkpoint, else :class:`CheckpointError` naming the file."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(directory)!r} is incomplete: it has no {MANIFEST}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint file {str(manifest_path)!r} is damaged: {exc}") from None
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {str(path)!r} is missing")
        if path.stat().st_size != expected["size"]:
            raise CheckpointError(
                f"checkpoint file {str(path)!r} is truncated or changed: {path.stat().st_size} bytes, "
                f"expected {expected['size']}"
            )
        if _sha256(path) != expected["sha256"]:
            raise CheckpointError(f"checkpoint file {str(path)!r} is damaged: its sha256 differs from the manifest's")
    return manifest


def check_holds_run_state(directory: str | Path) -> None:
    """Refuse to resume from a checkpoint written with save_only_model: it has weights, no run.
    The caller verified it (:func:`resolve_resume`): only its manifest is read, not every file
    hashed again."""
    if json.loads((Path(directory) / MANIFEST).read_text()).get("model_only"):
        raise CheckpointError(
            f"checkpoint {str(directory)!r} holds the agents' weights only (written with save_only_model=True): it "
            f"cannot resume a run; start a new run from its weights (magrpo train --model "
            f"{Path(directory) / 'agent_0'} ...), or resume from a checkpoint written without save_only_model"
        )


def checkpoints_of(run_dir: str | Path) -> list[Path]:
    """The step-N folders of a run, oldest first (complete or not)."""
    folder = RunFolder(run_dir).checkpoints
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_resume(path: str | Path) -> Path:
    """A checkpoint folder (checked), or a run folder: its newest complete, undamaged checkpoint
    (damaged ones are skipped with a warning naming what is wrong)."""
    path = Path(path)
    if (path / MANIFEST).exists() or STEP_DIR.match(path.name):
        verify_checkpoint(path)
        return path
    candidates = checkpoints_of(path)
    if not candidates:
        raise CheckpointError(
            f"nothing to resume in {str(path)!r}: it is neither a checkpoint (with {MANIFEST}) nor a run folder "
            "with checkpoints/step-N"
        )
    for candidate in reversed(candidates):
        try:
            verify_checkpoint(candidate)
            return candidate
        except CheckpointError as exc:
            warnings.warn(f"skipping checkpoint {candidate.name}: {exc}", stacklevel=2)
    raise CheckpointError(
        f"no complete checkpoint in {str(RunFolder(path).checkpoints)!r}: every one is damaged or incomplete"
    )


def check_resumable_config(directory: str | Path, config: MAGRPOConfig) -> None:
    """Refuse to resume with a config that changes the maths of the run, naming the fields."""
    import yaml

    # a field the checkpoint's version did not have yet ran at its default
    saved = {**MAGRPOConfig.defaults(), **yaml.safe_load((Path(directory) / CONFIG_FILE).read_text())}
    if saved.get("loss_aggregation") is not None:  # saved under the old name: it is the loss_type
        saved["loss_type"], saved["loss_aggregation"] = saved["loss_aggregation"], None
    current = config.to_dict()
    differing = sorted(
        k for k in set(saved) | set(current) if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k)
    )
    if differing:
        detail = ", ".join(f"{k}: {saved.get(k)!r} in the checkpoint, {current.get(k)!r} now" for k in differing)
        raise ConfigError(
            f"cannot resume {str(directory)!r} with a different {', '.join(differing)} ({detail}); only "
            f"{', '.join(sorted(RESUMABLE_CHANGES))} may change"
        )


def load_checkpoint(
    directory: str | Path,
    *,
    agents: Sequence[AgentPolicy],
    optimizers: Sequence[torch.optim.Optimizer],
    critics: Sequence[Critic] = (),
) -> dict[str, Any]:
    """Put a checkpoint's weights, optimiser states and random states back; returns the trainer
    state it saved (step, data order, ...). The caller verified the checkpoint."""
    directory = Path(directory)
    # every trained model with its optimiser: the agents, and the critics with models of their own
    trained = [("agent", agent.name, agent, optimizer) for agent, optimizer in zip(agents, optimizers)]
    trained += [("critic", c.name, c.model, c.optimizer) for c in critics if c.model is not None]
    for kind, name, policy, optimizer in trained:
        folder = directory / name
        if not folder.is_dir():
            raise CheckpointError(f"checkpoint {str(directory)!r} has no folder for {kind} {name!r}")
        load_agent_weights(policy, folder)
        if kind == "agent" and (folder / REFERENCE_FILE).is_file() and policy.reference_model is not None:
            from safetensors.torch import load_model

            load_model(policy.reference_model, str(folder / REFERENCE_FILE), device=str(policy.reference_model.device))
        # whole tensors: a sharded optimiser takes its shards of them
        optimizer.load_state_dict(
            shard_optimizer_state(optimizer, torch.load(folder / OPTIMIZER_FILE, weights_only=True))
        )
        policy.sync_sampling_copy()
    load_heads(critics, directory)
    state = torch.load(directory / STATE_FILE, weights_only=True)
    _set_rng_states(state.pop("rng"))
    return state


def prune_checkpoints(run_dir: str | Path, keep: int | None) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints (never the newest one), and what a
    killed save or a killed run left behind (unfinished ``.step-N.*`` folders, ``-interrupted``
    weights older than the newest complete checkpoint); returns the deleted.

    Called by the run that owns ``run_dir`` right after it saved, so no other save is under way."""
    folder = RunFolder(run_dir).checkpoints
    complete = [p for p in checkpoints_of(run_dir) if (p / MANIFEST).exists()]
    doomed = [p for p in folder.glob(".step-*") if p.is_dir()] if folder.is_dir() else []
    if complete:
        newest = int(STEP_DIR.match(complete[-1].name).group(1))
        for path in folder.glob("step-*-interrupted"):
            step = path.name.split("-")[1]
            if step.isdigit() and int(step) <= newest:
                doomed.append(path)
    if keep is not None:
        doomed += complete[: max(0, len(complete) - max(1, keep))]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


# ---------------------------------------------------------------------- internals
def load_agent_weights(agent: AgentPolicy, folder: Path) -> None:
    """Load into ``agent``'s model the weights :func:`magrpo.models.save_agent` wrote to ``folder``
    (a LoRA agent: its adapter's alone); weights that do not fit are a CheckpointError."""
    from safetensors.torch import load_file

    if agent.adapter is not None:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(
            agent.model, load_file(folder / "adapter_model.safetensors"), adapter_name=agent.adapter
        )
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise CheckpointError(
                f"agent {agent.name!r}: the adapter in {str(folder)!r} does not fit the model ({unexpected[:3]} ...)"
            )
        return
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        if shard.name != VALUE_HEAD_FILE:  # a critic model's value head lies beside its weights
            state.update(load_file(shard))
    missing, unexpected = agent.model.load_state_dict(state, strict=False)
    # a weight tied to a loaded one (lm_head to the embeddings) is saved once and comes back with it
    params = dict(agent.model.named_parameters(remove_duplicate=False))
    loaded_ids = {id(params[k]) for k in state if k in params}
    untied = [k for k in missing if k in params and id(params[k]) not in loaded_ids]
    if unexpected or untied:
        raise CheckpointError(
            f"agent {agent.name!r}: the weights in {str(folder)!r} do not fit the model "
            f"(missing {untied[:3]}, unexpected {list(unexpected)[:3]})"
        )


def _rng_states() -> dict[str, Any]:
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    states: dict[str, Any] = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [
            np_kind,
            torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            int(np_pos),
            int(np_has_gauss),
            float(np_gauss),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = [
    "RESUMABLE_CHANGES",
    "check_resumable_config",
    "checkpoints_of",
    "load_agent_weights",
    "load_checkpoint",
    "prune_checkpoints",
    "resolve_resume",
    "save_checkpoint",
    "verify_checkpoint",
]
