"""Several prompts at different latent shapes in one sampling call: pack, solve, unpack."""

import jax
import jax.numpy as jnp
import numpy as np

from soraj.data.packing import pack_samples, unpack
from soraj.diffusion.timesteps import TimeShift, check_static_count
from soraj.models import patching
from soraj.models.conditioning import TextConfig
from soraj.models.dit import DiT
from soraj.sample_rows import sample_rows

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


def sample_many_tokens(
    dit: DiT,
    params,
    text_config: TextConfig,
    time_shift: TimeShift,
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
    the empty prompt's (M, ...) / (M,). Request i's noise is drawn as `request_noise` draws
    it with key(seeds[i]), so each result equals that request solved alone; each request's
    time grid is shifted as training shifted a sample of its token count (time_shift).
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
        noise = request_noise(seed, 1, num_tokens, features)[0]  # (N, P)
        samples.append(
            dict(
                latents=np.zeros((num_tokens, features), np.float32),  # unused when sampling
                coords=np.asarray(patching.patch_coords(grid)),
                noise=np.asarray(noise),
                text=np.asarray(text[i]),
                text_mask=np.asarray(text_mask[i]),
                t=np.float32(time_shift.for_tokens(num_tokens)),  # packed as "shift" below
                grid=np.asarray(grid),
            )
        )
    batch, placements = pack_samples(samples, row_length, max_segments)
    rows = {k: batch[k] for k in ("noise", "coords", "segment_ids", "text", "text_mask")}
    # pack_samples spreads each request's scalar "t" over its tokens: here its shift.
    shift = np.where(batch["segment_ids"] > 0, batch["t"], 1.0)  # padding: any finite shift
    rows |= {"shift": shift, "null_text": null_text, "null_mask": null_mask}
    tokens = sample_rows(
        params,
        jax.tree.map(jnp.asarray, rows),
        jnp.float32(guidance),
        dit=dit,
        text_config=text_config,
        num_steps=steps,
        window=max(int(np.prod(g)) for g in grids),  # the largest request: attention windows
    )
    return unpack(tokens, placements)


def request_noise(seed: int, batch: int, num_tokens: int, features: int) -> jax.Array:
    """The starting noise (batch, N, P) of a request: a pure function of its seed, so a
    request packed with others starts where it would alone."""
    return jax.random.normal(jax.random.key(seed), (batch, num_tokens, features))
