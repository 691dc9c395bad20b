"""Every error magrpo raises on bad input, in one place: each message names the bad value and
what would be accepted. All are ``ValueError`` subclasses, so one ``except ValueError`` catches them."""

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


__all__ = ["CheckpointError", "ConfigError", "DataError", "DatasetError", "EnvError", "ModelError", "RewardError"]
