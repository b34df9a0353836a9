"""Several prompts at different latent shapes in one sampling call: pack, solve, unpack."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from soraj.data.packing import pack_samples, unpack
from soraj.diffusion.sampling import sample_packed
from soraj.diffusion.timesteps import check_static_count
from soraj.models import patching
from soraj.models.conditioning import TextConfig, text_states
from soraj.models.dit import DiT

# ---- Checking a set of requests ----


def check_rows(grids, row_length: int, max_segments: int) -> None:
    """Every request's patch grid must fit one row of row_length tokens."""
    if row_length < 1 or max_segments < 1:
        raise ValueError(
            f"row_length={row_length} and max_segments={max_segments} must both be >= 1"
        )
    for i, grid in enumerate(grids):
        num_tokens = int(np.prod(grid))
        if num_tokens > row_length:
            raise ValueError(
                f"request {i} has a patch grid {tuple(grid)} of {num_tokens} tokens, more than "
                f"row_length={row_length}; raise row_length to at least {num_tokens} or ask "
                "for fewer frames or pixels"
            )


# ---- The packed solve ----


@functools.partial(jax.jit, static_argnames=("dit", "text_config", "num_steps", "window"))
def sample_packed_tokens(
    params,
    batch,
    null_text,
    null_mask,
    guidance,
    *,
    dit: DiT,
    text_config,
    num_steps: int,
    window: int | None = None,
):
    """Noise in a packed batch (DESIGN.md §4 keys noise, coords, segment_ids, text, text_mask)
    → clean latent tokens (B, L, P), zero at padding. Guidance uses the null text in every
    segment slot of the doubled batch, as `generate.sample_tokens` does for single rows.
    window: no request has more tokens than this (see DiT's max_segment_tokens)."""
    text, text_mask = batch["text"], batch["text_mask"]  # (B, S, M, ...), (B, S, M)
    text_both = jnp.concatenate([text, jnp.broadcast_to(null_text, text.shape)])
    mask_both = jnp.concatenate([text_mask, jnp.broadcast_to(null_mask, text_mask.shape)])
    states, mask_both = text_states(text_config, params.get("text"), text_both, mask_both)
    coords = jnp.concatenate([batch["coords"], batch["coords"]])  # (2B, L, 3)
    segment_ids = jnp.concatenate([batch["segment_ids"], batch["segment_ids"]])  # (2B, L)

    def both(x_t, t):  # rows [0, B) conditioned, [B, 2B) on the null text
        return dit.apply(
            {"params": params["dit"]},
            x_t,
            t,
            coords,
            segment_ids,
            states,
            mask_both,
            max_segment_tokens=window,
        )

    return sample_packed(both, batch["noise"], batch["segment_ids"], guidance, num_steps)


def sample_many_tokens(
    dit: DiT,
    params,
    text_config: TextConfig,
    text,
    text_mask,
    null_text,
    null_mask,
    grids,
    seeds,
    *,
    steps: int,
    guidance: float,
    row_length: int,
    max_segments: int,
):
    """One packed Euler solve for R requests of any patch grids; returns R arrays (N_i, P).

    text (R, M, ...) / text_mask (R, M) are each request's text inputs, null_text / null_mask
    the empty prompt's (M, ...) / (M,). Request i's noise is drawn as `sample_tokens` draws it
    for one row with key(seeds[i]), so each result equals that request solved alone.
    """
    check_static_count("steps", steps)
    if not len(grids) == len(seeds) == len(text) == len(text_mask):
        raise ValueError(
            f"got {len(grids)} grids, {len(seeds)} seeds and {len(text)} texts; "
            "pass one of each per request"
        )
    check_rows(grids, row_length, max_segments)
    features = dit.config.patch_features  # P
    samples = []
    for i, (grid, seed) in enumerate(zip(grids, seeds, strict=True)):
        num_tokens = int(np.prod(grid))
        noise = jax.random.normal(jax.random.key(seed), (1, num_tokens, features))[0]  # (N, P)
        samples.append(
            dict(
                latents=np.zeros((num_tokens, features), np.float32),  # unused when sampling
                coords=np.asarray(patching.patch_coords(grid)),
                noise=np.asarray(noise),
                text=np.asarray(text[i]),
                text_mask=np.asarray(text_mask[i]),
                t=np.float32(1.0),
                grid=np.asarray(grid),
            )
        )
    batch, placements = pack_samples(samples, row_length, max_segments)
    batch = {k: batch[k] for k in ("noise", "coords", "segment_ids", "text", "text_mask")}
    tokens = sample_packed_tokens(
        params,
        batch,
        jnp.asarray(null_text),
        jnp.asarray(null_mask),
        jnp.float32(guidance),
        dit=dit,
        text_config=text_config,
        num_steps=steps,
        window=max(int(np.prod(g)) for g in grids),  # the largest request: attention windows
    )
    return unpack(tokens, placements)
