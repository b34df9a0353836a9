"""The VAE ceiling of the shapes probe, split by motion and by object count: ground-truth
held-out clips through each VAE and back, scored by the probe, separately for clips whose
objects all stay still and clips with a moving object, and by the number of objects, with the
PSNR of every frame position. A VAE that compresses time has to
place a moving object in each of the frames one latent frame covers; this shows what it loses.

    .venv/bin/python experiments/shapes/vae_ceilings.py \\
        --vae experiments/shapes/checkpoint/vae@32 experiments/shapes/runs/vae64_t2@64 \\
        --out experiments/shapes/results/vae_ceilings.json

Each --vae is PATH@SIZE: the VAE export and the square canvas its clips are rendered at.
"""

import argparse
import json
from pathlib import Path

import jax
import numpy as np

from soraj.data.shapes import STILL, ShapesSource, parse_dense_caption
from soraj.eval.bootstrap import bootstrap_interval
from soraj.eval.shapes_probe import score_video
from soraj.models.latent_codec import LatentCodec

FRAMES = 9


def ceiling(vae: str, size: int, clips: int, seed: int) -> dict:
    codec = LatentCodec.load(vae)
    source = ShapesSource(clips, FRAMES, size, size, seed=seed, split="heldout")
    examples = [source[i] for i in range(clips)]
    videos = np.stack([e["video"] for e in examples])
    round_trip = jax.jit(lambda v: codec.decode(codec.params, codec.encode(codec.params, v)))
    rebuilt = np.concatenate(
        [np.asarray(round_trip(videos[i : i + 25])) for i in range(0, clips, 25)]
    )
    scores = [score_video(v, e["caption"]) for v, e in zip(rebuilt, examples, strict=True)]
    still = np.array(
        [
            all(o.motion == STILL for o in parse_dense_caption(e["caption"]).objects)
            for e in examples
        ]
    )
    fully_right = np.array([s["fully_right"] for s in scores])
    objects = np.array([len(parse_dense_caption(e["caption"]).objects) for e in examples])
    squared = ((rebuilt.astype(np.float64) - videos.astype(np.float64)) ** 2).mean(
        axis=(0, 2, 3, 4)
    )
    rng = np.random.default_rng(0)
    return {
        "vae": vae,
        "canvas": size,
        "clips": clips,
        "fully_right": float(fully_right.mean()),
        "fully_right_ci95": bootstrap_interval(fully_right, rng),
        "by_attribute": {
            key: float(np.mean([s[key] for s in scores]))
            for key in ("present", "shape", "size", "motion", "background")
        },
        "still_clips": int(still.sum()),
        "fully_right_still": float(fully_right[still].mean()),
        "fully_right_moving": float(fully_right[~still].mean()),
        "fully_right_by_objects": {
            int(n): float(fully_right[objects == n].mean()) for n in np.unique(objects)
        },
        "psnr_by_frame": [float(10 * np.log10(255**2 / e)) for e in squared],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vae", nargs="+", required=True, metavar="PATH@SIZE")
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = []
    for item in args.vae:
        path, _, size = item.rpartition("@")
        if not path or not size.isdigit():
            parser.error(f"--vae takes PATH@SIZE (e.g. experiments/shapes/runs/vae@64), got {item}")
        results.append(ceiling(path, int(size), args.clips, args.seed))
        row = results[-1]
        print(
            f"{path}@{size}: fully right {row['fully_right']:.3f} "
            f"[{row['fully_right_ci95'][0]:.3f}, {row['fully_right_ci95'][1]:.3f}], still "
            f"{row['fully_right_still']:.3f} ({row['still_clips']} clips), moving "
            f"{row['fully_right_moving']:.3f}; PSNR by frame "
            + " ".join(f"{p:.1f}" for p in row["psnr_by_frame"]),
            flush=True,
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"seed": args.seed, "results": results}, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
