"""Framing and probe accuracy of generation bundles sampled on wide and tall canvases.

For each model, canvas and prompt split: the same prompts (shapes.split_prompts) and seeds,
generated at that canvas, scored by the shapes probe (attribute accuracy) and by
soraj.eval.framing (how often the objects a prompt names are whole inside the frame).

    .venv/bin/python experiments/native_vs_crop/evaluate.py \\
        --model native=RUNS/native/export --model crop=RUNS/crop/export \\
        --out experiments/native_vs_crop/results/native_vs_crop.json

Smoke test on the shipped, square-trained checkpoint:

    .venv/bin/python experiments/native_vs_crop/evaluate.py \\
        --model shipped=experiments/shapes/checkpoint \\
        --out experiments/native_vs_crop/results/shipped_square_trained.json
"""

import argparse
import json
import re
import time
from pathlib import Path

from soraj.data.shapes import split_prompts
from soraj.eval.evaluate import evaluate
from soraj.eval.framing import framing_scores

DEFAULT_CANVASES = ("32x64", "64x32")  # (height)x(width): wide, tall


def parse_model(text: str) -> tuple[str, str]:
    name, separator, path = text.partition("=")
    if not separator or not re.fullmatch(r"[A-Za-z0-9_-]+", name) or not path:
        raise argparse.ArgumentTypeError(f"--model must be NAME=BUNDLE_DIR, got {text!r}")
    return name, path


def parse_canvas(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"--canvases entries must be HEIGHTxWIDTH, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def evaluate_model(generator, args) -> dict:
    """{canvas name: {split: {"probe": ..., "framing": ...}}} for one generator."""
    results = {}
    for height, width in args.canvases:
        canvas = results.setdefault(f"{height}x{width}", {})
        for split in args.splits:
            prompts = split_prompts(split, args.num_prompts, args.seed, args.frames)
            probe, videos = evaluate(
                generator, prompts, args.frames, height, width, args.steps, args.guidance, args.seed
            )
            framing = framing_scores(videos, prompts)
            framing.pop("per_video")
            canvas[split] = {"probe": probe, "framing": framing}
            print(
                f"  {height}x{width} {split}: fully_in_frame {framing['fully_in_frame']:.2f}, "
                f"probe overall {probe['overall']:.2f}",
                flush=True,
            )
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", type=parse_model, action="append", required=True, dest="models")
    parser.add_argument("--canvases", type=parse_canvas, nargs="+", default=None)
    parser.add_argument(
        "--splits", nargs="+", choices=["heldout", "train", "all"], default=["heldout", "train"]
    )
    parser.add_argument("--num-prompts", type=int, default=50)
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="JSON file for the results")
    args = parser.parse_args(argv)
    args.canvases = args.canvases or [parse_canvas(c) for c in DEFAULT_CANVASES]
    names = [name for name, _ in args.models]
    if len(set(names)) != len(names):
        parser.error(f"--model names must differ, got {names}")
    if args.num_prompts < 1:
        parser.error(f"--num-prompts must be >= 1, got {args.num_prompts}")
    from soraj.generate import Generator, resolve_bundle

    for name, path in args.models:  # every bundle is checked before any is sampled
        try:
            resolve_bundle(path)
        except ValueError as error:
            parser.error(f"--model {name}: {error}")

    start = time.perf_counter()
    results = {}
    for name, path in args.models:
        print(f"{name}: {path}", flush=True)
        results[name] = evaluate_model(Generator.load(path), args)
    settings = {
        **vars(args),
        "models": dict(args.models),
        "canvases": [list(c) for c in args.canvases],
    }
    output = {"settings": settings, "results": results, "seconds": time.perf_counter() - start}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(output, indent=2))
    print(f"wrote {out} ({output['seconds']:.0f} s)")
    return output


if __name__ == "__main__":
    main()
