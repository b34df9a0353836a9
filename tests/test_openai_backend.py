"""The OpenAI-compatible backend against the loopback fake server: replies, retries, errors."""

import socket

import fake_openai_server
import numpy as np
import pytest
from fake_openai_server import Answer, request_images

from soraj.captions import openai_backend as backend

fake_openai = fake_openai_server.fake_openai  # the fixture

# Short timeouts keep each test near a second; the client's own backoff starts at 0.5 s.
TIMEOUT_S = 0.5


def frames(k=3, size=8):
    return [np.full((size, size, 3), 40 * i, np.uint8) for i in range(k)]


def client_for(server, max_retries=2):
    return backend.make_client(server.url, TIMEOUT_S, max_retries)


# ---- Normal replies ----


def test_caption_sends_the_frames_as_images_and_cleans_the_reply(fake_openai):
    fake_openai.push(Answer(text="  The video shows a red circle\nmoving up. "))
    caption = backend.caption_frames(client_for(fake_openai), "vlm", frames(), "dense")
    assert caption == "A red circle moving up."
    (body,) = fake_openai.requests
    assert body["model"] == "vlm" and body["temperature"] == 0.0
    images = request_images(body)
    assert len(images) == 3
    # Nearest upscaling keeps each frame's colour exactly, and in time order.
    assert [int(image[0, 0, 0]) for image in images] == [0, 40, 80]
    assert min(images[0].shape[:2]) >= 256
    text = body["messages"][0]["content"][0]["text"]
    assert "colour" in text and "background" in text


def test_short_mode_asks_for_one_sentence_and_bad_mode_fails_first(fake_openai):
    backend.caption_frames(client_for(fake_openai), "vlm", frames(1), "short")
    assert "one-sentence" in fake_openai.requests[0]["messages"][0]["content"][0]["text"]
    with pytest.raises(ValueError, match="allowed: dense, short"):
        backend.caption_frames(client_for(fake_openai), "vlm", frames(1), "long")
    assert len(fake_openai.requests) == 1


def test_chat_text_sends_system_few_shot_and_user(fake_openai):
    fake_openai.push(Answer(text=" A large red circle moves up. "))
    reply = backend.chat_text(
        client_for(fake_openai), "lm", "rewrite", [("red circle", "A red circle.")], "circle", 0.7
    )
    assert reply == "A large red circle moves up."
    body = fake_openai.requests[0]
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    assert body["messages"][-1]["content"] == "circle" and body["temperature"] == 0.7


def test_api_key_comes_from_the_environment(fake_openai, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert client_for(fake_openai).api_key == "sk-test"
    monkeypatch.delenv("OPENAI_API_KEY")
    assert client_for(fake_openai).api_key == "not-needed"


# ---- Slow, failing and malformed replies ----


def test_slow_reply_times_out_then_the_retry_succeeds(fake_openai):
    fake_openai.push(Answer("slow", delay_s=3.0), Answer(text="A blue square."))
    caption = backend.caption_frames(client_for(fake_openai), "vlm", frames(), "dense")
    assert caption == "A blue square."
    assert len(fake_openai.requests) == 2


def test_slow_replies_past_the_retries_fail_cleanly(fake_openai):
    fake_openai.push(*[Answer("slow", delay_s=3.0)] * 2)
    with pytest.raises(backend.ReplyError, match="APITimeoutError"):
        backend.caption_frames(client_for(fake_openai, max_retries=1), "vlm", frames(), "dense")
    assert len(fake_openai.requests) == 2


def test_500_then_success_is_retried(fake_openai):
    fake_openai.push(Answer("error500"), Answer("error500"), Answer(text="A green circle."))
    assert backend.caption_frames(client_for(fake_openai), "vlm", frames(), "short") == (
        "A green circle."
    )
    assert len(fake_openai.requests) == 3


def test_500_past_the_retries_is_a_reply_error(fake_openai):
    fake_openai.push(*[Answer("error500")] * 3)
    with pytest.raises(backend.ReplyError, match="500"):
        backend.chat_text(client_for(fake_openai), "lm", "s", [], "u", 0.0)


@pytest.mark.parametrize(
    "kind, message",
    [("malformed", "malformed JSON"), ("no_choices", "choices"), ("empty", "empty")],
)
def test_malformed_or_empty_reply_is_a_reply_error(fake_openai, kind, message):
    fake_openai.push(Answer(kind))
    with pytest.raises(backend.ReplyError, match=message):
        backend.caption_frames(client_for(fake_openai), "vlm", frames(), "dense")


def test_a_reply_that_is_only_a_preamble_is_a_reply_error(fake_openai):
    fake_openai.push(Answer(text="The video shows"))
    with pytest.raises(backend.ReplyError, match="empty caption"):
        backend.caption_frames(client_for(fake_openai), "vlm", frames(), "dense")


# ---- The endpoint itself ----


def test_check_endpoint_accepts_a_listening_server(fake_openai):
    backend.check_endpoint(fake_openai.url)


def test_check_endpoint_names_a_refusing_endpoint():
    with socket.socket() as probe:  # a port nothing listens on: bound, then closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(ValueError, match=f"endpoint {url} refuses connections"):
        backend.check_endpoint(url)


@pytest.mark.parametrize(
    "url", ["", "127.0.0.1:8080", "ftp://host/v1", "http:///v1", "http://h:x/"]
)
def test_check_endpoint_rejects_a_malformed_url(url):
    with pytest.raises(ValueError, match="not an http\\(s\\) URL"):
        backend.check_endpoint(url)


def test_make_client_needs_an_endpoint():
    with pytest.raises(ValueError, match="never calls a hosted API"):
        backend.make_client("", TIMEOUT_S, 0)


def test_clean_caption_strips_habits_but_keeps_content():
    assert backend.clean_caption("Caption: In this clip, a cat sits.") == "A cat sits."
    assert backend.clean_caption("The clip is dark.") == "The clip is dark."
    assert backend.clean_caption('"The frames depict: two squares."') == "Two squares."
