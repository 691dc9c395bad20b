"""The level-by-level writing reward for a two-part joint answer (MAGRPO, arXiv 2508.04652).

Agent 1 writes part 1 (a concise TL;DR, or the background half of an introduction), agent 2
writes part 2 (a detailed summary, or the methods half). One joint reward scores the pair in
four levels; a level is paid only when the level before it passes (level 1: its checks hold;
levels 2-3: the ramp value, before weighting, is > 0), so a team first learns to answer at
all, then to coordinate lengths, then vocabulary, then style.

Counting rules (see :func:`whitespace_tokens`, :func:`words`, :func:`content_words`):

* length is counted in whitespace tokens: ``len(text.split())``;
* words are the lower-cased runs of letters and digits in the text (``[^\\W_]+``);
* content words are the distinct words not in :data:`STOP_WORDS`.

With ``p1``/``p2`` the two parts and ``cfg`` a :class:`WritingRewardConfig`:

1. ``level_structure = cfg.structure_weight`` if both parts are non-empty after ``strip()``,
   ``cfg.part1_tokens.lo <= tokens(p1) <= cfg.part1_tokens.hi`` and the same for ``p2`` with
   ``cfg.part2_tokens``; else 0.
2. ``level_length = cfg.length_weight * ramp(tokens(p2) / tokens(p1), cfg.length_ratio)``.
3. ``level_vocabulary = cfg.vocabulary_weight * ramp(|C(p2)| / |C(p1)|, cfg.vocabulary_ratio)``
   with ``C`` the content-word set; 0 when ``C(p1)`` is empty (the ratio is undefined).
4. ``level_style = cfg.transition_weight * min(1, T(p2) / cfg.transition_target)
   + cfg.jaccard_weight * min(1, J(p1, p2) / cfg.jaccard_full)``, where ``T`` counts the
   distinct entries of :data:`TRANSITION_WORDS` found in part 2 (whole words / phrases) and
   ``J = |C(p1) & C(p2)| / |C(p1) | C(p2)|`` (0 when both sets are empty).

``reward`` is the sum of the four levels. With the defaults the maximum is
0.5 + 1.0 + 0.5 + 1.0 = 3.0, as in the paper.

The paper's reward is structural: it never reads the source, so two lists of unrelated words with
the right lengths, a few transition words and some shared vocabulary also score 3.0. The
optional content level closes that hole (off by default, as in the paper):

5. ``level_content = cfg.content_weight * mean over the two parts of min(1, G(p) / cfg.content_full)``
   with ``G(p) = |C(p) & C(source)| / |C(p)|``, the share of a part's content words that occur in
   the source (0 for a part without content words); paid when level 1 passes and a source is given.

:func:`ramp` is the one shape both ratio levels use: 1 inside ``[lo, hi]``, falling linearly
to 0 at ``lo - ramp_lo`` below the window and at ``hi + ramp_hi`` above it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

#: Words ignored by the vocabulary and overlap levels: articles, pronouns, auxiliaries,
#: prepositions and conjunctions that say nothing about what a text is about.
STOP_WORDS: frozenset[str] = frozenset(
    """
    a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself
    """.split()
)

#: Connectives that show a text is organised (addition, example, contrast, cause, sequence,
#: summary). Matched as whole words / phrases on the lower-cased word sequence. Very common
#: words that are mostly not connectives ("so", "as", "then", "while", "but") are left out so
#: that the level rewards deliberate structure.
TRANSITION_WORDS: tuple[str, ...] = (
    # addition
    "additionally",
    "also",
    "furthermore",
    "in addition",
    "moreover",
    "similarly",
    "likewise",
    # example / specificity
    "for example",
    "for instance",
    "in particular",
    "namely",
    "notably",
    "specifically",
    "such as",
    # contrast / concession
    "although",
    "despite",
    "however",
    "in contrast",
    "instead",
    "nevertheless",
    "nonetheless",
    "on the other hand",
    "whereas",
    "yet",
    # cause / effect
    "as a result",
    "because",
    "consequently",
    "due to",
    "hence",
    "therefore",
    "thus",
    # sequence
    "finally",
    "first",
    "second",
    "next",
    "subsequently",
    "to this end",
    # summary
    "in conclusion",
    "in short",
    "in summary",
    "overall",
    "to summarize",
)

_WORD = re.compile(r"[^\W_]+")
_EPS = 1e-9


@dataclass(frozen=True)
class TokenWindow:
    """Inclusive bounds on a part's length in whitespace tokens."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        if not 1 <= self.lo <= self.hi:
            raise ValueError(f"token window needs 1 <= lo <= hi, got lo={self.lo}, hi={self.hi}")

    def contains(self, n: int) -> bool:
        return self.lo <= n <= self.hi


