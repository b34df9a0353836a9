"""The video captioner (CapPa / CoCa style): a tubelet ViT over low-resolution pixels encodes a
clip, and the shared TextDecoder writes its caption in WordPiece after a leading mode token
(dense, short, or the original web style), in place of DALL·E 3's separate fine-tunes.

Pixels, not VAE latents: the captioner must tell a 7-pixel triangle from a circle and orange
from yellow, which a 4× spatial VAE blurs (experiments/shapes/NOTES.md).
"""

import dataclasses
import time
from pathlib import Path
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from soraj import checkpoint, exports
from soraj.captions.decoder import TextDecoder
from soraj.captions.decoding import beam_search, greedy_decode
from soraj.captions.vocab import UNK_ID, CaptionVocab

# ---- Config -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CaptionerConfig:
    frames: int = 9  # clips are resampled to frames × height × width before encoding
    height: int = 32
    width: int = 32
    tubelet: tuple[int, int, int] = (3, 8, 8)  # (t, h, w) pixels per video token
    model_width: int = 128
    encoder_depth: int = 3
    decoder_depth: int = 3
    num_heads: int = 4
    max_length: int = 40  # decoder positions: BOS, mode, pieces, EOS
    # Per-frame 3×3 convolutions before the tubelets (0: none): a 7-pixel triangle and circle
    # differ in edges a linear 8×8 patch embedding hardly separates.
    stem_channels: int = 0
    # Colour-invariant form channels beside the pixels (0: none; FormStem): edges of any colour
    # give the same features, so shape can be read without colour.
    form_channels: int = 0
    # Decoder inputs replaced by UNK at this rate in training (word dropout): the next word
    # must come from the video, not only from the words before it (a colour never seen with
    # a shape would otherwise veto that shape).
    token_dropout: float = 0.0
    # Output ids the decoder never reads back (TextDecoder.unfed_ids), e.g. the colour words.
    unfed_ids: tuple[int, ...] = ()
    vocab_size: int = 0  # set from the CaptionVocab

    def __post_init__(self):
        object.__setattr__(self, "tubelet", tuple(self.tubelet))
        object.__setattr__(self, "unfed_ids", tuple(int(i) for i in self.unfed_ids))
        for size, patch, name in zip(
            (self.frames, self.height, self.width),
            self.tubelet,
            ("frames", "height", "width"),
            strict=True,
        ):
            if patch < 1 or size % patch:
                raise ValueError(f"captioner {name} {size} is not a multiple of tubelet {patch}")

    @property
    def grid(self) -> tuple[int, int, int]:
        return tuple(
            s // p
            for s, p in zip((self.frames, self.height, self.width), self.tubelet, strict=True)
        )


# ---- Model ------------------------------------------------------------------------------------


class EncoderBlock(nn.Module):
    width: int
    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm(name="norm_attention")(x)
        x = x + nn.MultiHeadDotProductAttention(self.num_heads, dtype=self.dtype)(y)
        y = nn.LayerNorm(name="norm_mlp")(x)
        y = nn.Dense(4 * self.width, dtype=self.dtype, name="mlp_in")(y)
        return x + nn.Dense(self.width, dtype=self.dtype, name="mlp_out")(nn.gelu(y))


