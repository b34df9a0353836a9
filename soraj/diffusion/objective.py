"""Rectified-flow (flow matching) training objective on packed rows of tokens."""

import jax.numpy as jnp

from soraj.diffusion.timesteps import check_static_count

WEIGHTINGS = ("per_sample", "per_token")


# ---- Forward process ----


def noisy_input(x0, noise, t):
    """x_t = (1 - t)·x0 + t·ε with a per-token t: (B, L) broadcast over patch features."""
    t = t[..., None].astype(x0.dtype)  # (B, L, 1)
    return (1 - t) * x0 + t * noise  # (B, L, P)


# ---- Loss ----


def flow_matching_loss(
    denoise_fn,
    x0,
    noise,
    t,
    segment_ids,
    cond_mask,
    max_segments,
    weighting="per_sample",
):
    """Velocity-prediction loss: || denoise_fn(x_t, t) - (ε - x0) ||², mean over P.

    Args:
      denoise_fn: (x_t (B, L, P), t (B, L)) -> predicted velocity (B, L, P).
      x0, noise: clean latents and Gaussian noise, (B, L, P).
      t: per-token times (B, L); a given (`cond_mask`) token is noised to its own t, which
        is 0 (clean) unless the mask curriculum noised or dropped it.
      segment_ids: (B, L), 1..S for samples, 0 for padding.
      cond_mask: bool (B, L) or None; conditioning tokens carry no loss.
      max_segments: S, a Python int (static under jit).
      weighting: "per_sample" averages each segment's tokens first, then over all segments
        in the batch, so a long clip counts as much as a short one; "per_token" averages
        over all loss-bearing tokens, so long clips dominate.

    Returns:
      (loss scalar, {"loss_per_segment": (B, S), "segment_valid": bool (B, S)}); a segment
      is valid when it has at least one loss-bearing token, and invalid entries are 0.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}.")
    check_static_count("max_segments", max_segments)
    if x0.ndim != 3 or noise.shape != x0.shape:
        raise ValueError(
            f"x0 and noise must share a (B, L, P) shape, got {x0.shape} and {noise.shape}."
        )
    for name, value in (("t", t), ("segment_ids", segment_ids), ("cond_mask", cond_mask)):
        if value is not None and value.shape != x0.shape[:2]:
            raise ValueError(f"{name} must have shape (B, L) = {x0.shape[:2]}, got {value.shape}.")

    if cond_mask is None:
        cond_mask = jnp.zeros(segment_ids.shape, bool)
    x_t = noisy_input(x0, noise, t)  # (B, L, P)
    v_pred = denoise_fn(x_t, t)  # (B, L, P)
    v_target = noise - x0  # (B, L, P)
    # Squared error in f32 whatever the compute dtype, so bf16 rounding does not bias it.
    error = jnp.mean(
        jnp.square(v_pred.astype(jnp.float32) - v_target.astype(jnp.float32)), axis=-1
    )  # (B, L)

    has_loss = (segment_ids > 0) & ~cond_mask  # (B, L)
    # `where`, not a multiply: garbage (even inf) in padding outputs must not leak in.
    error = jnp.where(has_loss, error, 0.0)  # (B, L)
    segment_numbers = jnp.arange(1, max_segments + 1)  # (S,)
    in_segment = (segment_ids[:, :, None] == segment_numbers) & has_loss[:, :, None]  # (B, L, S)
    tokens_per_segment = in_segment.sum(axis=1)  # (B, S)
    error_per_segment = jnp.sum(jnp.where(in_segment, error[:, :, None], 0.0), axis=1)  # (B, S)
    segment_valid = tokens_per_segment > 0  # (B, S)
    loss_per_segment = error_per_segment / jnp.maximum(tokens_per_segment, 1)  # (B, S)

    if weighting == "per_sample":
        loss = loss_per_segment.sum() / jnp.maximum(segment_valid.sum(), 1)
    else:
        # Tokens with ids above max_segments are excluded here too, to match per_sample.
        loss = error_per_segment.sum() / jnp.maximum(tokens_per_segment.sum(), 1)
    return loss, {"loss_per_segment": loss_per_segment, "segment_valid": segment_valid}
