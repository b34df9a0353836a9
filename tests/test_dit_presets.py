"""DiT presets (param counts against a closed form and the DiT paper) and class conditioning."""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soraj.models.dit import DIT_PRESETS, MODULATIONS, DiT, DiTConfig, class_conditional
from soraj.models.patching import patchify

FREQ = 256  # the timestep sinusoid width fed to t_embedder
NUM_CLASSES = 1000  # ImageNet, as in the DiT paper


def closed_form_params(cfg: DiTConfig) -> int:
    """The parameter count of soraj's DiT, derived by hand from its block structure.

    D width, K head dim, H = mlp_ratio·D, P patch features, E text width. Every Dense has a bias.
      attention (q, k, v, out; qk-RMSNorm scales):  4(D² + D) + 2K
      block:  adaLN 6D² + 6D (adaLN-single: a 6 × D table),  self-attention,
              [text: cross-attention],  MLP 2DH + H + D
      embed:  patch P·D + D,  timestep 256·D + D + D² + D,
              text: projection E·D + D and pooled projection D² + D  |  class: (classes + 1)·D,
              adaLN-single: the shared modulation 6D² + 6D
      final:  adaLN 2D² + 2D (adaLN-single: a 2 × D table),  projection D·P + P
    """
    D, K, P, E = cfg.width, cfg.head_dim, cfg.patch_features, cfg.text_width
    H = int(D * cfg.mlp_ratio)
    attention = 4 * (D * D + D) + 2 * K
    single = cfg.modulation == "single"
    block_modulation = 6 * D if single else 6 * D * D + 6 * D
    block = block_modulation + attention + (2 * D * H + H + D)
    if cfg.conditioning == "text":
        block += attention
        cond = (E * D + D) + (D * D + D)
    else:
        cond = (cfg.num_classes + 1) * D
    embed = (P * D + D) + (FREQ * D + D + D * D + D) + cond + (6 * D * D + 6 * D if single else 0)
    final = (2 * D if single else 2 * D * D + 2 * D) + (D * P + P)
    return embed + cfg.depth * block + final


def _abstract_param_count(cfg: DiTConfig) -> int:
    """Params counted from shapes only (jax.eval_shape): the big presets are never built."""
    B, L, S = 1, 4, 1
    x = jax.ShapeDtypeStruct((B, L, cfg.patch_features), jnp.float32)
    t = jax.ShapeDtypeStruct((B, L), jnp.float32)
    coords = jax.ShapeDtypeStruct((B, L, 3), jnp.int32)
    seg = jax.ShapeDtypeStruct((B, L), jnp.int32)
    if cfg.conditioning == "text":
        cond = dict(
            text=jax.ShapeDtypeStruct((B, S, 3, cfg.text_width), jnp.float32),
            text_mask=jax.ShapeDtypeStruct((B, S, 3), jnp.bool_),
        )
    else:
        cond = dict(labels=jax.ShapeDtypeStruct((B, S), jnp.int32))
    init = DiT(cfg).init
    shapes = jax.eval_shape(
        lambda *args, **kwargs: nn.unbox(init(jax.random.key(0), *args, **kwargs)),
        x,
        t,
        coords,
        seg,
        **cond,
    )
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))


def _class_mode(cfg: DiTConfig) -> DiTConfig:
    return class_conditional(cfg, NUM_CLASSES)


# ---- Presets ----


def test_preset_table_has_the_dit_paper_sizes_with_patches_2_4_8():
    sizes = {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}
    for size, (width, depth, heads) in sizes.items():
        for patch in (2, 4, 8):
            cfg = DIT_PRESETS[f"{size}/{patch}"]
            assert (cfg.width, cfg.depth, cfg.num_heads) == (width, depth, heads)
            assert cfg.patch_size == (1, patch, patch) and cfg.conditioning == "text"
    # A shipped checkpoint depends on tiny: it must keep exactly these fields.
    assert DIT_PRESETS["tiny"] == DiTConfig(width=192, depth=6, num_heads=3)
    assert set(DIT_PRESETS) == {"tiny"} | {f"{s}/{p}" for s in sizes for p in (2, 4, 8)}


