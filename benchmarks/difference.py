"""How one system's held-out figure stands to another's: a test of the difference of their means.

Two trained systems: Welch's t on their per-seed figures (no equal variances assumed), the 95%
interval of the difference from the t distribution with Welch-Satterthwaite degrees of freedom.
A trained system against an untrained set-up, which decodes greedily once (one run, no spread
over seeds): a one-sample t-test of the trained seeds against that figure as a constant. Two
figures of the same runs (a team's answers after feedback and its first answers): a paired
t-test, the one-sample test of the per-seed differences against 0.

Intervals that overlap are not a test of the difference: two 95% intervals can overlap while the
difference's own 95% interval excludes 0.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

from scipy import stats

#: a difference with a two-sided p-value below this is called a separation
ALPHA = 0.05


@dataclass(frozen=True)
class Difference:
    """Mean of ``a`` minus mean of ``b``, its 95% interval, and the test behind them."""

    difference: float
    low: float
    high: float
    t: float
    df: float
    p: float
    test: str  # "Welch", "one-sample" or "paired"

    @property
    def relation(self) -> str:
        """``above`` or ``below`` where p < 0.05, else ``not separated from``."""
        if not self.p < ALPHA:  # a nan p (no spread at all) separates nothing either
            return "not separated from"
        return "above" if self.difference > 0 else "below"

    def __str__(self) -> str:
        if math.isnan(self.p):
            return f"{self.difference:+.3f}, untested: no spread over seeds"
        p = "p < 0.001" if self.p < 0.001 else f"p = {self.p:.3f}"
        df = f"{self.df:.1f}" if self.test == "Welch" else f"{self.df:.0f}"
        return f"{self.difference:+.3f} [{self.low:.3f}, {self.high:.3f}], {self.test} t = {self.t:.2f}, df {df}, {p}"


def difference(a: Sequence[float], b: Sequence[float] | float, paired: bool = False) -> Difference:
    """How ``a`` (per-seed figures) stands to ``b``: another system's per-seed figures (Welch's t),
    figures of the same seeds (``paired``), or one untrained run's figure (a float: a one-sample
    t-test of ``a`` against it). One seed, or no spread on either side: untested (p is nan)."""
    if paired:
        if isinstance(b, (int, float)) or len(b) != len(a):
            raise ValueError("a paired test needs one figure of b per seed of a")
        return _one_sample([x - y for x, y in zip(a, b)], 0.0, "paired")
    if isinstance(b, (int, float)):
        return _one_sample(list(a), float(b), "one-sample")
    diff = statistics.fmean(a) - statistics.fmean(b)
    if min(len(a), len(b)) < 2:
        return _untestable(diff, "Welch")
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if not va + vb:
        return _untestable(diff, "Welch")
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch-Satterthwaite
    return _interval(diff, math.sqrt(va + vb), df, stats.ttest_ind(a, b, equal_var=False), "Welch")


def _one_sample(values: list[float], constant: float, name: str) -> Difference:
    diff = statistics.fmean(values) - constant
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    if not se:
        return _untestable(diff, name)
    return _interval(diff, se, len(values) - 1, stats.ttest_1samp(values, constant), name)


def _untestable(diff: float, name: str) -> Difference:
    """One seed, or every seed the same on both sides: no spread to test the difference against."""
    return Difference(diff, diff, diff, math.nan, math.nan, math.nan, name)


def _interval(diff: float, se: float, df: float, test, name: str) -> Difference:
    half = stats.t.ppf(0.975, df) * se
    return Difference(diff, diff - half, diff + half, float(test.statistic), float(df), float(test.pvalue), name)


def verdict(subject: str, other: str, d: Difference) -> str:
    """``the team is above single-agent GRPO: +0.388 [0.190, 0.586], Welch t = 5.47, df 4.0, p = 0.006``."""
    return f"{subject} is {d.relation} {other}: {d}"


def pooled_sd(groups: Sequence[Sequence[float]]) -> float:
    """The spread of one seed's figure about its system's mean, pooled over ``groups`` (each a
    system's per-seed figures): the square root of the summed squares over the summed degrees of freedom."""
    squares = sum(sum((x - statistics.fmean(g)) ** 2 for x in g) for g in groups if len(g) > 1)
    df = sum(len(g) - 1 for g in groups if len(g) > 1)
    if not df:
        raise ValueError(f"no group of {[len(g) for g in groups]} seeds has two seeds to measure a spread")
    return math.sqrt(squares / df)


def power(sd: float, effect: float, seeds: int) -> float:
    """The chance that two systems of ``seeds`` seeds each, whose means differ by ``effect`` with each
    seed's figure spread by ``sd``, are separated at ALPHA (two-sided): the two-sample t-test's power
    from the noncentral t distribution. Welch's test, the page's, comes close at equal spreads and
    ten seeds (within 0.01) and falls short of it at very few seeds (3 seeds, d = 1: about 0.12 against 0.16)."""
    if seeds < 2:
        raise ValueError(f"seeds={seeds}: a test over seeds needs at least 2 per system")
    if not sd > 0:
        raise ValueError(f"sd={sd}: the spread over seeds must be above 0 for a power")
    df = 2 * seeds - 2
    shift = effect / sd * math.sqrt(seeds / 2)  # the noncentrality
    critical = stats.t.ppf(1 - ALPHA / 2, df)
    return float(stats.nct.sf(critical, df, shift) + stats.nct.cdf(-critical, df, shift))


def seeds_for(sd: float, effect: float, target: float = 0.8) -> int:
    """The fewest seeds per system at which :func:`power` reaches ``target``."""
    if not effect > 0:
        raise ValueError(f"effect={effect}: no count of seeds separates a difference that is not above 0")
    seeds = 2
    while power(sd, effect, seeds) < target:
        seeds += 1
    return seeds


def detectable(sd: float, seeds: int, target: float = 0.8) -> float:
    """The smallest difference of means that ``seeds`` seeds per system separate with ``target`` power."""
    from scipy.optimize import brentq

    high = sd
    while power(sd, high, seeds) < target:  # doubled up to a bracket (far beyond it the noncentral t loses precision)
        high *= 2
    return float(brentq(lambda effect: power(sd, effect, seeds) - target, 0.0, high, xtol=1e-12))
