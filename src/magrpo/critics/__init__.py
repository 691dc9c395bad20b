"""Critics for the actor-critic algorithms (IAC, MAAC): their targets and losses."""

from magrpo.critics.targets import (
    critic_advantages,
    explained_variance,
    normalise_advantages,
    value_loss,
    value_targets,
)

__all__ = ["critic_advantages", "explained_variance", "normalise_advantages", "value_loss", "value_targets"]