@pytest.mark.parametrize("name", sorted(DIT_PRESETS))
def test_text_preset_param_count_matches_closed_form(name):
    cfg = DIT_PRESETS[name]
    assert _abstract_param_count(cfg) == closed_form_params(cfg)


@pytest.mark.parametrize("modulation", MODULATIONS)
@pytest.mark.parametrize("name", ["tiny", "B/4"])
def test_every_modulation_param_count_matches_closed_form(name, modulation):
    for cfg in (DIT_PRESETS[name], _class_mode(DIT_PRESETS[name])):
        cfg = dataclasses.replace(cfg, modulation=modulation)
        assert _abstract_param_count(cfg) == closed_form_params(cfg)


@pytest.mark.parametrize("name", ["S/2", "B/4", "L/8", "XL/2"])
def test_class_preset_param_count_matches_closed_form(name):
    cfg = _class_mode(DIT_PRESETS[name])
    assert _abstract_param_count(cfg) == closed_form_params(cfg)


# The DiT paper (Peebles & Xie 2023) gives 33M, 130M, 458M and 675M for the class-conditional
# /2 models on 4-channel latents with a learned-sigma output (32 features out). Ours differ only
# by the patch input (32 features in, not 16: +16·D) and the qk-norm scales (+2K per block),
# both well under 0.1M; the paper rounds to 1M, so each must be within 0.5M.
@pytest.mark.parametrize(
    "name, published", [("S/2", 33e6), ("B/2", 130e6), ("L/2", 458e6), ("XL/2", 675e6)]
)
def test_class_preset_param_count_matches_dit_paper(name, published):
    cfg = _class_mode(DIT_PRESETS[name])
    assert cfg.patch_features == 32
    assert abs(closed_form_params(cfg) - published) <= 0.5e6


