"""Feedback from a reviewer model behind any OpenAI-compatible chat-completions endpoint.

The paper used a strong external model as the reviewer. Configuration: a base URL (e.g.
``http://127.0.0.1:8000/v1``), a model name, and an API key read from an environment variable
(``MAGRPO_REVIEWER_API_KEY`` by default; none is sent when it is unset). Requests time out, are
retried with exponential backoff on connection errors, 429 and 5xx, and identical requests are
answered from a cache. When the endpoint cannot be reached the error names the URL.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from magrpo.feedback.base import FeedbackRequest

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}

REVIEW_PROMPT = (
    "You review the work of a team of {n} agents on this task.\n\nTask:\n{task}\n\n{parts}\n\n"
    "Give the {role} agent ({index} of {n}) short, concrete advice to improve ITS part in the next attempt. "
    "Reply with the advice only."
)


class ReviewerError(RuntimeError):
    """The reviewer endpoint failed after all retries, or answered something unusable."""


class ReviewerClient:
    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "MAGRPO_REVIEWER_API_KEY",
        timeout_s: float = 30.0,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        max_tokens: int = 256,
        temperature: float = 0.0,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"reviewer base URL {base_url!r} must start with http:// or https://")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = os.environ.get(api_key_env)
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_tokens = max_tokens
        self.temperature = temperature
        self._cache: dict[str, str] = {}
        self._lock = threading.Lock()
        self.requests_sent = 0

    def complete(self, messages: list[dict[str, str]]) -> str:
        payload = {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        body = json.dumps(payload, sort_keys=True).encode()
        key = hashlib.sha256(body).hexdigest()
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        text = self._post_with_retries(body)
        with self._lock:
            self._cache[key] = text
        return text

    def _post_with_retries(self, body: bytes) -> str:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last_problem = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with self._lock:
                    self.requests_sent += 1
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return _message_text(json.loads(response.read().decode()), self.url)
            except urllib.error.HTTPError as exc:
                last_problem = f"HTTP {exc.code}"
                if exc.code not in RETRYABLE_STATUS:
                    raise ReviewerError(f"reviewer {self.url} answered HTTP {exc.code}: {exc.read()[:200]!r}") from exc
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                last_problem = f"{type(reason).__name__}: {reason}"
        raise ReviewerError(
            f"reviewer endpoint {self.url} could not be reached after {self.max_retries + 1} attempts ({last_problem})"
        )


def _message_text(payload: Any, url: str) -> str:
    try:
        text = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise ReviewerError(
            f"reviewer {url} answered without choices[0].message.content: {str(payload)[:200]}"
        ) from exc
    if not isinstance(text, str):
        raise ReviewerError(f"reviewer {url} answered a non-text message: {text!r}")
    return text.strip()


class ReviewerFeedback:
    """Ask the reviewer, once per agent and joint action, for advice on that agent's part."""

    def __init__(self, client: ReviewerClient, *, task_field: str = "prompt", max_workers: int = 4) -> None:
        self.client = client
        self.task_field = task_field
        self.max_workers = max_workers

    def messages(self, request: FeedbackRequest, agent: int) -> list[dict[str, str]]:
        n = len(request.completions)
        parts = "\n\n".join(
            f"Part of the {role} agent:\n{text}" for role, text in zip(request.agent_roles, request.completions)
        )
        task = str(request.item.get(self.task_field, request.item))
        content = REVIEW_PROMPT.format(n=n, task=task, parts=parts, role=request.agent_roles[agent], index=agent + 1)
        return [{"role": "user", "content": content}]

    def __call__(self, requests: Sequence[FeedbackRequest]) -> list[tuple[str, ...]]:
        jobs = [(r, i) for r in requests for i in range(len(r.completions))]
        with ThreadPoolExecutor(self.max_workers) as pool:
            texts = list(pool.map(lambda job: self.client.complete(self.messages(*job)), jobs))
        out, k = [], 0
        for r in requests:
            out.append(tuple(texts[k : k + len(r.completions)]))
            k += len(r.completions)
        return out
