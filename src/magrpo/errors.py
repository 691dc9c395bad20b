"""Every error magrpo raises on bad input, in one place: each message names the bad value and
what would be accepted. All are ``ValueError`` subclasses, so one ``except ValueError`` catches them;
a fault of a running job that is no bad input (a rollout server gone) is a ``RuntimeError``."""

from __future__ import annotations


class ConfigError(ValueError):
    """An invalid configuration value; the message names the field, the value and what is accepted."""


class DataError(ValueError):
    """Data that cannot be read or used: a file, a dataset item, or a column the task needs."""


#: The name the trainer's arguments (``train_dataset``, ``eval_dataset``) raise under, as in TRL.
DatasetError = DataError


class ModelError(ValueError):
    """A model specification that names nothing loadable."""


class RewardError(ValueError):
    """A reward function returned something other than one finite number per joint action."""


class CheckpointError(ValueError):
    """A checkpoint that is incomplete, damaged, or does not fit the run; the message names the file."""


class EnvError(ValueError):
    """An environment that breaks the :class:`magrpo.envs.MultiAgentEnv` contract."""


class DiskFullError(RuntimeError):
    """A save that ran out of disk space: not bad input but a fault of the run. Nothing of the
    failed save is left on the disk; the message names what ran out, how much was needed, the
    newest complete checkpoint and the command that resumes from it."""


class RolloutServerError(RuntimeError):
    """A rollout server (``vllm_mode="server"``) that failed to answer or refused a request: not bad
    input but a fault of the run; the message names the server's URL and what it said. The run
    stops after writing a checkpoint of its last complete step (magrpo.run)."""

    def __init__(self, url: str, message: str) -> None:
        super().__init__(f"rollout server {url}: {message}")
        self.url = url


__all__ = [
    "DiskFullError",
    "RolloutServerError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DatasetError",
    "EnvError",
    "ModelError",
    "RewardError",
]
