"""The hand count of DiT matmul FLOPs (experiments/bench/dit_flops.py) against XLA's cost analysis.

Two derivations of one number: the hand count writes every dense layer and attention product
out from the shapes; XLA counts the HLO of the jitted function. XLA also counts the elementwise
work (norms, softmax, RoPE, GELU, the optimizer), which the hand count leaves out, so XLA's
count must be at least the hand count and at most TOLERANCE above it. A hand count missing
one layer kind (adaLN alone is about a third of a block) or the backward pass's doubling falls
far outside that band.
"""

import dataclasses
import functools
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soraj import optim
from soraj.configs import t2v
from soraj.generate import init_params
from soraj.models.conditioning import TextConfig
from soraj.models.dit import DiT, DiTConfig
from soraj.train import train_step

sys.path.insert(0, str(Path(__file__).parents[1] / "experiments" / "bench"))
from dit_flops import (  # noqa: E402
    PackedShape,
    forward_flops,
    matmul,
    model_forward_flops,
    model_train_step_flops,
    train_step_flops,
)

# Elementwise work XLA counts on top of the matmuls, at this test's sizes (width 128): measured
# 2.1 % (forward) and 3.3 % (train step). Leaving out any one layer kind of the hand count (the
# cross-attention keys and values on 32 text tokens a segment are the smallest, 8 %) falls outside.
TOLERANCE = 0.05

# Frozen-encoder text states (a latent cache's) of width E = 48: random, as no encoder runs.
TEXT = TextConfig(encoder="minilm", max_tokens=32)
DIT = DiTConfig(width=128, depth=2, num_heads=2, latent_channels=4, text_width=48)


def packed_inputs(rows: int, length: int, segment_tokens: int, segments: int) -> dict:
    """A packed batch of `segments` contiguous segments of segment_tokens per row, then padding."""
    rng = np.random.default_rng(0)
    used = segments * segment_tokens
    segment_ids = np.zeros((rows, length), np.int32)
    segment_ids[:, :used] = np.repeat(np.arange(1, segments + 1), segment_tokens)
    coords = np.zeros((rows, length, 3), np.int32)
    coords[:, :used, 2] = np.tile(np.arange(segment_tokens), segments)
    m = TEXT.max_tokens
    return {
        "latents": rng.standard_normal((rows, length, DIT.patch_features), np.float32),
        "coords": coords,
        "segment_ids": segment_ids,
        "cond_mask": np.zeros((rows, length), bool),
        "grid": np.tile(np.array([1, 1, segment_tokens], np.int32), (rows, segments, 1)),
        "text": rng.standard_normal((rows, segments, m, DIT.text_width), np.float32),
        "text_mask": np.ones((rows, segments, m), bool),
    }


def xla_forward_flops(batch: dict, window, config: DiTConfig = DIT) -> float:
    dit = DiT(config)
    params = nn.unbox(init_params(dit, TEXT, jax.random.key(0))["dit"])

    def forward(params, batch):
        t = jnp.full(batch["segment_ids"].shape, 0.5)
        return dit.apply(
            {"params": params},
            batch["latents"],
            t,
            batch["coords"],
            batch["segment_ids"],
            batch["text"],
            batch["text_mask"],
            max_segment_tokens=window,
        )

    return jax.jit(forward).lower(params, batch).cost_analysis()["flops"]


def xla_train_step_flops(batch: dict, window: int) -> float:
    """XLA's count of soraj.train.train_step on this batch; the step runs with the trainer's
    window, config.data.token_budget."""
    config = t2v.get_config("tiny")
    config.data.token_budget = window
    dit = DiT(DIT)
    optimizer = optim.make_optimizer(config.optim)
    params = nn.unbox(init_params(dit, TEXT, jax.random.key(0)))
    state = optim.TrainState.create(params, optimizer, jax.random.key(1))
    step = functools.partial(train_step, dit=dit, text=TEXT, optimizer=optimizer, config=config)
    return jax.jit(step).lower(state, batch, jax.random.key(2)).cost_analysis()["flops"]


