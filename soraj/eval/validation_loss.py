"""Validation loss of a DiT export on held-out Shapes clips: the flow-matching velocity loss at
fixed t over the generated tokens, with the same clips, noise and masks for every checkpoint,
so the numbers of two checkpoints compare directly."""

import jax
import jax.numpy as jnp
import numpy as np

from soraj.data.shapes import ShapesSource
from soraj.diffusion.objective import flow_matching_loss
from soraj.models import patching
from soraj.models.conditioning import segment_inputs, text_states


def heldout_clips(generator, clips: int, frames: int, height: int, width: int, seed: int = 11):
    """Held-out Shapes clips (one per row) as DiT inputs: patch tokens, coords, text and a
    noise draw; no token is given."""
    source = ShapesSource(clips, frames, height, width, seed=seed, split="heldout")
    encode = jax.jit(generator.codec.encode)
    videos = np.stack([source[i]["video"] for i in range(clips)])
    latents = np.concatenate(
        [
            np.asarray(encode(generator.codec.params, videos[i : i + 16]))
            for i in range(0, clips, 16)
        ]
    )
    patch = generator.dit.config.patch_size
    tokens, coords = jax.vmap(lambda z: patching.patchify(z, patch))(jnp.asarray(latents))
    text, text_mask = segment_inputs(
        generator.text_encoder, [source[i]["caption"] for i in range(clips)]
    )
    rng = np.random.default_rng(seed)
    return {
        "latents": np.asarray(tokens),  # (clips, N, P)
        "coords": np.asarray(coords),  # (clips, N, 3)
        "given": np.zeros(tokens.shape[:2], bool),  # (clips, N)
        "noise": rng.normal(size=tokens.shape).astype(np.float32),
        "text": text,
        "text_mask": text_mask,
    }


def velocity_loss_fn(generator):
    """A jitted (batch, t) → the mean velocity loss over the batch's generated tokens, with
    given tokens (batch["given"]) clean at t = 0."""
    dit, params = generator.dit, generator.params

    @jax.jit
    def loss_at(batch, t_value):
        states, mask = text_states(
            generator.text_config, params.get("text"), batch["text"], batch["text_mask"]
        )
        segment_ids = jnp.ones(batch["given"].shape, jnp.int32)
        t = jnp.where(batch["given"], 0.0, t_value)

        def denoise(x_t, t):
            return dit.apply(
                {"params": params["dit"]}, x_t, t, batch["coords"], segment_ids, states, mask
            )

        loss, _ = flow_matching_loss(
            denoise, batch["latents"], batch["noise"], t, segment_ids, batch["given"], 1
        )
        return loss

    return loss_at


def validation_loss(generator, batch, times) -> dict:
    """{"t=<t>": loss} at each t, and "mean" over them."""
    loss_at = velocity_loss_fn(generator)
    losses = {f"t={t}": float(loss_at(batch, jnp.float32(t))) for t in times}
    return {**losses, "mean": float(np.mean(list(losses.values())))}
