"""User callables as feedback sources."""

from __future__ import annotations

import pytest

from magrpo.feedback import CallableFeedback, FeedbackRequest


def test_callable_feedback_checks_its_output():
    request = FeedbackRequest({}, ("a", "b"), {"reward": 1.0}, 1, ("x", "y"))
    assert CallableFeedback(lambda r: (f"r={r.score['reward']}", "ok"))([request]) == [("r=1.0", "ok")]
    with pytest.raises(ValueError, match="must return 2 strings"):
        CallableFeedback(lambda r: ("only one",))([request])
