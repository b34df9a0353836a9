"""ODE samplers and classifier-free guidance as functions of a velocity predictor."""

import jax
import jax.numpy as jnp

from soraj.diffusion.timesteps import check_static_count, shift_timesteps

# A velocity_fn maps (x_t (B, L, P), t (B, L)) -> v (B, L, P), v ≈ ε - x0 (DESIGN.md §2).


# ---- Euler ODE solver ----


def euler_sample(velocity_fn, noise, num_steps, shift=1.0, cond_x0=None, cond_mask=None):
    """Integrates dx/dt = v from t = 1 (noise) to t = 0 (data) with Euler steps on
    `sampling_schedule(num_steps, shift)`. Rectified-flow paths are nearly straight, so
    few steps go a long way; for the exact velocity of one x0 a single step is exact.

    `shift` is a number, or f32 (B, L): each token's own shift, so packed samples of
    different sizes each follow the grid their training t was shifted with.
    Tokens in `cond_mask` (bool (B, L)) are held at `cond_x0` (B, L, P) and shown to the
    model with t = 0 at every step: the per-token t that image-to-video, extension and
    loops rely on. The loop is one `lax.fori_loop`, so velocity_fn is traced once whatever
    num_steps is (a Python int, static under jit). Returns x0 (B, L, P).
    """
    check_static_count("num_steps", num_steps)
    if noise.ndim != 3:
        raise ValueError(f"noise must have shape (B, L, P), got {noise.shape}.")
    if (cond_x0 is None) != (cond_mask is None):
        raise ValueError("cond_x0 and cond_mask must be given together, or neither.")
    if cond_mask is None:
        cond_mask = jnp.zeros(noise.shape[:2], bool)
        cond_x0 = jnp.zeros_like(noise)
    if cond_x0.shape != noise.shape or cond_mask.shape != noise.shape[:2]:
        raise ValueError(
            f"cond_x0 must have shape {noise.shape} and cond_mask {noise.shape[:2]}, "
            f"got {cond_x0.shape} and {cond_mask.shape}."
        )
    if jnp.ndim(shift) not in (0, 2) or (jnp.ndim(shift) == 2 and shift.shape != cond_mask.shape):
        raise ValueError(f"shift must be a number or (B, L) {cond_mask.shape}, got {shift!r}")

    grid = jnp.linspace(1.0, 0.0, num_steps + 1)  # (num_steps + 1,) before the shift
    shift = jnp.broadcast_to(jnp.asarray(shift, jnp.float32), cond_mask.shape)  # (B, L)
    hold = cond_mask[..., None]  # (B, L, 1)
    x_start = jnp.where(hold, cond_x0.astype(noise.dtype), noise)  # (B, L, P)

    def euler_step(step, x):
        t_now = shift_timesteps(grid[step], shift)  # (B, L)
        t_next = shift_timesteps(grid[step + 1], shift)  # (B, L)
        velocity = velocity_fn(x, jnp.where(cond_mask, 0.0, t_now)).astype(x.dtype)  # (B, L, P)
        x = x + (t_next - t_now)[..., None].astype(x.dtype) * velocity  # (B, L, P)
        # Re-clamp every step: whatever the model says about given tokens is discarded.
        return jnp.where(hold, x_start, x)

    return jax.lax.fori_loop(0, num_steps, euler_step, x_start)


# ---- Classifier-free guidance ----


def classifier_free_guidance(cond_fn, uncond_fn, scale):
    """Returns velocity_fn computing v_u + scale·(v_c - v_u): scale 1 is the conditional
    model, 0 the unconditional, > 1 extrapolates away from the unconditional."""

    def velocity_fn(x_t, t):
        v_cond = cond_fn(x_t, t).astype(jnp.float32)  # (B, L, P)
        v_uncond = uncond_fn(x_t, t).astype(jnp.float32)  # (B, L, P)
        return v_uncond + scale * (v_cond - v_uncond)

    return velocity_fn


def cfg_velocity_batched(fn_both, scale):
    """Classifier-free guidance with one model call on a doubled batch.

    `fn_both(x (2B, L, P), t (2B, L)) -> v (2B, L, P)` must treat rows [0, B) as
    conditioned and rows [B, 2B) as unconditioned: the caller arranges its conditioning
    (e.g. text states concatenated with the null text along B) in that order. One call
    of batch 2B instead of two of batch B reads the weights once and fills the
    accelerator better, and is what to use unless memory forbids it.
    Returns velocity_fn (B rows in, B rows out) equal to `classifier_free_guidance`.
    """

    def velocity_fn(x_t, t):
        batch = x_t.shape[0]
        v_both = fn_both(
            jnp.concatenate([x_t, x_t], axis=0), jnp.concatenate([t, t], axis=0)
        ).astype(jnp.float32)  # (2B, L, P)
        v_cond, v_uncond = v_both[:batch], v_both[batch:]  # (B, L, P) each
        return v_uncond + scale * (v_cond - v_uncond)

    return velocity_fn
