"""The latent frame fold (soraj/models/latent_codec.py): frames folded into channels causally,
checked against a loop that places every frame by hand, through the codec (encode, decode,
the memory-bounded paths, an export's record) and the bundle's geometry."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soraj import exports
from soraj.generate import BundleGeometry
from soraj.models.latent_codec import (
    LatentCodec,
    fold_frames,
    stored_frame_fold,
    unfold_frames,
)
from soraj.models.vae import VAE_PRESETS, VideoVAE

# The per-frame VAE preset, made small enough to build in a second.
PER_FRAME = dataclasses.replace(
    VAE_PRESETS["p4-frames"], base_channels=8, num_res_blocks=0, latent_channels=4
)


def naive_fold(z: np.ndarray, fold: int) -> np.ndarray:
    """Latent frame 0: frame 0 in each of the fold's channel slots; latent frame j ≥ 1: frame
    1 + (j-1)·fold + i in slot i."""
    b, t, h, w, c = z.shape
    out = np.zeros((b, 1 + (t - 1) // fold, h, w, fold * c), z.dtype)
    for slot in range(fold):
        out[:, 0, ..., slot * c : (slot + 1) * c] = z[:, 0]
    for frame in range(1, t):
        j, slot = 1 + (frame - 1) // fold, (frame - 1) % fold
        out[:, j, ..., slot * c : (slot + 1) * c] = z[:, frame]
    return out


@pytest.mark.parametrize("fold", [1, 2, 4, 8])
def test_fold_places_every_frame_as_the_loop_does_and_unfolds_exactly(fold):
    z = np.random.default_rng(fold).normal(size=(2, 1 + 2 * fold, 3, 5, 4)).astype(np.float32)
    folded = np.asarray(fold_frames(jnp.asarray(z), fold))
    np.testing.assert_array_equal(folded, naive_fold(z, fold))
    unfolded = np.asarray(unfold_frames(jnp.asarray(folded), fold))
    np.testing.assert_array_equal(unfolded[:, 1:], z[:, 1:])
    # The first frame is the mean of its copies: a float32 sum of equal values, then a divide.
    np.testing.assert_allclose(unfolded[:, 0], z[:, 0], rtol=1e-6)


def test_unfold_averages_the_first_frames_copies():
    folded = np.random.default_rng(0).normal(size=(1, 2, 2, 2, 12)).astype(np.float32)
    unfolded = np.asarray(unfold_frames(jnp.asarray(folded), 3))
    copies = folded[:, 0].reshape(1, 2, 2, 3, 4)
    np.testing.assert_allclose(unfolded[:, 0], copies.mean(axis=3), rtol=1e-6)
    np.testing.assert_array_equal(
        unfolded[:, 1:4], folded[:, 1].reshape(1, 2, 2, 3, 4).transpose(0, 3, 1, 2, 4)
    )


@pytest.fixture(scope="module")
def codecs():
    video = jnp.zeros((1, 1, 16, 16, 3))
    params = VideoVAE(PER_FRAME).init(jax.random.key(0), video)["params"]
    rng = np.random.default_rng(1)
    shift = rng.normal(size=4).astype(np.float32)
    scale = rng.uniform(0.5, 2.0, size=4).astype(np.float32)
    plain = LatentCodec(PER_FRAME, params, shift, scale)
    return plain, LatentCodec(PER_FRAME, params, shift, scale, frame_fold=4)


def clip(frames: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(1, frames, 16, 16, 3), dtype=np.uint8)


def test_folded_codec_encodes_the_per_frame_latents_folded(codecs):
    plain, folded = codecs
    assert (folded.temporal_factor, folded.latent_channels) == (4, 16)
    assert folded.latent_shape(9, 16, 16) == (3, 4, 4, 16)
    video = clip(9)
    per_frame = np.asarray(plain.encode(plain.params, video))  # (1, 9, 4, 4, 4)
    latents = np.asarray(folded.encode(folded.params, video))
    np.testing.assert_allclose(latents, naive_fold(per_frame, 4), rtol=1e-6, atol=1e-6)
    bounded = np.asarray(folded.encode_within_budget(video, 1 << 30))
    np.testing.assert_allclose(bounded, latents, rtol=1e-5, atol=1e-5)


def test_folded_codec_decodes_what_the_per_frame_codec_decodes(codecs):
    plain, folded = codecs
    per_frame = np.asarray(plain.encode(plain.params, clip(5, seed=2)))
    expected = np.asarray(plain.decode(plain.params, per_frame))
    decoded = np.asarray(folded.decode(folded.params, naive_fold(per_frame, 4)))
    np.testing.assert_array_equal(decoded, expected)
    bounded = np.asarray(folded.decode_within_budget(naive_fold(per_frame, 4), 1 << 30))
    np.testing.assert_array_equal(bounded, expected)


def test_folded_codec_refuses_clips_that_do_not_fill_whole_folds(codecs):
    _, folded = codecs
    with pytest.raises(ValueError, match=r"1 \+ 4·k .*fold 4 frames"):
        folded.latent_shape(7, 16, 16)
    with pytest.raises(ValueError, match=r"\(B, T, H, W, 16\)"):
        folded.decode(folded.params, jnp.zeros((1, 2, 4, 4, 4)))


def test_an_export_records_the_fold_and_bad_values_are_named():
    assert stored_frame_fold({}) == 1  # exports made before the fold
    assert stored_frame_fold({"latent_frame_fold": 4}) == 4
    with pytest.raises(ValueError, match=r"latent_frame_fold must be one of \(1, 2, 4, 8\), got 3"):
        stored_frame_fold({"latent_frame_fold": 3})


def test_a_bundle_with_a_folded_vae_has_the_folded_temporal_factor(codecs, tmp_path):
    plain, _ = codecs
    stored = {
        "kind": "vae",
        "vae_config": {
            **{k: getattr(PER_FRAME, k) for k in PER_FRAME.__dataclass_fields__},
        },
        "latent_shift": plain.shift.tolist(),
        "latent_scale": plain.scale.tolist(),
        "latent_frame_fold": 4,
    }
    exports.write_export(tmp_path / "vae", plain.params, stored)
    dit = {"kind": "dit", "dit_config": {"patch_size": [1, 2, 2]}}
    exports.write_export(tmp_path / "dit", {"w": np.zeros(1, np.float32)}, dit)
    geometry = BundleGeometry.read(tmp_path)
    assert geometry.temporal_factor == 4
    with pytest.raises(ValueError, match=r"1 \+ 4·k"):
        geometry.check(7, 16, 16)
    loaded = LatentCodec.load(tmp_path / "vae")
    assert (loaded.frame_fold, loaded.latent_channels) == (4, 16)
