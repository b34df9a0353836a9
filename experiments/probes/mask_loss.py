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

import jax.numpy as jnp
import numpy as np

from soraj.data.frame_masks import MASK_TYPES, given_frames
from soraj.eval.validation_loss import heldout_clips, velocity_loss_fn
from soraj.generate import Generator

TIMES = (0.25, 0.5, 0.75)


def mask_batches(generator, clips: int, seed: int = 11) -> dict:
    """Per mask type, the same `clips` held-out clips (one per row) with that type's given
    tokens, drawn once per type."""
    plain = heldout_clips(generator, clips, 9, 32, 32, seed)
    latent_frames = generator.codec.latent_shape(9, 32, 32)[0]
    batches = {}
    for m, name in enumerate(MASK_TYPES):
        if name in ("text_to_video", "independent"):
            continue
        rng = np.random.default_rng((seed, m))
        given = [given_frames(name, latent_frames, rng)[coords[:, 0]] for coords in plain["coords"]]
        batches[name] = dict(plain, given=np.stack(given))
    batches["text_to_video"] = plain
    return batches


def validation_losses(generator, batches) -> dict:
    loss_at = velocity_loss_fn(generator)
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
        batches = mask_batches(generator, args.clips)
        results[checkpoint] = validation_losses(generator, batches)
        print(checkpoint, json.dumps(results[checkpoint], indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"clips": args.clips, "losses": results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
