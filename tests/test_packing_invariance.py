"""Packing: first-fit against hand-worked rows, and a sample's DiT output and loss do not depend
on what else is packed in its row (docs/architecture.md §4)."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soraj.data.packing import Placement, first_fit, pack_samples, unpack
from soraj.diffusion.objective import flow_matching_loss
from soraj.models.dit import DIT_PRESETS, DiT
from soraj.models.patching import patchify

# ---- The packer ----


def _toy(n, seed, m=3):
    rng = np.random.default_rng(seed)
    return dict(
        latents=rng.normal(size=(n, 2)).astype(np.float32),
        coords=np.stack([np.zeros(n), np.zeros(n), np.arange(n)], -1).astype(np.int32),
        noise=rng.normal(size=(n, 2)).astype(np.float32),
        text=rng.normal(size=(m, 4)).astype(np.float32),
        text_mask=np.arange(m) < 2,
        t=np.float32(0.1 * seed),
    )


def test_first_fit_matches_hand_worked_rows():
    # L=8, S=2: 5 opens row 0; 4 does not fit (5+4 > 8), opens row 1; 3 fills row 0 to 8;
    # 2 joins row 1 (4+2); 6 fits nowhere (row 0 full, row 1 has 2 segments) and opens row 2.
    assert first_fit([5, 4, 3, 2, 6], 8, 2) == [
        Placement(0, 1, 0, 5),
        Placement(1, 1, 0, 4),
        Placement(0, 2, 5, 3),
        Placement(1, 2, 4, 2),
        Placement(2, 1, 0, 6),
    ]
    # S binds before L: a third 2-token sample opens a new row although row 0 has 4 free.
    assert [p.row for p in first_fit([2, 2, 2], 8, 2)] == [0, 0, 1]
    assert [p.row for p in first_fit([1, 1, 1], 8, 1)] == [0, 1, 2]


def test_pack_samples_places_every_field_and_unpack_inverts_it():
    samples = [_toy(n, seed) for seed, n in enumerate([5, 4, 3, 2, 6])]
    batch, placements = pack_samples(samples, row_length=8, max_segments=2, num_rows=4)
    np.testing.assert_array_equal(
        batch["segment_ids"],
        [[1] * 5 + [2] * 3, [1] * 4 + [2] * 2 + [0] * 2, [1] * 6 + [0] * 2, [0] * 8],
    )
    for sample, p, latents in zip(
        samples, placements, unpack(batch["latents"], placements), strict=True
    ):
        np.testing.assert_array_equal(latents, sample["latents"])
        rows = slice(p.start, p.start + p.length)
        np.testing.assert_array_equal(batch["noise"][p.row, rows], sample["noise"])
        np.testing.assert_array_equal(batch["coords"][p.row, rows], sample["coords"])
        np.testing.assert_array_equal(batch["t"][p.row, rows], np.full(p.length, sample["t"]))
        np.testing.assert_array_equal(batch["text"][p.row, p.segment - 1], sample["text"])
        np.testing.assert_array_equal(batch["text_mask"][p.row, p.segment - 1], [1, 1, 0])
        np.testing.assert_array_equal(batch["grid"][p.row, p.segment - 1], [1, 1, p.length])
    padding = batch["segment_ids"] == 0
    for key in ("latents", "noise", "coords", "t", "cond_mask"):
        assert not np.any(batch[key][padding]), key
    # Unused segment slots: row 2 segment 2 and all of row 3.
    assert not batch["text_mask"][2, 1].any() and not batch["text_mask"][3].any()
    assert not batch["text"][3].any() and not batch["grid"][3].any()


def test_pack_samples_rejects_bad_input_by_name():
    with pytest.raises(ValueError, match="more than the row length L=8"):
        pack_samples([_toy(9, 0)], row_length=8, max_segments=2)
    with pytest.raises(ValueError, match="num_rows=1"):
        pack_samples([_toy(5, 0), _toy(5, 1)], row_length=8, max_segments=2, num_rows=1)
    with pytest.raises(ValueError, match="max_segments S=0"):
        pack_samples([_toy(5, 0)], row_length=8, max_segments=0)
    with pytest.raises(ValueError, match="lacks \\['noise'\\]"):
        pack_samples([{k: v for k, v in _toy(5, 0).items() if k != "noise"}], 8, 2)
    with pytest.raises(ValueError, match="same \\(M, E\\) text shape"):
        pack_samples([_toy(2, 0), _toy(2, 1, m=4)], 8, 2)


# ---- DiT output and loss under packing ----

# The CPU preset at depth 2 with the trainer's adaLN: every mechanism (segment attention,
# per-segment text, adaLN per (sample, t), RoPE) is in each block, so two blocks are enough
# to show a leak.
CONFIG = dataclasses.replace(DIT_PRESETS["tiny"], depth=2, modulation="per_segment")
L, S, M, ROWS = 32, 3, 8, 4
LATENT_SHAPES = [(3, 4, 4), (1, 6, 4), (2, 2, 6), (3, 4, 6)]  # grids of 12, 6, 6, 18 patches


def _sample(seed, latent_shape, text_len, given_t=None):
    """given_t: the sample's first frame is given (cond_mask, as the mask curriculum gives
    frames) at that t: 0 clean, or a little noise."""
    rng = np.random.default_rng(seed)
    latents = rng.normal(size=(*latent_shape, CONFIG.latent_channels)).astype(np.float32)
    tokens, coords = patchify(latents, CONFIG.patch_size)
    coords = np.asarray(coords)
    cond_mask = np.zeros(len(coords), bool) if given_t is None else coords[:, 0] == 0
    t = np.where(cond_mask, given_t or 0.0, rng.uniform(0.05, 0.95)).astype(np.float32)
    return dict(
        latents=np.asarray(tokens),
        coords=coords,
        noise=rng.normal(size=tokens.shape).astype(np.float32),
        text=rng.normal(size=(M, CONFIG.text_width)).astype(np.float32),
        text_mask=np.arange(M) < text_len,
        t=t,
        cond_mask=cond_mask,
    )


# Samples 0 and 3 have their first frame given (clean, and noised to t = 0.07).
GIVEN_T = (0.0, None, None, 0.07)
SAMPLES = [
    _sample(i, shape, text_len=3 + i, given_t=given)
    for i, (shape, given) in enumerate(zip(LATENT_SHAPES, GIVEN_T, strict=True))
]


def _forward(params, batch, window=None):
    """(v (B, L, P), loss_per_segment (B, S)) from one jitted program for every layout."""
    model = DiT(CONFIG)
    out = {}

    def denoise(x_t, t):
        out["v"] = model.apply(
            params,
            x_t,
            t,
            batch["coords"],
            batch["segment_ids"],
            batch["text"],
            batch["text_mask"],
            max_segment_tokens=window,
        )
        return out["v"]

    _, aux = flow_matching_loss(
        denoise,
        batch["latents"],
        batch["noise"],
        batch["t"],
        batch["segment_ids"],
        batch["cond_mask"],
        max_segments=batch["grid"].shape[1],
    )
    return out["v"], aux["loss_per_segment"]


_forward_jit = jax.jit(_forward, static_argnames="window")


@functools.cache
def _random_params():
    """Init, then give every leaf random values: adaLN-Zero would make the output exactly 0."""
    batch, _ = pack_samples(SAMPLES, L, S, ROWS)
    args = [batch[k] for k in ("latents", "t", "coords", "segment_ids", "text", "text_mask")]
    params = nn.unbox(jax.jit(DiT(CONFIG).init)(jax.random.key(0), *args))
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [0.05 * jax.random.normal(k, p.shape) + p for k, p in zip(keys, leaves, strict=True)]
    return jax.tree.unflatten(treedef, leaves)


def _per_sample(batch, placements, garbage_seed=None):
    """Each sample's (output tokens, loss from the objective, loss recomputed from its tokens)."""
    if garbage_seed is not None:  # padding filled with large noise must change nothing
        rng = np.random.default_rng(garbage_seed)
        batch = {k: np.array(v) for k, v in batch.items()}
        pad = batch["segment_ids"] == 0
        for key in ("latents", "noise"):
            batch[key][pad] = 100 * rng.normal(size=batch[key][pad].shape)
        batch["t"][pad] = rng.uniform(size=pad.sum())
        batch["coords"][pad] = rng.integers(0, 50, size=(pad.sum(), 3))
    v, loss_per_segment = _forward_jit(_random_params(), batch)
    v, loss_per_segment = np.asarray(v), np.asarray(loss_per_segment)
    results = []
    for sample, p, v_i in zip(SAMPLES, placements, unpack(v, placements), strict=True):
        target = sample["noise"] - sample["latents"]
        generated = ~sample["cond_mask"]  # given tokens carry no loss
        error = np.square(v_i.astype(np.float64) - target)[generated]
        naive = np.mean(error)  # independent of the packer
        results.append((v_i, loss_per_segment[p.row, p.segment - 1], naive))
    return results


