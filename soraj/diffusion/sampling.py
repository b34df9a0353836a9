"""ODE samplers and classifier-free guidance as functions of a velocity predictor."""

import jax
import jax.numpy as jnp

from soraj.diffusion.timesteps import check_static_count, shift_timesteps

# A velocity_fn maps (x_t (B, L, P), t (B, L)) -> v (B, L, P), v ≈ ε - x0 (docs/architecture.md §2).


# ---- Euler ODE solver ----


def euler_sample(
    velocity_fn, noise, num_steps, shift=1.0, reference=None, level=None, on_step=None
):
    """Integrates dx/dt = v from t = 1 (noise) to t = 0 (data) with Euler steps on
    `sampling_schedule(num_steps, shift)`. Rectified-flow paths are nearly straight, so
    few steps go a long way; for the exact velocity of one x0 a single step is exact.

    `shift` is a number, or f32 (B, L): each token's own shift, so packed samples of
    different sizes each follow the grid their training t was shifted with.

    Every prompting mode is a choice of each token's generation level c (`level`, f32 (B, L)
    in [0, 1]) and `reference` x_ref (B, L, P): c = 1 generates the token, c = 0 gives it
    (it stays exactly x_ref), and between is a soft condition or the SDEdit strength. The
    solve starts from x = c·ε + (1 − c)·x_ref; from t_k to t_k+1 the model sees
    τ = min(t_k, c) and x moves by (min(t_k+1, c) − τ)·v, so a token waits at its level
    until the grid passes below it. A token that does not move this step is left bitwise as
    it was, whatever the model says about it. Without `level` every token is generated. The
    loop is one `lax.fori_loop`, so velocity_fn is traced once whatever num_steps is (a
    Python int, static under jit). Returns x0 (B, L, P).

    `on_step(step, x)`, if given, is called while tracing the loop body with the traced step
    index and the x that step produced: a hook for a host callback reporting progress. It
    returns nothing, so it cannot change the solve.
    """
    check_static_count("num_steps", num_steps)
    if noise.ndim != 3:
        raise ValueError(f"noise must have shape (B, L, P), got {noise.shape}.")
    if (reference is None) != (level is None):
        raise ValueError("reference and level must be given together, or neither.")
    if level is None:
        level = jnp.ones(noise.shape[:2], jnp.float32)
        reference = jnp.zeros_like(noise)
    if reference.shape != noise.shape or level.shape != noise.shape[:2]:
        raise ValueError(
            f"reference must have shape {noise.shape} and level {noise.shape[:2]}, "
            f"got {reference.shape} and {level.shape}."
        )
    if jnp.ndim(shift) not in (0, 2) or (jnp.ndim(shift) == 2 and shift.shape != level.shape):
        raise ValueError(f"shift must be a number or (B, L) {level.shape}, got {shift!r}")

    grid = jnp.linspace(1.0, 0.0, num_steps + 1)  # (num_steps + 1,) before the shift
    shift = jnp.broadcast_to(jnp.asarray(shift, jnp.float32), level.shape)  # (B, L)
    level = jnp.clip(level.astype(jnp.float32), 0.0, 1.0)  # (B, L)
    c = level[..., None].astype(noise.dtype)  # (B, L, 1)
    x_start = c * noise + (1 - c) * reference.astype(noise.dtype)  # (B, L, P)

    def euler_step(step, x):
        t_now = jnp.minimum(shift_timesteps(grid[step], shift), level)  # (B, L)
        t_next = jnp.minimum(shift_timesteps(grid[step + 1], shift), level)  # (B, L)
        velocity = velocity_fn(x, t_now).astype(x.dtype)  # (B, L, P)
        dt = (t_next - t_now)[..., None].astype(x.dtype)  # (B, L, 1)
        # A token with dt = 0 (given, or waiting at its level) keeps its bits even if the
        # model's velocity there were not finite.
        x_next = jnp.where(dt != 0, x + dt * velocity, x)
        if on_step is not None:
            on_step(step, x_next)
        return x_next

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


def dual_guidance_batched(fn_three, text_scale, visual_scale, visual, noise):
    """Guidance on text and on a visual condition with one model call on a tripled batch
    (InstructPix2Pix, Open-Sora 1.3/2.0):

        v = v_none + visual_scale·(v_visual − v_none) + text_scale·(v_full − v_visual)

    `fn_three(x (3B, L, P), t (3B, L)) -> v (3B, L, P)` must treat rows [0, B) with text,
    [B, 2B) with the null text and [2B, 3B) with the null text; the caller arranges that.
    The visual condition (`visual`, bool (B, L): the given and soft-condition tokens) is kept
    in the first two thirds and dropped in the last, by showing those tokens at t = 1 as the
    fixed `noise` (B, L, P), as training drops it. Returns velocity_fn (B rows in, B out).
    """
    hide = visual[..., None]  # (B, L, 1)

    def velocity_fn(x_t, t):
        batch = x_t.shape[0]
        x_dropped = jnp.where(hide, noise.astype(x_t.dtype), x_t)  # (B, L, P)
        t_dropped = jnp.where(visual, 1.0, t)  # (B, L)
        v_all = fn_three(
            jnp.concatenate([x_t, x_t, x_dropped], axis=0),
            jnp.concatenate([t, t, t_dropped], axis=0),
        ).astype(jnp.float32)  # (3B, L, P)
        v_full, v_visual, v_none = v_all[:batch], v_all[batch : 2 * batch], v_all[2 * batch :]
        return v_none + visual_scale * (v_visual - v_none) + text_scale * (v_full - v_visual)

    return velocity_fn
