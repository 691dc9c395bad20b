"""Exact values of every level of the writing reward and its gating."""

from __future__ import annotations

import dataclasses
import math

import pytest

from magrpo.rewards.writing import (
    EXPAND_REWARD,
    STOP_WORDS,
    SUMMARIZE_REWARD,
    TRANSITION_WORDS,
    RatioWindow,
    TokenWindow,
    WritingRewardConfig,
    content_words,
    jaccard,
    ramp,
    transitions_in,
    whitespace_tokens,
    words,
    writing_levels,
)

approx = lambda x: pytest.approx(x, abs=1e-12)  # noqa: E731


LEVELS = ("level_structure", "level_length", "level_vocabulary", "level_style")


def text(n_content: int, n_total: int, prefix: str = "w") -> str:
    """``n_total`` whitespace tokens: ``n_content`` distinct content words, then "the" fillers."""
    assert n_content <= n_total
    return " ".join([f"{prefix}{i}" for i in range(n_content)] + ["the"] * (n_total - n_content))


def levels(concise: str, detailed: str, cfg: WritingRewardConfig = SUMMARIZE_REWARD) -> dict[str, float]:
    out = writing_levels(concise, detailed, cfg)
    assert out["reward"] == approx(sum(out[k] for k in LEVELS))
    return out


def test_tokenizers_and_normaliser():
    assert whitespace_tokens("  a  b\tc\n") == ["a", "b", "c"]
    assert words("Hello, World! state-of-the-art x_y 42") == [
        "hello",
        "world",
        "state",
        "of",
        "the",
        "art",
        "x",
        "y",
        "42",
    ]
    assert content_words("The model and THE Model improve it") == {"model", "improve"}
    assert {"the", "and", "of", "we"} <= STOP_WORDS


def test_transitions_match_whole_words_and_phrases_only():
    assert transitions_in("Yeti firstly; thusly moreover, For Example x") == {"moreover", "for example"}
    assert transitions_in("In addition we are done. Hence, in short.") == {"in addition", "hence", "in short"}
    assert transitions_in("") == set()
    assert len(set(TRANSITION_WORDS)) == len(TRANSITION_WORDS)


def test_jaccard():
    assert jaccard({"a", "b"}, {"b", "c"}) == approx(1 / 3)
    assert jaccard(set(), set()) == 0.0
    assert jaccard({"a"}, {"a"}) == 1.0


def test_ramp_inside_edges_and_both_ramps():
    w = RatioWindow(lo=2.0, hi=4.0, ramp_lo=1.0, ramp_hi=2.0)
    assert ramp(3.0, w) == 1.0
    assert ramp(2.0, w) == 1.0 and ramp(4.0, w) == 1.0
    assert ramp(1.5, w) == approx(0.5)  # 1 - (2.0 - 1.5) / 1.0
    assert ramp(1.0, w) == 0.0 and ramp(0.2, w) == 0.0
    assert ramp(5.0, w) == approx(0.5)  # 1 - (5.0 - 4.0) / 2.0
    assert ramp(6.0, w) == 0.0 and ramp(60.0, w) == 0.0
    hard = RatioWindow(1.0, 2.0, 0.0, 0.0)
    assert ramp(0.999, hard) == 0.0 and ramp(1.0, hard) == 1.0 and ramp(2.0001, hard) == 0.0
    assert ramp(1e9, RatioWindow(1.0, math.inf, 0.5, 0.0)) == 1.0


def test_config_is_frozen_and_validated():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SUMMARIZE_REWARD.length_weight = 2.0  # type: ignore[misc]
    with pytest.raises(ValueError):
        TokenWindow(0, 10)
    with pytest.raises(ValueError):
        TokenWindow(10, 5)
    with pytest.raises(ValueError):
        RatioWindow(3.0, 2.0, 0.1, 0.1)
    with pytest.raises(ValueError):
        RatioWindow(1.0, 2.0, -0.1, 0.1)
    with pytest.raises(ValueError):
        WritingRewardConfig(length_weight=-1.0)
    with pytest.raises(ValueError):
        WritingRewardConfig(transition_target=0)
    with pytest.raises(ValueError):
        WritingRewardConfig(jaccard_full=0.0)


