"""Accuracy of a captioner export on Shapes clips, read exactly with the caption grammar.

Dense mode: each caption is parsed (soraj.data.shapes.parse_dense_caption) and compared with
the clip's scene attribute by attribute, objects in any order (soraj/captions/accuracy.py).
Short mode: the caption must be "<colour> <shape>[ and <colour> <shape>]" naming exactly the
clip's objects. Held-out clips hold a colour-shape pair training never showed; training-
distribution clips come from another seed than the training clips.

  .venv/bin/python experiments/captioner/evaluate.py \
      --checkpoint experiments/shapes/checkpoint/captioner --clips 1000 \
      --out experiments/captioner/results/accuracy.json
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from soraj.captions.accuracy import caption_accuracy
from soraj.captions.captioner import Captioner
from soraj.data.shapes import ShapesSource, parse_dense_caption, short_caption

SEED = 9_100_003  # neither the training clips' seed (0) nor the trainer's held-out seed


def clips_of(split: str, n: int):
    source = ShapesSource(n, 9, 32, 32, seed=SEED, split=split)
    return [source[i] for i in range(n)]


def caption_all(captioner, clips, mode, beam, batch=100):
    captions, seconds = [], 0.0
    for start in range(0, len(clips), batch):
        videos = np.stack([clip["video"] for clip in clips[start : start + batch]])
        chunk, elapsed = captioner.timed_caption(videos, mode, beam)
        captions, seconds = captions + chunk, seconds + elapsed
    return captions, seconds


def short_exact(captions, scenes) -> float:
    """The short caption names the clip's (colour, shape) pairs exactly, in any order."""
    right = []
    for caption, scene in zip(captions, scenes, strict=True):
        said = sorted(caption.lower().rstrip(".").split(" and "))
        right.append(said == sorted(short_caption(scene).split(" and ")))
    return float(np.mean(right))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="experiments/shapes/checkpoint/captioner")
    parser.add_argument("--clips", type=int, default=500)
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--out", default="experiments/captioner/results/accuracy.json")
    args = parser.parse_args()
    captioner = Captioner.load(args.checkpoint)
    results = {"settings": vars(args)}
    for split in ("heldout", "train"):
        clips = clips_of(split, args.clips)
        scenes = [parse_dense_caption(clip["caption"]) for clip in clips]
        for mode, beam in (("dense", 1), ("dense", args.beam), ("short", 1)):
            start = time.perf_counter()
            captions, seconds = caption_all(captioner, clips, mode, beam)
            if mode == "dense":
                scores = caption_accuracy(captions, scenes)
            else:
                scores = {"exact": short_exact(captions, scenes), "clips": len(clips)}
            key = f"{split} {mode} beam={beam}"
            results[key] = {
                **scores,
                "clips_per_s": len(clips) / seconds,
                "wall_s": time.perf_counter() - start,
                "examples": [
                    [c, clip["caption"]] for c, clip in zip(captions[:3], clips[:3], strict=True)
                ],
            }
            print(f"{key}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items() if k != "clips"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
