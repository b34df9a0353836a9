"""A picture of where a Shapes VAE's round trip fails the probe: for the first held-out clips
whose reconstruction is not fully right, the truth (top) and the round trip (below), frame by
frame.

    .venv/bin/python experiments/shapes/vae_failures.py --vae experiments/shapes/runs/vae64_t2 \\
        --out experiments/shapes/results/vae64_t2_failures.png
"""

import argparse
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from soraj.data.shapes import ShapesSource
from soraj.eval.shapes_probe import score_video
from soraj.models.latent_codec import LatentCodec


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vae", required=True)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--clips", type=int, default=40, help="held-out clips to look through")
    parser.add_argument("--show", type=int, default=5, help="failures to draw")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    codec = LatentCodec.load(args.vae)
    source = ShapesSource(args.clips, 9, args.size, args.size, seed=args.seed, split="heldout")
    examples = [source[i] for i in range(args.clips)]
    videos = np.stack([e["video"] for e in examples])
    round_trip = jax.jit(lambda v: codec.decode(codec.params, codec.encode(codec.params, v)))
    rebuilt = np.asarray(round_trip(videos))
    rows = []
    for truth, clip, example in zip(videos, rebuilt, examples, strict=True):
        scores = score_video(clip, example["caption"])
        if scores["fully_right"] < 1 and len(rows) < args.show:
            wrong = [k for k in ("present", "shape", "size", "motion") if scores[k] < 1]
            print(f"{example['caption']} — wrong: {', '.join(wrong)}")
            rows.append(np.concatenate([np.concatenate(list(v), axis=1) for v in (truth, clip)]))
    if not rows:
        print(f"every one of the {args.clips} clips is fully right through {args.vae}")
        return
    picture = np.concatenate(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