def test_default_numbers():
    c = SUMMARIZE_REWARD
    assert (c.part1_tokens, c.part2_tokens) == (TokenWindow(8, 128), TokenWindow(16, 256))
    assert c.length_ratio == RatioWindow(1.6, 3.2, 0.5, 1.8)
    assert c.vocabulary_ratio == RatioWindow(2.0, 4.0, 0.7, 2.0)
    assert (c.structure_weight, c.length_weight, c.vocabulary_weight) == (0.5, 1.0, 0.5)
    assert (c.transition_target, c.transition_weight, c.jaccard_full, c.jaccard_weight) == (3, 0.4, 0.2, 0.6)
    assert c.max_reward == approx(3.0)
    e = EXPAND_REWARD
    assert (e.part1_tokens, e.part2_tokens) == (TokenWindow(32, 256), TokenWindow(32, 256))
    assert e.length_ratio == e.vocabulary_ratio == RatioWindow(0.8, 1.25, 0.3, 0.5)
    assert e.jaccard_full == 0.15 and e.max_reward == approx(3.0)


@pytest.mark.parametrize(
    "n1, n2, passes",
    [
        (8, 20, True),  # part 1 at its lower edge
        (7, 20, False),  # one token short
        (128, 256, True),  # both at their upper edges (ratio 2.0)
        (129, 256, False),  # part 1 one token over
        (10, 16, True),  # part 2 at its lower edge
        (10, 15, False),
        (100, 257, False),  # part 2 one token over
    ],
)
def test_structure_windows(n1, n2, passes):
    out = levels(text(n1, n1, "a"), text(n2, n2, "b"))
    assert out["level_structure"] == (0.5 if passes else 0.0)
    if not passes:  # a failed level zeroes every later one
        assert out == {**dict.fromkeys(LEVELS, 0.0), "reward": 0.0}


@pytest.mark.parametrize("concise, detailed", [("", text(30, 30)), ("   \n ", text(30, 30)), (text(10, 10), "  ")])
def test_structure_needs_both_parts(concise, detailed):
    assert levels(concise, detailed)["reward"] == 0.0


@pytest.mark.parametrize(
    "n2, expected",
    [
        (40, 1.0),  # ratio 2.0, inside [1.6, 3.2]
        (32, 1.0),  # 1.6, lower edge
        (64, 1.0),  # 3.2, upper edge
        (28, 1 - (1.6 - 1.4) / 0.5),  # 1.4 on the lower ramp: 0.6
        (24, 1 - (1.6 - 1.2) / 0.5),  # 1.2: 0.2
        (22, 0.0),  # 1.1 = 1.6 - 0.5, end of the lower ramp
        (20, 0.0),  # 1.0, below it
        (82, 1 - (4.1 - 3.2) / 1.8),  # 4.1 on the upper ramp: 0.5
        (100, 0.0),  # 5.0 = 3.2 + 1.8, end of the upper ramp
        (120, 0.0),  # 6.0
    ],
)
def test_length_level(n2, expected):
    out = levels(text(20, 20, "a"), text(n2, n2, "b"))
    assert out["level_structure"] == 0.5
    assert out["level_length"] == approx(expected)
    if expected == 0.0:
        assert out["level_vocabulary"] == out["level_style"] == 0.0
        assert out["reward"] == 0.5


def test_expand_length_level_has_its_own_window():
    first = text(100, 100, "a")
    cases = {80: 1.0, 100: 1.0, 125: 1.0, 65: 1 - (0.8 - 0.65) / 0.3, 50: 0.0, 150: 1 - (1.5 - 1.25) / 0.5, 175: 0.0}
    for n2, expected in cases.items():
        assert levels(first, text(n2, n2, "b"), EXPAND_REWARD)["level_length"] == approx(expected), n2
    # the TL;DR numbers would pay nothing for equal halves (ratio 1.0)
    assert levels(first, text(100, 100, "b"))["level_length"] == 0.0


@pytest.mark.parametrize(
    "u2, n2, expected",
    [
        (30, 40, 1.0),  # 30 / 10 = 3.0, inside [2.0, 4.0]
        (20, 40, 1.0),  # 2.0, lower edge
        (40, 40, 1.0),  # 4.0, upper edge
        (16, 40, 1 - (2.0 - 1.6) / 0.7),  # 1.6 on the lower ramp: 3/7
        (13, 40, 0.0),  # 1.3 = 2.0 - 0.7, end of the lower ramp
        (50, 60, 1 - (5.0 - 4.0) / 2.0),  # 5.0 on the upper ramp: 0.5
        (60, 60, 0.0),  # 6.0 = 4.0 + 2.0, end of the upper ramp
    ],
)
def test_vocabulary_level(u2, n2, expected):
    # part 1: 10 distinct content words among 20 tokens; part 2 shares none of them
    out = levels(text(10, 20, "a"), text(u2, n2, "b"))
    assert out["level_length"] == 1.0
    assert out["level_vocabulary"] == approx(0.5 * expected)
    if expected == 0.0:
        assert out["level_style"] == 0.0


