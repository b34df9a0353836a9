"""`soraj evaluate`: shapes-probe accuracy of a checkpoint on prompts of one split.

The held-out split names (colour, shape) pairs that training never saw, so its score measures
composition rather than memory.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import tqdm

from soraj.data.shapes import split_prompts
from soraj.eval.shapes_probe import score_videos


def evaluate(generator, prompts, frames, height, width, steps, guidance, seed=0, batch=10):
    """Generates one video per prompt (seed + index) and returns the probe's accuracies."""
    videos = []
    for start in tqdm.trange(0, len(prompts), batch, desc="evaluate", unit_scale=batch):
        chunk = prompts[start : start + batch]
        videos.extend(generator(chunk, frames, height, width, seed + start, steps, guidance))
    return score_videos(videos, prompts), videos


def evaluate_command(argv: list[str]):
    parser = argparse.ArgumentParser(prog="soraj evaluate", description=__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--split", choices=["heldout", "train", "all"], default="heldout")
    parser.add_argument("--num-prompts", type=int, default=50)
    for flag in ("--frames", "--height", "--width"):
        parser.add_argument(flag, type=int, help="default: what the model was trained on")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON file for the scores")
    args = parser.parse_args(argv)
    if args.num_prompts < 1:
        parser.error(f"--num-prompts must be ≥ 1, got {args.num_prompts}")
    from soraj.exports import BundleError, load_export_config
    from soraj.generate import BundleGeometry, Generator, resolve_bundle
    from soraj.generate_request import trained_clip

    # The bundle and the clip size are checked before any weights load, as `soraj generate`
    # checks them; a missing or damaged bundle ends in one line, as does damage that only
    # reading the weights finds.
    try:
        bundle = resolve_bundle(args.checkpoint)
        geometry = BundleGeometry.read(bundle)
        for key, value in trained_clip(load_export_config(bundle / "dit", "dit")).items():
            if getattr(args, key) is None:
                setattr(args, key, value)
        geometry.check(args.frames, args.height, args.width)
    except ValueError as error:  # a BundleError, or a size the bundle cannot make
        sys.exit(f"soraj evaluate: error: {error}")
    try:
        generator = Generator.load(args.checkpoint)
    except BundleError as error:
        sys.exit(f"soraj evaluate: error: {error}")
    prompts = split_prompts(args.split, args.num_prompts, args.seed, args.frames)
    start = time.perf_counter()
    scores, _ = evaluate(
        generator,
        prompts,
        args.frames,
        args.height,
        args.width,
        args.steps,
        args.guidance,
        args.seed,
    )
    result = {**vars(args), "scores": scores, "seconds": time.perf_counter() - start}
    print(json.dumps(result["scores"]))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    return result