@dataclass(frozen=True)
class RatioWindow:
    """A target window ``[lo, hi]`` for a ratio, with linear ramps of width ``ramp_lo`` below
    and ``ramp_hi`` above it (a width of 0 makes that edge a hard cut-off)."""

    lo: float
    hi: float
    ramp_lo: float
    ramp_hi: float

    def __post_init__(self) -> None:
        if not (0 <= self.lo <= self.hi and self.ramp_lo >= 0 and self.ramp_hi >= 0):
            raise ValueError(f"ratio window needs 0 <= lo <= hi and ramp widths >= 0, got {self}")


def ramp(x: float, window: RatioWindow) -> float:
    """1 inside ``[lo, hi]``; below, ``max(0, 1 - (lo - x) / ramp_lo)``; above,
    ``max(0, 1 - (x - hi) / ramp_hi)``; 0 outside the window when that ramp width is 0.
    Values within 1e-9 of 0 count as 0."""
    if window.lo <= x <= window.hi:
        return 1.0
    if x < window.lo:
        gap, width = window.lo - x, window.ramp_lo
    else:
        gap, width = x - window.hi, window.ramp_hi
    if width <= 0:
        return 0.0
    value = 1.0 - gap / width
    # Float noise at the ramp's far end (e.g. 1 - 0.3 / 0.30000000000000004) must not open the next level.
    return value if value > _EPS else 0.0


@dataclass(frozen=True)
class WritingRewardConfig:
    """Every number of the writing reward. The defaults are the TL;DR task's (part 2 about
    2-3x longer than part 1); :data:`EXPAND_REWARD` holds the article-expansion numbers."""

    #: level 1: allowed length of each part, in whitespace tokens
    part1_tokens: TokenWindow = field(default_factory=lambda: TokenWindow(8, 128))
    part2_tokens: TokenWindow = field(default_factory=lambda: TokenWindow(16, 256))
    structure_weight: float = 0.5
    #: level 2: tokens(part 2) / tokens(part 1); full score in [1.6, 3.2], 0 at <= 1.1 or >= 5.0
    length_ratio: RatioWindow = field(default_factory=lambda: RatioWindow(1.6, 3.2, 0.5, 1.8))
    length_weight: float = 1.0
    #: level 3: content words(part 2) / content words(part 1); full in [2.0, 4.0], 0 at <= 1.3 or >= 6.0
    vocabulary_ratio: RatioWindow = field(default_factory=lambda: RatioWindow(2.0, 4.0, 0.7, 2.0))
    vocabulary_weight: float = 0.5
    #: level 4: distinct transition words in part 2 for full transition credit
    transition_target: int = 3
    transition_weight: float = 0.4
    #: level 4: content-word Jaccard overlap between the parts that earns full overlap credit
    jaccard_full: float = 0.2
    jaccard_weight: float = 0.6
    #: optional level 5 (0: off, the paper's reward): how much of each part is grounded in the source
    content_weight: float = 0.0
    #: share of a part's content words found in the source that earns full content credit
    content_full: float = 0.5

    def __post_init__(self) -> None:
        weights = (
            self.structure_weight,
            self.length_weight,
            self.vocabulary_weight,
            self.transition_weight,
            self.jaccard_weight,
            self.content_weight,
        )
        if any(w < 0 for w in weights):
            raise ValueError(f"reward weights must be >= 0, got {weights}")
        if self.transition_target < 1:
            raise ValueError(f"transition_target must be >= 1, got {self.transition_target}")
        if not 0 < self.jaccard_full <= 1:
            raise ValueError(f"jaccard_full must be in (0, 1], got {self.jaccard_full}")
        if not 0 < self.content_full <= 1:
            raise ValueError(f"content_full must be in (0, 1], got {self.content_full}")

    @property
    def max_reward(self) -> float:
        return (
            self.structure_weight
            + self.length_weight
            + self.vocabulary_weight
            + self.transition_weight
            + self.jaccard_weight
            + self.content_weight
        )