def shape_of(batch: dict, window) -> PackedShape:
    rows, length = batch["segment_ids"].shape
    segments, m, e = batch["text"].shape[1:]
    segment_tokens = int((batch["segment_ids"][0] == 1).sum())
    return PackedShape(rows, length, segments, m, e, window, segment_tokens)


def within_band(xla: float, hand: int) -> bool:
    return hand <= xla <= hand * (1 + TOLERANCE)


def test_one_matmul_in_closed_form():
    """XLA's count of one (m, k) @ (k, n) product is 2·m·k·n, as dit_flops.matmul says."""
    m, k, n = 24, 40, 56
    x, w = jnp.ones((m, k)), jnp.ones((k, n))
    xla = jax.jit(jnp.dot).lower(x, w).cost_analysis()["flops"]
    assert xla == matmul(m, k, n) == 2 * 24 * 40 * 56


@pytest.mark.parametrize("window", [None, 32])
def test_forward_count_matches_xla(window):
    """Whole-row attention, and windows of 3 × 32 keys on 160-token rows (padded to 5 blocks)."""
    batch = packed_inputs(rows=2, length=150, segment_tokens=30, segments=4)
    hand = sum(forward_flops(DIT, shape_of(batch, window)).values())
    xla = xla_forward_flops(batch, window)
    assert within_band(xla, hand), (xla, hand, xla / hand)


@pytest.mark.parametrize("modulation", ["per_token", "per_segment"])
def test_forward_count_of_each_modulation_matches_xla(modulation):
    batch = packed_inputs(rows=2, length=150, segment_tokens=30, segments=4)
    config = dataclasses.replace(DIT, modulation=modulation)
    hand = sum(forward_flops(config, shape_of(batch, None)).values())
    xla = xla_forward_flops(batch, None, config)
    assert within_band(xla, hand), (xla, hand, xla / hand)


def test_model_count_is_the_executed_count_where_nothing_is_wasted():
    """One sample filling each row, per-sample adaLN: every executed product is model work, so
    the two counts agree exactly; padding, row-mates and per-token adaLN only add to the
    executed count."""
    config = dataclasses.replace(DIT, modulation="per_segment")
    full = shape_of(packed_inputs(rows=2, length=120, segment_tokens=120, segments=1), None)
    assert model_forward_flops(config, full) == forward_flops(config, full)
    packed = shape_of(packed_inputs(rows=2, length=150, segment_tokens=30, segments=4), None)
    wasteful = dataclasses.replace(config, modulation="per_token")
    model = sum(model_forward_flops(wasteful, packed).values())
    assert model == sum(model_forward_flops(config, packed).values())  # design-independent
    assert model < sum(forward_flops(config, packed).values())
    # Self-attention model work: 4 segments of 30 × 30 pairs, not 150 × 150.
    scores = model_forward_flops(config, packed)["self_attention_scores_values"]
    assert scores == DIT.depth * 2 * 2 * 4 * matmul(30, DIT.width, 30)
    assert model_train_step_flops(config, packed) == 3 * model


def test_train_step_count_matches_xla():
    """The train step: forward, then weight and input gradients (input-side layers need only
    the weight gradient), plus clipping, AdamW and EMA, which are elementwise."""
    batch = packed_inputs(rows=2, length=128, segment_tokens=32, segments=3)
    hand = train_step_flops(DIT, shape_of(batch, 32))
    xla = xla_train_step_flops(batch, 32)
    assert within_band(xla, hand), (xla, hand, xla / hand)


def test_window_saving_matches_xla():
    """What the attention windows save: on 256-token rows of 32-token segments, whole-row
    attention scores 256 keys a query and windows 3 × 32; XLA's difference between the two
    forwards is the hand count's (the softmax and masking on the dropped logits, which XLA also
    counts, add a few percent)."""
    batch = packed_inputs(rows=1, length=256, segment_tokens=32, segments=8)
    hand = [sum(forward_flops(DIT, shape_of(batch, w)).values()) for w in (None, 32)]
    xla = [xla_forward_flops(batch, w) for w in (None, 32)]
    assert within_band(xla[0] - xla[1], hand[0] - hand[1]), (xla, hand)
