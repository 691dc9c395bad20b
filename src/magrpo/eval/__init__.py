"""Evaluation: the figures of a team's answers per turn, the prompt-only set-ups a team is compared with
(setups.py), and how long a joint answer takes."""

from magrpo.eval.figures import final_figures_per_turn, mean_figures

__all__ = ["final_figures_per_turn", "mean_figures"]
