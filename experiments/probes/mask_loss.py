"""Validation loss per mask type: held-out Shapes clips, each mask type of the curriculum
(soraj/data/frame_masks.py) drawn per clip, the generated frames at fixed t and the given
frames clean, the velocity loss over generated tokens only. The same clips, masks, noise and
t for every checkpoint given, so the numbers compare directly.

    .venv/bin/python experiments/probes/mask_loss.py --checkpoints OLD NEW --clips 64 \
        --out experiments/probes/results/mask_loss.json
"""

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from soraj.data.frame_masks import MASK_TYPES, given_frames
from soraj.data.shapes import ShapesSource
from soraj.diffusion.objective import flow_matching_loss
from soraj.generate import Generator
from soraj.models import patching
from soraj.models.conditioning import segment_inputs, text_states

TIMES = (0.25, 0.5, 0.75)


def mask_batches(codec, text_encoder, clips: int, seed: int = 11) -> dict:
    """Per mask type, a batch of `clips` held-out clips (one per row): latents, coords, the
    given-token mask, text and noise, drawn once."""
    source = ShapesSource(clips, 9, 32, 32, seed=seed, split="heldout")
    encode = jax.jit(codec.encode)
    latents = np.asarray(encode(codec.params, np.stack([source[i]["video"] for i in range(clips)])))
    text, text_mask = segment_inputs(text_encoder, [source[i]["caption"] for i in range(clips)])
    batches = {}
    for m, name in enumerate(MASK_TYPES):
        if name in ("text_to_video", "independent"):
            continue
        rng = np.random.default_rng((seed, m))
        tokens, coords, given = [], [], []
        for clip in latents:
            t, c = patching.patchify(jnp.asarray(clip), (1, 2, 2))
            frames = given_frames(name, clip.shape[0], rng)
            tokens.append(np.asarray(t))
            coords.append(np.asarray(c))
            given.append(frames[np.asarray(c)[:, 0]])
        batches[name] = {
            "latents": np.stack(tokens),
            "coords": np.stack(coords),
            "given": np.stack(given),
            "noise": rng.normal(size=np.shape(tokens)).astype(np.float32),
            "text": text,
            "text_mask": text_mask,
        }
    tokens = batches["first_frame"]
    batches["text_to_video"] = dict(tokens, given=np.zeros_like(tokens["given"]))
    return batches


def validation_losses(generator, batches) -> dict:
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

    return {
        name: {f"t={t}": float(loss_at(batch, jnp.float32(t))) for t in TIMES}
        for name, batch in batches.items()
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoints", nargs="+", default=["experiments/shapes/checkpoint"])
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument(
        "--out", type=Path, default=Path("experiments/probes/results/mask_loss.json")
    )
    args = parser.parse_args()
    results = {}
    for checkpoint in args.checkpoints:
        generator = Generator.load(checkpoint)
        batches = mask_batches(generator.codec, generator.text_encoder, args.clips)
        results[checkpoint] = validation_losses(generator, batches)
        print(checkpoint, json.dumps(results[checkpoint], indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"clips": args.clips, "losses": results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
