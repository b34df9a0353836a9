"""What each run trains on, and the ceiling its samples can reach: framing and probe scores of
the native wide/tall training clips and of their centre square crops (the crop run's clips),
as rendered and after a round trip through the VAE, against the clips' captions.

    .venv/bin/python experiments/native_vs_crop/training_framing.py \\
        > experiments/native_vs_crop/results/training_framing.json
"""

import argparse
import json

import jax
import numpy as np

from soraj.data.shapes_canvases import ShapesCanvasSource
from soraj.eval.framing import framing_scores
from soraj.eval.shapes_probe import score_videos
from soraj.models.latent_codec import LatentCodec

CANVASES = ((32, 64), (64, 32))


def centre_square(video, side):
    """The centre side×side crop of a (T, H, W, 3) clip."""
    top, left = (video.shape[1] - side) // 2, (video.shape[2] - side) // 2
    return video[:, top : top + side, left : left + side]


def round_trips(codec, videos, batch=25):
    """VAE encode → decode of each clip, batched by clip shape, in the input order."""
    round_trip = jax.jit(lambda v: codec.decode(codec.params, codec.encode(codec.params, v)))
    out = [None] * len(videos)
    for shape in {v.shape for v in videos}:
        indices = [i for i, v in enumerate(videos) if v.shape == shape]
        for start in range(0, len(indices), batch):
            chunk = indices[start : start + batch]
            decoded = np.asarray(round_trip(np.stack([videos[i] for i in chunk])))
            for i, video in zip(chunk, decoded, strict=True):
                out[i] = video
    return out


def scores(videos, captions):
    framing = framing_scores(videos, captions)
    framing.pop("per_video")
    return {"framing": framing, "probe": score_videos(videos, captions)}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-clips", type=int, default=300)
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--vae", default="experiments/shapes/checkpoint/vae")
    args = parser.parse_args()
    codec = LatentCodec.load(args.vae)
    source = ShapesCanvasSource(args.num_clips, CANVASES, num_frames=9, seed=0)
    examples = [source[index] for index in range(len(source))]
    captions = [e["caption"] for e in examples]
    results = {"num_clips": args.num_clips, "canvases": CANVASES, "side": args.side}
    for name, videos in (
        ("native", [e["video"] for e in examples]),
        ("crop", [centre_square(e["video"], args.side) for e in examples]),
    ):
        results[name] = scores(videos, captions)
        results[f"{name}_through_vae"] = scores(round_trips(codec, videos), captions)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
