"""Reconstruction metrics on uint8 videos: PSNR and SSIM (Gaussian-window SSIM of Wang et al.
2004, averaged over frames and channels), in numpy."""

import numpy as np
from scipy.ndimage import gaussian_filter


def _check_pair(reference: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    reference, test = np.asarray(reference), np.asarray(test)
    if reference.shape != test.shape:
        raise ValueError(f"videos differ in shape: {reference.shape} and {test.shape}")
    if reference.dtype != np.uint8 or test.dtype != np.uint8:
        raise ValueError(f"videos must be uint8, got {reference.dtype} and {test.dtype}")
    if reference.ndim not in (3, 4) or reference.shape[-1] != 3:
        raise ValueError(f"expected (H, W, 3) or (T, H, W, 3), got {reference.shape}")
    return reference.astype(np.float64), test.astype(np.float64)


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over all pixels (peak 255); inf for identical videos."""
    reference, test = _check_pair(reference, test)
    mse = np.mean(np.square(reference - test))
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def ssim(reference: np.ndarray, test: np.ndarray, sigma: float = 1.5) -> float:
    """Mean SSIM over frames and channels, with a Gaussian window (sigma 1.5, truncated at
    3.5 sigma) and the sample covariance, as scikit-image's gaussian_weights=True option."""
    reference, test = _check_pair(reference, test)
    frames = zip(
        reference.reshape(-1, *reference.shape[-3:]),
        test.reshape(-1, *test.shape[-3:]),
        strict=True,
    )
    return float(np.mean([_ssim_frame(a, b, sigma) for a, b in frames]))


def _ssim_frame(a: np.ndarray, b: np.ndarray, sigma: float) -> float:  # (H, W, 3) each
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    blur = lambda x: gaussian_filter(x, sigma=(sigma, sigma, 0), truncate=3.5)  # noqa: E731
    window = 2 * int(3.5 * sigma + 0.5) + 1
    correction = window**2 / (window**2 - 1)  # sample, not population, covariance
    mu_a, mu_b = blur(a), blur(b)
    var_a = (blur(a * a) - mu_a**2) * correction
    var_b = (blur(b * b) - mu_b**2) * correction
    cov = (blur(a * b) - mu_a * mu_b) * correction
    numerator = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    denominator = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    # scikit-image averages over the valid interior only: crop the window's half-width.
    pad = (window - 1) // 2
    return float((numerator / denominator)[pad:-pad, pad:-pad].mean())