class FormStem(nn.Module):
    """frames f32 (N, H, W, 3) → colour-invariant form features (N, H, W, K).

    One set of zero-mean 3×3 filters runs on each colour channel alone; the absolute responses
    are summed over the channels and scaled to unit length per pixel. An object of colour c on
    a background b gives |c − b|₁·|filter ∗ coverage|, whose direction over the K filters is the
    same for every colour: the object's form without its colour. A second 3×3 convolution
    combines the edges into corners and curves.
    """

    channels: int
    epsilon: float = 0.05  # response norm under which a pixel counts as flat (pixels in [-1, 1])

    @nn.compact
    def __call__(self, frames):
        n, h, w, c = frames.shape
        kernel = self.param("edge_kernel", nn.initializers.lecun_normal(), (3, 3, 1, self.channels))
        kernel = kernel - kernel.mean(axis=(0, 1), keepdims=True)  # flat regions give 0
        per_channel = frames.transpose(0, 3, 1, 2).reshape(n * c, h, w, 1)  # (N·3, H, W, 1)
        # Edge padding: a zero border would be an edge whose strength depends on the colours.
        padded = jnp.pad(per_channel, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        edges = jax.lax.conv_general_dilated(
            padded, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )  # (N·3, H, W, K)
        edges = jnp.abs(edges).reshape(n, c, h, w, self.channels).sum(axis=1)  # (N, H, W, K)
        norm = jnp.sqrt(jnp.sum(edges * edges, axis=-1, keepdims=True))
        form = edges / (norm + self.epsilon)  # (N, H, W, K): unit length on edges, ~0 when flat
        return nn.gelu(nn.Conv(self.channels, (3, 3), name="form_conv")(form))  # (N, H, W, K)


class VideoEncoder(nn.Module):
    """video f32 (B, T, H, W, 3) in [-1, 1] → tokens (B, K, D), one per tubelet."""

    config: CaptionerConfig

    @nn.compact
    def __call__(self, video):
        c = self.config
        pt, ph, pw = c.tubelet
        pixels = video.reshape(-1, *video.shape[2:])  # (B·T, H, W, 3): 2D convs per frame
        channels = [pixels]
        if c.stem_channels:
            frames = pixels
            for i in range(2):
                frames = nn.gelu(nn.Conv(c.stem_channels, (3, 3), name=f"stem{i}")(frames))
            channels = [frames]  # (B·T, H, W, S)
        if c.form_channels:
            channels.append(FormStem(c.form_channels, name="form")(pixels))  # (B·T, H, W, F)
        features = jnp.concatenate(channels, axis=-1)
        video = features.reshape(*video.shape[:4], features.shape[-1])  # (B, T, H, W, S + F)
        x = einops.rearrange(
            video, "b (t pt) (h ph) (w pw) c -> b t h w (pt ph pw c)", pt=pt, ph=ph, pw=pw
        )
        x = nn.Dense(c.model_width, name="tubelet_in")(x)  # (B, t, h, w, D)
        # Factorised learned positions: where a token sits in time carries the motion.
        for axis, size in enumerate(c.grid):
            table = self.param(
                f"position_{'thw'[axis]}", nn.initializers.normal(0.02), (size, c.model_width)
            )
            shape = [1, 1, 1, 1, c.model_width]
            shape[axis + 1] = size
            x = x + table.reshape(shape)
        x = x.reshape(x.shape[0], -1, c.model_width)  # (B, K, D)
        for i in range(c.encoder_depth):
            x = EncoderBlock(c.model_width, c.num_heads, name=f"b{i}")(x)
        return nn.LayerNorm(name="norm_out")(x)  # (B, K, D)


class CaptionModel(nn.Module):
    config: CaptionerConfig

    def setup(self):
        c = self.config
        self.encoder = VideoEncoder(c)
        self.decoder = text_decoder(c)

    def __call__(self, video, tokens):
        memory = self.encoder(video)  # (B, K, D)
        mask = jnp.ones(memory.shape[:2], bool)
        return self.decoder(tokens, memory, mask)  # (B, M, V)

    def encode(self, video):
        return self.encoder(video)


def text_decoder(config: CaptionerConfig) -> TextDecoder:
    return TextDecoder(
        vocab_size=config.vocab_size,
        width=config.model_width,
        depth=config.decoder_depth,
        num_heads=config.num_heads,
        max_length=config.max_length,
        unfed_ids=config.unfed_ids,
    )


def frame_indices(num_frames: int, frames: int) -> np.ndarray:
    """`frames` evenly spaced frames of a clip of num_frames, first and last included."""
    return np.linspace(0, num_frames - 1, frames).round().astype(int)


def prepare_videos(videos: np.ndarray, config: CaptionerConfig) -> np.ndarray:
    """uint8 (N, T, H, W, 3) of any size → f32 (N, frames, height, width, 3) in [-1, 1]:
    evenly spaced frames, then an antialiased resize when the size differs."""
    videos = np.asarray(videos)
    if videos.ndim != 5 or videos.shape[-1] != 3 or videos.dtype != np.uint8:
        raise ValueError(f"videos must be uint8 (N, T, H, W, 3), got {videos.dtype} {videos.shape}")
    x = videos[:, frame_indices(videos.shape[1], config.frames)].astype(np.float32) / 127.5 - 1.0
    target = (x.shape[0], config.frames, config.height, config.width, 3)
    if x.shape != target:
        x = np.asarray(jax.image.resize(x, target, "linear", antialias=True))
    return x


def caption_loss(params, model: CaptionModel, video, tokens, rng=None, unscored=None):
    """Mean cross-entropy of every caption piece and EOS; the forced mode token has no loss.
    With an rng, caption pieces fed to the decoder drop to UNK at the config's token_dropout.
    `unscored` bool (B, M) marks pieces the video does not show (the colour words of a
    recoloured clip): they have no loss and the decoder reads UNK in their place."""
    inputs = tokens[:, :-1]  # (B, M-1)
    if rng is not None and model.config.token_dropout:
        pieces = jnp.arange(inputs.shape[1]) >= 2  # BOS and the mode token always stay
        drop = jax.random.bernoulli(rng, model.config.token_dropout, inputs.shape) & pieces
        inputs = jnp.where(drop & (inputs > 0), UNK_ID, inputs)
    targets = tokens[:, 1:]
    weights = (targets > 0) & (jnp.arange(targets.shape[1]) >= 1)  # skip the mode target
    if unscored is not None:
        inputs = jnp.where(unscored[:, :-1], UNK_ID, inputs)
        weights = weights & ~unscored[:, 1:]
    logits = model.apply({"params": params}, video, inputs)  # (B, M-1, V)
    losses = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
    return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1)