def test_vocabulary_needs_content_words_in_part1():
    out = levels("the the the of of and and a a a", text(25, 25, "b"))
    assert (out["level_structure"], out["level_length"]) == (0.5, 1.0)
    assert out["level_vocabulary"] == 0.0 and out["level_style"] == 0.0
    assert out["reward"] == 1.5


CONCISE = "alpha beta gamma delta epsilon the the the the the"  # 10 tokens, C1 = 5 words


def test_style_level_worked_example():
    # 25 tokens (ratio 2.5). C2 = {however, alpha, beta, addition, b0..b7} = 12 words, so the
    # vocabulary ratio is 12 / 5 = 2.4 (full). Shared: {alpha, beta}; union 5 + 12 - 2 = 15.
    detailed = "however alpha beta in addition the " + text(8, 19, "b")
    assert len(detailed.split()) == 25
    out = levels(CONCISE, detailed)
    transition = min(1.0, 2 / 3)  # "however", "in addition"
    overlap = min(1.0, (2 / 15) / 0.2)
    assert out["level_vocabulary"] == 0.5
    assert out["level_style"] == approx(0.4 * transition + 0.6 * overlap)  # 0.2667 + 0.4
    assert out["reward"] == approx(0.5 + 1.0 + 0.5 + 0.4 * 2 / 3 + 0.6 * (2 / 15) / 0.2)


def test_style_level_caps_at_full_credit():
    # four transitions (capped at 3), overlap {alpha, beta, gamma} / 12 words = 0.25 >= 0.2
    detailed = "however therefore moreover for example alpha beta gamma " + text(3, 17, "b")
    assert len(detailed.split()) == 25
    out = levels(CONCISE, detailed)
    assert jaccard(content_words(CONCISE), content_words(detailed)) == approx(3 / 12)
    assert out["level_style"] == approx(1.0)
    assert out["reward"] == approx(3.0)


def test_style_level_zero_without_transitions_or_overlap():
    out = levels(CONCISE, text(12, 25, "b"))
    assert out["level_vocabulary"] == 0.5 and out["level_style"] == 0.0 and out["reward"] == 2.0


def test_a_failed_vocabulary_level_zeroes_style():
    # length ratio 2.5 passes, but part 2 has only 6 content words: 6 / 5 = 1.2 <= 1.3
    detailed = "however therefore moreover alpha beta gamma " + text(0, 19)
    out = levels(CONCISE, detailed)
    assert out["level_length"] == 1.0
    assert out["level_vocabulary"] == 0.0 and out["level_style"] == 0.0


def test_zero_weight_mutes_a_level_without_gating_later_ones():
    cfg = WritingRewardConfig(length_weight=0.0)
    out = levels(CONCISE, text(12, 25, "b"), cfg)
    assert out["level_length"] == 0.0 and out["level_vocabulary"] == 0.5


SALAD_1 = "zebra quartz violin nebula copper " + "the " * 5
SALAD_2 = (
    "zebra quartz violin nebula copper lemon harbor falcon granite meadow however moreover therefore " + "the " * 12
)


def test_the_structural_reward_pays_full_marks_for_unrelated_words():
    # the paper's reward never reads the source: the right lengths, transitions and overlap suffice
    assert levels(SALAD_1, SALAD_2)["reward"] == approx(3.0)


def test_the_optional_content_level_scores_each_part_against_the_source():
    cfg = dataclasses.replace(SUMMARIZE_REWARD, content_weight=1.0, content_full=0.5)
    assert cfg.max_reward == approx(4.0)
    off_topic = writing_levels(SALAD_1, SALAD_2, cfg, source="A paper about machine translation.")
    assert off_topic["level_content"] == 0.0 and off_topic["reward"] == approx(3.0)
    # 2 of part 1's 5 content words and 2 of part 2's 13 are in the source
    grounded = writing_levels(SALAD_1, SALAD_2, cfg, source="Zebra and quartz.")
    assert grounded["level_content"] == approx((min(1, (2 / 5) / 0.5) + min(1, (2 / 13) / 0.5)) / 2)
    assert grounded["reward"] == approx(3.0 + grounded["level_content"])
    assert "level_content" not in writing_levels(SALAD_1, SALAD_2)  # off by default: the paper's four levels
    with pytest.raises(ValueError, match="pass source="):
        writing_levels(SALAD_1, SALAD_2, cfg)
