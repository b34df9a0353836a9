"""A loopback fake of /v1/chat/completions whose answer to each request a test scripts."""

from __future__ import annotations

import base64
import dataclasses
import http.server
import io
import json
import threading
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

KINDS = ("ok", "slow", "error500", "malformed", "no_choices", "empty")


@dataclasses.dataclass(frozen=True)
class Answer:
    """How to answer one request: kind is one of KINDS; text is the reply of "ok"/"slow"."""

    kind: str = "ok"
    text: str = "A red circle moves up. The background is black."
    delay_s: float = 0.0  # "slow" answers after this long, longer than the client's timeout

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown answer kind {self.kind!r}; allowed: {', '.join(KINDS)}")


def request_images(body: dict) -> list[np.ndarray]:
    """The images of a chat request's messages, decoded from their data URLs: (H, W, 3) each."""
    images = []
    for message in body.get("messages", []):
        content = message.get("content")
        for part in content if isinstance(content, list) else []:
            if part.get("type") == "image_url":
                data = part["image_url"]["url"].split(",", 1)[1]
                images.append(np.asarray(Image.open(io.BytesIO(base64.b64decode(data)))))
    return images


class FakeOpenAIServer:
    """An http.server thread on 127.0.0.1 (port 0). Each request gets the next Answer of
    `script`, or `respond(body)` when the script is empty, or `default`; every request's
    parsed JSON body is kept in `requests`, in arrival order."""

    def __init__(self, respond: Callable[[dict], Answer] | None = None):
        self.script: list[Answer] = []
        self.respond = respond
        self.default = Answer()
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        # Slow answers may still sleep at shutdown; daemon threads are not joined.
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def push(self, *answers: Answer) -> None:
        with self._lock:
            self.script.extend(answers)

    def start(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def _next_answer(self, body: dict) -> Answer:
        with self._lock:
            self.requests.append(body)
            if self.script:
                return self.script.pop(0)
        return self.respond(body) if self.respond else self.default

    def _handler_class(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def _send(self, status: int, payload: bytes, headers: dict | None = None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                try:
                    body = json.loads(self.rfile.read(length))
                except json.JSONDecodeError:
                    body = {}
                if not self.path.endswith("/chat/completions"):
                    self._send(404, b'{"error": {"message": "not found"}}')
                    return
                answer = server._next_answer(body)
                try:
                    self._answer(answer, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on a slow answer

            def _answer(self, answer: Answer, body: dict):
                if answer.kind == "slow" and server._stopping.wait(answer.delay_s):
                    return
                if answer.kind == "error500":
                    # A short Retry-After keeps the client's backoff, and the tests, fast.
                    error = b'{"error": {"message": "internal error", "type": "server_error"}}'
                    self._send(500, error, {"retry-after-ms": "20"})
                elif answer.kind == "malformed":
                    self._send(200, b'{"id": "x", "choices": [{"message": ')
                elif answer.kind == "no_choices":
                    self._send(200, b'{"id": "x", "object": "chat.completion", "choices": []}')
                else:
                    text = "" if answer.kind == "empty" else answer.text
                    self._send(200, json.dumps(completion(body, text)).encode())

        return Handler


def completion(body: dict, text: str) -> dict:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model", "fake"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


@pytest.fixture
def fake_openai():
    """A started FakeOpenAIServer, stopped after the test."""
    server = FakeOpenAIServer().start()
    yield server
    server.stop()