def _alone():
    """Every sample in its own padded row (stacked to the same (ROWS, L) shape: one compile)."""
    rows = [pack_samples([s], L, S, num_rows=1) for s in SAMPLES]
    batch = {k: np.concatenate([r[0][k] for r in rows]) for k in rows[0][0]}
    placements = [dataclasses.replace(r[1][0], row=i) for i, r in enumerate(rows)]
    return batch, placements


def _packed(order):
    """SAMPLES packed first-fit in `order`; placements returned in SAMPLES order."""
    batch, placements = pack_samples([SAMPLES[i] for i in order], L, S, ROWS)
    by_sample = dict(zip(order, placements, strict=True))
    return batch, [by_sample[i] for i in range(len(SAMPLES))]


ORDERS = [(0, 1, 2, 3), (3, 2, 1, 0), (1, 3, 0, 2)]


def test_output_and_loss_of_a_sample_do_not_depend_on_its_row():
    alone = _per_sample(*_alone())
    for v, loss, naive in alone:
        assert np.abs(v).max() > 1e-2  # random params: a real, non-zero prediction
        np.testing.assert_allclose(loss, naive, rtol=1e-5)

    layouts = {order: _packed(order) for order in ORDERS}
    # Each order puts the samples at different (row, start): other neighbours, other offsets.
    where = {order: tuple((p.row, p.start) for p in layouts[order][1]) for order in ORDERS}
    assert len(set(where.values())) == len(ORDERS), where

    worst_v = worst_loss = 0.0
    for batch, placements in layouts.values():
        for seed in (None, 7):
            packed = _per_sample(batch, placements, garbage_seed=seed)
            for (v0, loss0, _), (v, loss, naive) in zip(alone, packed, strict=True):
                np.testing.assert_allclose(v, v0, atol=1e-5, rtol=1e-5)
                np.testing.assert_allclose(loss, loss0, atol=1e-5, rtol=1e-5)
                np.testing.assert_allclose(loss, naive, rtol=1e-5)
                worst_v = max(worst_v, float(np.abs(v - v0).max()))
                worst_loss = max(worst_loss, abs(float(loss) - float(loss0)))
    print(f"max |v packed - v alone| = {worst_v:.3g}, max |loss diff| = {worst_loss:.3g}")


def test_windowed_attention_keeps_every_sample_as_it_is_alone():
    # One row of 64 tokens holds all four samples (42 tokens); the largest has 18, so
    # self-attention runs in windows of 54 keys, not 64, and must change nothing.
    alone = _per_sample(*_alone())
    batch, placements = pack_samples([SAMPLES[i] for i in (2, 0, 3, 1)], 64, 4, num_rows=1)
    placements = [placements[(2, 0, 3, 1).index(i)] for i in range(len(SAMPLES))]
    v, loss = _forward_jit(_random_params(), batch, window=18)
    for (v0, loss0, _), p, v_i in zip(alone, placements, unpack(v, placements), strict=True):
        np.testing.assert_allclose(v_i, v0, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(loss[p.row, p.segment - 1], loss0, atol=1e-5, rtol=1e-5)


def test_pack_samples_accepts_jax_arrays_and_sizes_rows_to_fit():
    # jnp arrays (as patchify returns) are accepted as well as numpy.
    sample = dict(SAMPLES[0], latents=jnp.asarray(SAMPLES[0]["latents"]))
    batch, (p,) = pack_samples([sample], L, S)
    assert batch["latents"].shape == (1, L, CONFIG.patch_features) and p == Placement(0, 1, 0, 12)
