"""A run's curves, drawn with matplotlib off screen: the joint reward with its band and the
held-out points, and any other figure of metrics.jsonl over the steps. reward_curve.png and the
view page (:mod:`magrpo.view`) both draw them here."""

from __future__ import annotations

from typing import Any, Mapping, Sequence


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def integer_steps(ax: Any) -> None:
    """Steps are whole numbers: no tick at 1.5."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def draw_reward(
    ax: Any,
    history: Sequence[Mapping[str, Any]],
    held_out: Mapping[str, Mapping[str, Any] | None] | None = None,
    *,
    color: str | None = None,
    label: str = "",
) -> None:
    """The mean joint reward per step with its min-max band, and the held-out mean reward before
    training (at step 0) and after it (at the last step) where ``held_out`` has them (the
    figures of eval_before.json, eval_after.json). ``label`` prefixes the legend's entries
    (runs overlaid)."""
    steps = [h["step"] for h in history]
    (line,) = ax.plot(steps, [h["reward_mean"] for h in history], marker="o", ms=3, color=color, label=f"{label}mean")
    color = line.get_color()
    ax.fill_between(
        steps,
        [h["reward_min"] for h in history],
        [h["reward_max"] for h in history],
        alpha=0.15,
        color=color,
        label=f"{label}min-max",
    )
    held_out = held_out or {}
    last = steps[-1] if steps else 0
    for when, step, marker in (("before", 0, "s"), ("after", last, "D")):
        figures = held_out.get(when)
        if figures and "reward" in figures:
            ax.plot(
                [step],
                [figures["reward"]],
                marker=marker,
                ms=7,
                linestyle="none",
                markerfacecolor="white",
                color=color,
                label=f"{label}held-out {when}",
            )
    ax.set_xlabel("step")
    ax.set_ylabel("joint reward")
    integer_steps(ax)
    ax.grid(alpha=0.3)


__all__ = ["draw_reward", "integer_steps", "pyplot"]
