"""Percentile bootstrap intervals over prompts, for probe scores and paired differences."""

import numpy as np

RESAMPLES = 10_000


def bootstrap_interval(
    values, rng: np.random.Generator, level: float = 0.95, resamples: int = RESAMPLES
) -> list[float]:
    """[low, high] of the mean of `values` (one number per prompt) at the given level.

    For a paired comparison pass the per-prompt differences: the same prompts and noise in both
    runs cancel the prompts' own difficulty, which an interval per run would count twice."""
    values = np.asarray(values, np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"values must be a non-empty 1-D array, got shape {values.shape}.")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}.")
    means = values[rng.integers(len(values), size=(resamples, len(values)))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    return [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))]
