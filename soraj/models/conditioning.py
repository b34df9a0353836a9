"""Text conditioning for the DiT, for either text encoder in text.py: one config, the host-side
batch inputs (MiniLM states, or byte ids), and the jittable map from inputs to states (the
trainable byte encoder runs inside the jitted step, with its params beside the DiT's)."""

import dataclasses
import json
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from soraj.models.text import ByteEncoder, ByteTextEncoder, MiniLMEncoder, minilm_model_dir

TEXT_ENCODERS = ("minilm", "bytes")


@dataclasses.dataclass(frozen=True)
class TextConfig:
    encoder: str = "minilm"
    max_tokens: int = 32  # M
    byte_width: int = 256  # the byte encoder's E, depth and heads (encoder="bytes" only)
    byte_depth: int = 2
    byte_heads: int = 4

    def __post_init__(self):
        if self.encoder not in TEXT_ENCODERS:
            raise ValueError(f"unknown text encoder {self.encoder!r}; allowed: {TEXT_ENCODERS}")

    @property
    def trainable(self) -> bool:
        return self.encoder == "bytes"

    @property
    def width(self) -> int:  # E
        if self.trainable:
            return self.byte_width
        return json.loads((minilm_model_dir() / "config.json").read_text())["hidden_size"]

    def host_encoder(self) -> MiniLMEncoder | ByteTextEncoder:
        if self.trainable:
            return ByteTextEncoder(
                self.byte_width, self.byte_depth, self.byte_heads, self.max_tokens
            )
        return MiniLMEncoder(max_tokens=self.max_tokens)

    def byte_module(self) -> ByteEncoder:
        return ByteEncoder(self.byte_width, self.byte_depth, self.byte_heads, self.max_tokens)


def segment_inputs(encoder, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Captions → batch inputs for rows of one segment each: MiniLM states (B, 1, M, E) or
    byte ids (B, 1, M), with the mask (B, 1, M)."""
    text, mask = encoder.encode(list(captions))
    return np.asarray(text)[:, None], np.asarray(mask)[:, None]


def text_states(config: TextConfig, text_params, text, text_mask):
    """Batch inputs → (states (B, S, M, E), mask (B, S, M)). Jittable."""
    if not config.trainable:
        return text, text_mask
    b, s, m = text.shape
    states = config.byte_module().apply(
        {"params": text_params}, text.reshape(b * s, m), text_mask.reshape(b * s, m)
    )  # (B·S, M, E)
    return states.reshape(b, s, m, -1), text_mask


def init_text_params(config: TextConfig, rng) -> dict | None:
    if not config.trainable:
        return None
    ids = jnp.zeros((1, config.max_tokens), jnp.int32)
    return config.byte_module().init(rng, ids, jnp.ones(ids.shape, bool))["params"]
