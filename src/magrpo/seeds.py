"""One rule for deriving seeds from seeds: every random stream a run keys (a step, a tree node,
an agent's prompt) is folded from its parts here, so two streams never collide by accident."""

from __future__ import annotations

#: a prime far above any step, turn or place: streams keyed by neighbouring numbers land far apart
SEED_MIX = 1_000_003


def mix_seed(*parts: int) -> int:
    """``((p0 * M + p1) * M + p2) ...`` with M = :data:`SEED_MIX`: one integer from many."""
    if not parts:
        raise ValueError("mix_seed needs at least one part")
    seed = int(parts[0])
    for part in parts[1:]:
        seed = seed * SEED_MIX + int(part)
    return seed


__all__ = ["SEED_MIX", "mix_seed"]
