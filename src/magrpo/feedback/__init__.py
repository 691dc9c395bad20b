"""Feedback between turns: what the environment tells each agent about the last joint action.

One protocol, three sources: execution results of the coding task (:class:`ExecutionFeedback`),
a reviewer model behind an OpenAI-compatible endpoint (:class:`ReviewerFeedback`) and any user
callable (:class:`CallableFeedback`).
"""

from magrpo.feedback.base import CallableFeedback, Feedback, FeedbackRequest
from magrpo.feedback.execution import ExecutionFeedback
from magrpo.feedback.reviewer import ReviewerClient, ReviewerError, ReviewerFeedback

__all__ = [
    "CallableFeedback",
    "ExecutionFeedback",
    "Feedback",
    "FeedbackRequest",
    "ReviewerClient",
    "ReviewerError",
    "ReviewerFeedback",
]