#: TL;DR (part 1) + detailed summary (part 2).
SUMMARIZE_REWARD = WritingRewardConfig()

#: Background (part 1) + methods (part 2) halves of one introduction: similar lengths and
#: vocabularies (window [0.8, 1.25], symmetric in log scale; 0 at <= 0.5 or >= 1.75), each
#: half 32-256 tokens, and more topical overlap expected than between a TL;DR and a summary.
EXPAND_REWARD = WritingRewardConfig(
    part1_tokens=TokenWindow(32, 256),
    part2_tokens=TokenWindow(32, 256),
    length_ratio=RatioWindow(0.8, 1.25, 0.3, 0.5),
    vocabulary_ratio=RatioWindow(0.8, 1.25, 0.3, 0.5),
    jaccard_full=0.15,
)


def whitespace_tokens(text: str) -> list[str]:
    """The length unit of levels 1 and 2."""
    return text.split()


def words(text: str) -> list[str]:
    """Lower-cased runs of letters and digits, in order (punctuation and ``_`` split words)."""
    return _WORD.findall(text.lower())


def content_words(text: str) -> set[str]:
    """Distinct words of ``text`` that are not stop words."""
    return {w for w in words(text) if w not in STOP_WORDS}


def transitions_in(text: str) -> set[str]:
    """The entries of :data:`TRANSITION_WORDS` present in ``text`` as whole words or phrases."""
    padded = " " + " ".join(words(text)) + " "
    return {t for t in TRANSITION_WORDS if f" {t} " in padded}


def jaccard(a: set[str], b: set[str]) -> float:
    """``|a & b| / |a | b|``; 0 when both are empty (no shared content to reward)."""
    union = a | b
    return len(a & b) / len(union) if union else 0.0


def grounding(part: str, source_words: set[str]) -> float:
    """The share of ``part``'s content words that occur in the source (0 without content words)."""
    words_of_part = content_words(part)
    return len(words_of_part & source_words) / len(words_of_part) if words_of_part else 0.0


def writing_levels(
    concise: str, detailed: str, cfg: WritingRewardConfig = SUMMARIZE_REWARD, source: str | None = None
) -> dict[str, float]:
    """Score one joint answer: ``concise`` is part 1, ``detailed`` part 2 (for article
    expansion, the background and the methods halves). Returns ``level_structure``,
    ``level_length``, ``level_vocabulary``, ``level_style`` and their sum ``reward``; with
    ``cfg.content_weight > 0`` also ``level_content`` (which needs ``source``)."""
    out = {"level_structure": 0.0, "level_length": 0.0, "level_vocabulary": 0.0, "level_style": 0.0}
    if cfg.content_weight > 0:
        if source is None:
            raise ValueError("content_weight > 0 scores each part against the source: pass source=")
        out["level_content"] = 0.0
    n1, n2 = len(whitespace_tokens(concise)), len(whitespace_tokens(detailed))
    # An empty part has 0 tokens, and every token window starts at >= 1, so this also checks presence.
    if not (cfg.part1_tokens.contains(n1) and cfg.part2_tokens.contains(n2)):
        return _total(out)
    out["level_structure"] = cfg.structure_weight
    if cfg.content_weight > 0:
        source_words = content_words(source or "")
        grounded = [min(1.0, grounding(part, source_words) / cfg.content_full) for part in (concise, detailed)]
        out["level_content"] = cfg.content_weight * math.fsum(grounded) / 2

    # Gates look at the ramp value, not the weighted score, so a weight of 0 mutes a level
    # without cutting off the ones after it.
    length = ramp(n2 / n1, cfg.length_ratio)
    out["level_length"] = cfg.length_weight * length
    if length <= 0:
        return _total(out)

    c1, c2 = content_words(concise), content_words(detailed)
    vocabulary = ramp(len(c2) / len(c1), cfg.vocabulary_ratio) if c1 else 0.0
    out["level_vocabulary"] = cfg.vocabulary_weight * vocabulary
    if vocabulary <= 0:
        return _total(out)

    transition = min(1.0, len(transitions_in(detailed)) / cfg.transition_target)
    overlap = min(1.0, jaccard(c1, c2) / cfg.jaccard_full)
    out["level_style"] = cfg.transition_weight * transition + cfg.jaccard_weight * overlap
    return _total(out)


def _total(levels: dict[str, float]) -> dict[str, float]:
    levels["reward"] = math.fsum(levels.values())
    return levels