@pytest.mark.parametrize("patch", [2, 4, 8])
def test_patch_variants_give_the_right_token_counts(patch):
    cfg = DIT_PRESETS[f"B/{patch}"]
    T, H, W, C = 3, 32, 16, cfg.latent_channels
    tokens, coords = patchify(jnp.zeros((T, H, W, C)), cfg.patch_size)
    assert tokens.shape == (T * (H // patch) * (W // patch), patch * patch * C)
    assert tokens.shape[1] == cfg.patch_features
    assert coords[-1].tolist() == [T - 1, H // patch - 1, W // patch - 1]


# ---- Class conditioning ----

SMALL = DiTConfig(
    width=32, depth=2, num_heads=2, latent_channels=2, conditioning="class", num_classes=5
)
P, L, S = SMALL.patch_features, 16, 2


def _row(samples, rng):
    """Pack (grid, label) samples into one row; padding and unused label slots are garbage."""
    x = rng.normal(size=(L, P)).astype(np.float32) * 100
    t = rng.uniform(size=L).astype(np.float32)
    coords = np.zeros((L, 3), np.int32)
    seg = np.zeros(L, np.int32)
    labels = rng.integers(0, SMALL.num_classes + 1, size=S).astype(np.int32)
    pos = 0
    for i, (tokens, times, grid, label) in enumerate(samples):
        n = len(tokens)
        x[pos : pos + n], t[pos : pos + n] = tokens, times
        coords[pos : pos + n] = np.stack(
            np.meshgrid(*map(np.arange, grid), indexing="ij"), -1
        ).reshape(-1, 3)
        seg[pos : pos + n], labels[i] = i + 1, label
        pos += n
    return x, t, coords, seg, labels


def _sample(seed, grid, label):
    rng = np.random.default_rng(seed)
    n = math.prod(grid)
    return (
        rng.normal(size=(n, P)).astype(np.float32),
        rng.uniform(size=n).astype(np.float32),
        grid,
        label,
    )


IMAGE = _sample(1, (1, 2, 3), label=2)  # T = 1: 6 tokens
CLIP = _sample(2, (2, 2, 2), label=4)  # 8 tokens


def _rows(*rows):
    rng = np.random.default_rng(0)
    x, t, coords, seg, labels = (
        np.stack(a) for a in zip(*(_row(r, rng) for r in rows), strict=True)
    )
    return (x, t, coords, seg), labels


def _params(batch, labels):
    """Init, then give the zero-initialised (adaLN-Zero) leaves random values so v ≠ 0."""
    init = jax.jit(DiT(SMALL).init)
    params = nn.unbox(init(jax.random.key(0), *batch, labels=labels))
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [
        0.2 * jax.random.normal(k, p.shape) if not np.any(np.asarray(p)) else p
        for k, p in zip(keys, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, leaves)


def test_class_mode_has_null_label_row_and_no_text_params():
    batch, labels = _rows([IMAGE])
    init = DiT(SMALL).init
    params = jax.eval_shape(
        lambda *a, **k: nn.unbox(init(jax.random.key(0), *a, **k)), *batch, labels=labels
    )["params"]
    assert params["label_embedder"]["embedding"].shape == (SMALL.num_classes + 1, SMALL.width)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    assert not [p for p in paths if "cross_attn" in p or "text" in p]
    assert any("self_attn" in p for p in paths)


def test_class_forward_on_images_and_clips_depends_on_own_label_only():
    null = SMALL.num_classes
    batch, labels = _rows([IMAGE], [IMAGE, CLIP], [CLIP, IMAGE])
    params = _params(batch, labels)
    apply = jax.jit(DiT(SMALL).apply)
    v = np.asarray(apply(params, *batch, labels=labels))
    assert v.shape == (3, L, P) and np.all(np.isfinite(v))
    n_img, n_clip = len(IMAGE[0]), len(CLIP[0])
    image_alone, image_first, image_second = (
        v[0, :n_img],
        v[1, :n_img],
        v[2, n_clip : n_clip + n_img],
    )
    # A sample's output does not depend on its row-mate or that row-mate's label.
    np.testing.assert_allclose(image_first, image_alone, atol=1e-5)
    np.testing.assert_allclose(image_second, image_alone, atol=1e-5)
    np.testing.assert_allclose(v[2, :n_clip], v[1, n_img : n_img + n_clip], atol=1e-5)
    # Changing the image's label (to another class, or to the null label) changes its output.
    for new_label in (0, null):
        relabelled = labels.copy()
        relabelled[0, 0] = new_label
        w = np.asarray(apply(params, *batch, labels=relabelled))
        assert np.abs(w[0, :n_img] - image_alone).max() > 1e-3
        np.testing.assert_array_equal(w[1:], v[1:])


def test_class_mode_input_errors():
    batch, labels = _rows([IMAGE])
    model = DiT(SMALL)
    for bad in (SMALL.num_classes + 1, -1):
        with pytest.raises(
            ValueError, match=r"labels must lie in \[0, 5\] \(5 is the null label\)"
        ):
            model.init(jax.random.key(0), *batch, labels=np.full_like(labels, bad))
    with pytest.raises(ValueError, match="takes labels"):
        model.init(jax.random.key(0), *batch)
    with pytest.raises(ValueError, match="labels must be integers"):
        model.init(jax.random.key(0), *batch, labels=labels.astype(np.float32))
    with pytest.raises(ValueError, match=r"labels must be \(B, S\)"):
        model.init(jax.random.key(0), *batch, labels=labels[:, :, None])
    with pytest.raises(ValueError, match="allowed: text, class"):
        DiTConfig(width=32, depth=1, num_heads=2, conditioning="image")
    with pytest.raises(ValueError, match="num_classes >= 1"):
        DiTConfig(width=32, depth=1, num_heads=2, conditioning="class")
