"""PSNR and SSIM against scikit-image's implementations (the independent reference)."""

import numpy as np
import pytest
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from soraj.eval.metrics import psnr, ssim


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(0)
    clean = np.stack([data.astronaut()[::8, ::8], data.chelsea()[:64, :64]])  # (2, 64, 64, 3)
    noise = rng.normal(0, 12, clean.shape)
    noisy = np.clip(clean + noise, 0, 255).astype(np.uint8)
    return clean, noisy


def test_psnr_matches_skimage(frames):
    clean, noisy = frames
    expected = peak_signal_noise_ratio(clean, noisy, data_range=255)
    assert psnr(clean, noisy) == pytest.approx(expected, rel=1e-12)
    assert psnr(clean, clean) == float("inf")


def test_ssim_matches_skimage(frames):
    clean, noisy = frames
    expected = np.mean(
        [
            structural_similarity(
                a,
                b,
                channel_axis=-1,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=True,
                data_range=255,
            )
            for a, b in zip(clean, noisy, strict=True)
        ]
    )
    assert ssim(clean, noisy) == pytest.approx(expected, abs=1e-6)
    assert ssim(clean[0], clean[0]) == pytest.approx(1.0)


def test_bad_input():
    video = np.zeros((2, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(video, video[:1])
    with pytest.raises(ValueError, match="uint8"):
        ssim(video.astype(np.float32), video.astype(np.float32))
