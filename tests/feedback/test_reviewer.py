"""The reviewer client against a local OpenAI-compatible server started here, its failure modes,
and reviewer feedback per agent."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from magrpo.feedback import FeedbackRequest, ReviewerClient, ReviewerError, ReviewerFeedback


class ReviewServer:
    """A chat-completions endpoint on 127.0.0.1 whose behaviour each test scripts."""

    def __init__(self, script):
        self.script = script  # list of ("ok", text) | ("status", code) | ("sleep", seconds) | ("garbage", body)
        self.calls: list[dict] = []
        self.headers: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.calls.append(body)
                outer.headers.append(dict(self.headers))
                kind, value = outer.script[min(len(outer.calls), len(outer.script)) - 1]
                if kind == "sleep":
                    time.sleep(value)
                    kind, value = "ok", "late"
                if kind == "status":
                    self.send_response(value)
                    self.end_headers()
                    self.wfile.write(b"{}")
                    return
                payload = (
                    value.encode()
                    if kind == "garbage"
                    else json.dumps(
                        {"choices": [{"message": {"role": "assistant", "content": f"{value} #{len(outer.calls)}"}}]}
                    ).encode()
                )
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server(request):
    s = ReviewServer(request.param)
    yield s
    s.close()


MESSAGES = [{"role": "user", "content": "review this"}]


@pytest.mark.parametrize("server", [[("ok", "advice")]], indirect=True)
def test_answer_key_and_cache(server, monkeypatch):
    monkeypatch.setenv("MAGRPO_REVIEWER_API_KEY", "sk-test")
    client = ReviewerClient(server.url, "judge", timeout_s=5)
    assert client.complete(MESSAGES) == "advice #1"
    assert client.complete(MESSAGES) == "advice #1"  # identical request: from the cache
    assert len(server.calls) == 1 and client.requests_sent == 1
    assert server.calls[0]["model"] == "judge" and server.calls[0]["messages"] == MESSAGES
    assert server.headers[0]["Authorization"] == "Bearer sk-test"
    assert client.complete([{"role": "user", "content": "other"}]) == "advice #2"


@pytest.mark.parametrize("server", [[("status", 503), ("status", 429), ("ok", "fine")]], indirect=True)
def test_retries_with_backoff_on_503_and_429(server):
    client = ReviewerClient(server.url, "judge", timeout_s=5, max_retries=3, backoff_s=0.05)
    started = time.perf_counter()
    assert client.complete(MESSAGES) == "fine #3"
    assert len(server.calls) == 3
    assert time.perf_counter() - started >= 0.05 + 0.1  # backoff doubled


@pytest.mark.parametrize("server", [[("status", 500)]], indirect=True)
def test_gives_up_after_the_retries(server):
    client = ReviewerClient(server.url, "judge", timeout_s=5, max_retries=2, backoff_s=0.01)
    with pytest.raises(ReviewerError, match=r"could not be reached after 3 attempts \(HTTP 500\)"):
        client.complete(MESSAGES)
    assert len(server.calls) == 3


@pytest.mark.parametrize("server", [[("status", 401)]], indirect=True)
def test_client_errors_are_not_retried(server):
    client = ReviewerClient(server.url, "judge", timeout_s=5, max_retries=3, backoff_s=0.01)
    with pytest.raises(ReviewerError, match="answered HTTP 401"):
        client.complete(MESSAGES)
    assert len(server.calls) == 1


@pytest.mark.parametrize("server", [[("sleep", 1.0)]], indirect=True)
def test_timeout(server):
    client = ReviewerClient(server.url, "judge", timeout_s=0.2, max_retries=1, backoff_s=0.01)
    with pytest.raises(ReviewerError, match="could not be reached after 2 attempts"):
        client.complete(MESSAGES)


@pytest.mark.parametrize("server", [[("garbage", '{"error": "nope"}')]], indirect=True)
def test_unusable_answer(server):
    client = ReviewerClient(server.url, "judge", timeout_s=5)
    with pytest.raises(ReviewerError, match=r"without choices\[0\].message.content"):
        client.complete(MESSAGES)


def test_unreachable_endpoint_names_the_url():
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = ReviewerClient(f"http://127.0.0.1:{port}/v1", "judge", timeout_s=1, max_retries=1, backoff_s=0.01)
    with pytest.raises(
        ReviewerError, match=rf"reviewer endpoint http://127.0.0.1:{port}/v1/chat/completions could not be reached"
    ):
        client.complete(MESSAGES)


def test_bad_url_is_refused_at_once():
    with pytest.raises(ValueError, match="must start with http:// or https://"):
        ReviewerClient("127.0.0.1:8000", "judge")


@pytest.mark.parametrize("server", [[("ok", "advice")]], indirect=True)
def test_reviewer_feedback_asks_once_per_agent(server):
    feedback = ReviewerFeedback(ReviewerClient(server.url, "judge", timeout_s=5), task_field="source")
    request = FeedbackRequest({"source": "Summarise X."}, ("short", "long"), {"reward": 0.0}, 1, ("tldr", "detailed"))
    texts = feedback([request])
    assert len(texts) == 1 and len(texts[0]) == 2 and len(server.calls) == 2
    prompts = sorted(c["messages"][0]["content"] for c in server.calls)
    assert "Summarise X." in prompts[0] and "Part of the tldr agent:\nshort" in prompts[0]
    assert any("the detailed agent (2 of 2)" in p for p in prompts)
