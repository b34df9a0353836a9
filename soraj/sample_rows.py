"""The one sampler every generation path calls: packed rows of requests (docs/architecture.md
§4), one Euler solve with batched classifier-free guidance, each request on the time grid its
training used. Text and class models, single prompts and packed sets of prompts all come
here."""

import functools

import jax
import jax.numpy as jnp

from soraj.diffusion.sampling import cfg_velocity_batched, dual_guidance_batched, euler_sample
from soraj.models.conditioning import TextConfig, text_states
from soraj.models.dit import DiT
from soraj.sampling_progress import report_step


def guided_conditioning(
    params, rows: dict, dit: DiT, text_config: TextConfig, branches: int = 2
) -> dict:
    """The DiT's conditioning inputs for the guidance batch: rows [0, B) as requested, the
    `branches` − 1 copies after them unconditioned (the null text in every segment slot, or
    the null label)."""
    if dit.config.conditioning == "class":
        labels = rows["labels"]  # (B, S)
        null = jnp.full_like(labels, dit.config.num_classes)
        return {"labels": jnp.concatenate([labels, *[null] * (branches - 1)])}  # (nB, S)
    text, text_mask = rows["text"], rows["text_mask"]  # (B, S, M, E), (B, S, M)
    null_text = jnp.broadcast_to(rows["null_text"], text.shape)
    null_mask = jnp.broadcast_to(rows["null_mask"], text_mask.shape)
    text_all = jnp.concatenate([text, *[null_text] * (branches - 1)])  # (nB, S, M, E)
    mask_all = jnp.concatenate([text_mask, *[null_mask] * (branches - 1)])  # (nB, S, M)
    states, mask_all = text_states(text_config, params.get("text"), text_all, mask_all)
    # The text's projections and cross-attention keys and values depend on neither x_t nor
    # t: XLA hoists them out of the Euler loop, so they run once per generation
    # (tests/test_sample_rows.py checks the compiled loop).
    return {"text": states, "text_mask": mask_all}


@functools.partial(
    jax.jit, static_argnames=("dit", "text_config", "num_steps", "window", "report_steps")
)
def sample_rows(
    params,
    rows: dict,
    guidance,
    *,
    dit: DiT,
    text_config: TextConfig,
    num_steps: int,
    window: int | None = None,
    report_steps: bool = False,
):
    """Noise → clean latent tokens (B, L, P), zero at padding.

    rows: noise f32 (B, L, P), coords i32 (B, L, 3), segment_ids i32 (B, L) (0: padding),
    shift f32 (B, L) (each token's request's TimeShift), and for a text model text
    (B, S, M, E), text_mask (B, S, M), null_text (M, E), null_mask (M); for a class model
    labels i32 (B, S). params holds "dit" (and "text" for a trainable text encoder).
    The prompting modes add reference f32 (B, L, P) and level f32 (B, L) (euler_sample's
    x_ref and c) and visual bool (B, L), the tokens that are a visual condition; guidance
    is then (text scale, visual scale) (dual_guidance_batched), else the text scale.
    window: no request has more tokens than this (DiT's max_segment_tokens), or None.
    report_steps: each finished Euler step calls back to the host, moving the open
    soraj.sampling_progress.StepProgress bar (a separate compile; off, nothing is added).
    """
    dual = "visual" in rows
    branches = 3 if dual else 2
    conditioning = guided_conditioning(params, rows, dit, text_config, branches)
    coords = jnp.concatenate([rows["coords"]] * branches)  # (nB, L, 3)
    segment_ids = jnp.concatenate([rows["segment_ids"]] * branches)  # (nB, L)

    def all_branches(x_t, t):  # rows [0, B) conditioned, the rest unconditioned
        return dit.apply(
            {"params": params["dit"]},
            x_t,
            t,
            coords,
            segment_ids,
            **conditioning,
            max_segment_tokens=window,
        )

    noise = rows["noise"]
    # Padding is given as zero (level 0), so it stays inert however many steps run; the
    # model keeps it from touching real tokens, which follow the same path as alone.
    real = rows["segment_ids"] > 0  # (B, L)
    level = jnp.where(real, rows.get("level", jnp.ones(real.shape, jnp.float32)), 0.0)
    reference = jnp.where(real[..., None], rows.get("reference", jnp.zeros_like(noise)), 0.0)
    if dual:
        text_scale, visual_scale = guidance[0], guidance[1]
        visual = rows["visual"] & real
        velocity_fn = dual_guidance_batched(all_branches, text_scale, visual_scale, visual, noise)
    else:
        velocity_fn = cfg_velocity_batched(all_branches, guidance)
    on_step = report_step if report_steps else None
    return euler_sample(velocity_fn, noise, num_steps, rows["shift"], reference, level, on_step)
