"""Captions and chat replies from any OpenAI-compatible /v1/chat/completions endpoint."""

from __future__ import annotations

import base64
import io
import os
import re
import socket
import urllib.parse

import numpy as np
import openai
from PIL import Image

MODES = ("dense", "short")

# In the spirit of DALL·E 3's descriptive captioner and Open-Sora's three-frame prompt: name
# everything a generator would need to redraw the clip, start with the content, no commentary.
_FRAMES = "These {k} images are frames of one short video, in time order. "
_STYLE = (
    "Start directly with the content, in the present tense: no preamble such as 'The video "
    "shows', no lists, no mention of frames or images, nothing that is not visible."
)
INSTRUCTIONS = {
    "dense": _FRAMES
    + "Write a descriptive caption of the video for training a text-to-video model. Describe "
    "every object: its colour, shape and size, and how it moves across the frames (its "
    "direction, or that it stays still). Then describe the background. Use a few plain "
    "sentences. " + _STYLE,
    "short": _FRAMES
    + "Write a one-sentence caption that names only the main subject and what it does. "
    + _STYLE,
}
MAX_TOKENS = {"dense": 300, "short": 60}

# Openings that vision-language models add by habit (Open-Sora-Plan strips a similar list);
# a caption in the training style starts with its subject.
_PREAMBLE = re.compile(
    r"^(?:(?:here is|here's) (?:a|the) (?:\w+ )?caption(?: of the video)?\s*[:.]?\s*"
    r"|caption\s*:\s*"
    r"|(?:the|this) (?:video|clip|footage|sequence|animation|frames|images) "
    r"(?:show|depict|feature|display|present|capture|illustrate)s?(?: (?:that|how))?"
    r"\s*:?\s*"
    r"|in (?:the|this) (?:video|clip|footage|sequence|animation|frames|images)\s*,\s*)",
    re.IGNORECASE,
)


class ReplyError(RuntimeError):
    """The endpoint gave no usable reply: the request failed after its retries, or the reply
    was malformed or empty."""


# ---- Client ----


def check_endpoint(endpoint: str, timeout_s: float = 2.0) -> None:
    """Raises ValueError, naming the endpoint, when its URL is malformed or nothing accepts a
    TCP connection at its host and port; call it before any work is done."""
    parts = urllib.parse.urlsplit(endpoint or "")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
        raise ValueError(
            f"endpoint {endpoint!r} is not an http(s) URL with a host; give the server's base "
            "URL, e.g. http://127.0.0.1:8080/v1"
        )
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout_s):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ValueError(
            f"endpoint {endpoint} refuses connections ({reason}); start the server or give "
            "another endpoint"
        ) from None


def make_client(endpoint: str, timeout_s: float, max_retries: int) -> openai.OpenAI:
    """An OpenAI client for endpoint; it retries timeouts, 408/409/429 and 5xx with
    exponential backoff (0.5 s doubling, or the server's Retry-After), max_retries times."""
    if not endpoint:
        raise ValueError("an endpoint URL is required: soraj never calls a hosted API by default")
    return openai.OpenAI(
        base_url=endpoint,
        # The client refuses to start without a key; local servers ignore it.
        api_key=os.environ.get("OPENAI_API_KEY") or "not-needed",
        timeout=timeout_s,
        max_retries=max_retries,
    )


# ---- Requests ----


def _reply_text(client: openai.OpenAI, **request) -> str:
    """choices[0].message.content of one chat completion, stripped; ReplyError otherwise."""
    try:
        response = client.chat.completions.create(**request)
    except openai.OpenAIError as error:
        raise ReplyError(f"{type(error).__name__}: {error}") from error
    except ValueError as error:  # the client lets a 200 reply's bad JSON through
        raise ReplyError(f"malformed JSON in the reply: {error}") from error
    # A 200 reply that is not a chat completion comes back as a str or a bare object.
    choices = getattr(response, "choices", None)
    if not choices:
        raise ReplyError(f"malformed reply without choices: {str(response)[:120]!r}")
    message = getattr(choices[0], "message", None)
    content = getattr(message, "content", None)
    if not isinstance(content, str) or not content.strip():
        raise ReplyError("empty reply: the first choice has no text")
    return content.strip()


def png_data_url(frame: np.ndarray, min_side: int = 0) -> str:
    """A uint8 (H, W, 3) frame as a data:image/png URL, upscaled (nearest) to ≥ min_side."""
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
    image = Image.fromarray(frame)
    scale = -(-min_side // min(image.size)) if min_side else 1
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def clean_caption(text: str) -> str:
    """One paragraph without the model's preamble, starting with a capital letter."""
    text = " ".join(text.split()).strip("\"'` ")
    while (match := _PREAMBLE.match(text)) and match.end() > 0:
        text = text[match.end() :].lstrip()
    return text[:1].upper() + text[1:]


def caption_frames(
    client: openai.OpenAI, model: str, frames, mode: str = "dense", min_side: int = 256
) -> str:
    """A caption of frames (uint8 (H, W, 3) each, in time order) from one chat completion.

    Tiny frames are upscaled to min_side because vision-language models read small images
    badly (32 × 32 is under one of their patches). Temperature 0 and a fixed seed make the
    reply as repeatable as the server allows. Raises ReplyError when no caption comes back.
    """
    if mode not in MODES:
        raise ValueError(f"unknown caption mode {mode!r}; allowed: {', '.join(MODES)}")
    if len(frames) == 0:
        raise ValueError("caption_frames needs at least one frame")
    content = [{"type": "text", "text": INSTRUCTIONS[mode].format(k=len(frames))}]
    for frame in frames:
        url = png_data_url(np.asarray(frame), min_side)
        content.append({"type": "image_url", "image_url": {"url": url}})
    # The instruction rides in the user turn: some VLM chat templates drop a system turn.
    text = _reply_text(
        client,
        model=model,
        messages=[{"role": "user", "content": content}],
        temperature=0.0,
        seed=0,
        max_tokens=MAX_TOKENS[mode],
    )
    caption = clean_caption(text)
    if not caption:
        raise ReplyError(f"empty caption after removing the preamble of {text[:80]!r}")
    return caption


def chat_text(
    client: openai.OpenAI,
    model: str,
    system: str,
    few_shot: list[tuple[str, str]],
    user: str,
    temperature: float,
) -> str:
    """The reply to user after a system turn and few-shot (user, assistant) pairs; ReplyError
    when no text comes back."""
    messages = [{"role": "system", "content": system}]
    for shot_user, shot_assistant in few_shot:
        messages.append({"role": "user", "content": shot_user})
        messages.append({"role": "assistant", "content": shot_assistant})
    messages.append({"role": "user", "content": user})
    return _reply_text(client, model=model, messages=messages, temperature=temperature)
