"""Critics for the actor-critic algorithms (IAC, MAAC): their targets, losses and value heads."""

from magrpo.critics.targets import (
    critic_advantages,
    explained_variance,
    normalise_advantages,
    value_loss,
    value_targets,
)
from magrpo.critics.value_head import ValueHead, observation_values

__all__ = [
    "ValueHead",
    "critic_advantages",
    "explained_variance",
    "normalise_advantages",
    "observation_values",
    "value_loss",
    "value_targets",
]
