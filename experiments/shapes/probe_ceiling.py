"""The shapes probe on ground-truth clips and on their VAE reconstructions: the ceiling any DiT
sampled through this VAE can reach.

    .venv/bin/python experiments/shapes/probe_ceiling.py --vae experiments/shapes/checkpoint/vae
"""

import argparse
import json

import jax
import numpy as np

from soraj.data.shapes import ShapesSource
from soraj.eval.shapes_probe import score_videos
from soraj.models.latent_codec import LatentCodec


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vae", required=True)
    parser.add_argument("--num-clips", type=int, default=100)
    parser.add_argument("--split", default="heldout")
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--size", type=int, default=32, help="canvas height and width")
    args = parser.parse_args()
    codec = LatentCodec.load(args.vae)
    source = ShapesSource(
        args.num_clips, args.frames, args.size, args.size, seed=1234, split=args.split
    )
    clips = [source[i] for i in range(len(source))]
    videos = np.stack([c["video"] for c in clips])
    captions = [c["caption"] for c in clips]
    round_trip = jax.jit(lambda v: codec.decode(codec.params, codec.encode(codec.params, v)))
    reconstructions = np.concatenate(
        [np.asarray(round_trip(videos[i : i + 25])) for i in range(0, len(videos), 25)]
    )
    result = {
        "ground_truth": score_videos(videos, captions),
        "vae_reconstruction": score_videos(reconstructions, captions),
        "split": args.split,
        "clip": [args.frames, args.size, args.size],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