# ---- Inference --------------------------------------------------------------------------------

MODES = ("dense", "short")


class Captioner:
    """An exported captioner: clips in, captions out (greedy, or beam search with beam > 1)."""

    def __init__(self, config: CaptionerConfig, vocab: CaptionVocab, params):
        self.config, self.vocab, self.params = config, vocab, params
        self.model = CaptionModel(config)
        self._encode = jax.jit(lambda p, v: self.model.apply({"params": p}, v, method="encode"))

    @classmethod
    def load(cls, directory: str | Path) -> "Captioner":
        """The captioner export exports.find_export finds at directory (the export, a
        `soraj train-captioner` workdir or a bundle's captioner/)."""
        directory = exports.find_export(directory, "captioner")
        stored = exports.load_export_config(
            directory, "captioner", required=("vocab", "captioner_config")
        )
        vocab = CaptionVocab.from_dict(stored["vocab"])  # refuses another tokenizer
        with exports.config_errors(directory):
            config = CaptionerConfig(**stored["captioner_config"])
        abstract = jax.eval_shape(lambda: init_captioner(config, jax.random.key(0)))
        params, _ = exports.load_export(directory, abstract)
        return cls(config, vocab, params)

    def caption(self, videos: np.ndarray, mode: str = "dense", beam: int = 1) -> list[str]:
        if mode not in MODES:
            raise ValueError(f"unknown caption mode {mode!r}; allowed: {', '.join(MODES)}")
        if isinstance(beam, bool) or not isinstance(beam, int) or beam < 1:
            raise ValueError(f"beam must be a positive integer (1 = greedy), got {beam!r}")
        video = jnp.asarray(prepare_videos(videos, self.config))
        memory = self._encode(self.params, video)  # (N, K, D)
        mask = jnp.ones(memory.shape[:2], bool)
        prefix = jnp.tile(self.vocab.prefix(mode), (memory.shape[0], 1))
        decoder, decoder_params = text_decoder(self.config), self.params["decoder"]
        if beam == 1:
            ids = greedy_decode(decoder, decoder_params, memory, mask, prefix)
        else:
            ids = beam_search(decoder, decoder_params, memory, mask, prefix, beam)
        return self.vocab.decode(np.asarray(ids))

    def timed_caption(self, videos, mode="dense", beam=1) -> tuple[list[str], float]:
        start = time.perf_counter()
        captions = self.caption(videos, mode, beam)
        return captions, time.perf_counter() - start


def init_captioner(config: CaptionerConfig, rng) -> dict:
    video = jnp.zeros((1, config.frames, config.height, config.width, 3))
    tokens = jnp.ones((1, config.max_length - 1), jnp.int32)
    return CaptionModel(config).init(rng, video, tokens)["params"]


def export_captioner(directory: Path, params, config: CaptionerConfig, vocab, extra: dict) -> Path:
    stored = {
        "kind": "captioner",
        "captioner_config": dataclasses.asdict(config),
        "vocab": vocab.to_dict(),
        "code_version": checkpoint.code_version(),
        **extra,
    }
    return exports.write_export(directory, params, stored)
