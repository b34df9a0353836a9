"""Scores every export of the scaling grid (experiments/scaling/train.py): the shapes probe's
fully-right share on held-out prompts and the validation loss, against training FLOPs.

Every export sees the same prompts with the same noise (seed + index), and the same held-out
clips, noise and t for the loss, so the comparisons are paired. Intervals are 95 % bootstrap
intervals over prompts (soraj/eval/bootstrap.py); a paired interval is given for each budget
step within a width and for each width step at a budget.

    .venv/bin/python experiments/scaling/evaluate.py --num-prompts 100
    .venv/bin/python experiments/scaling/plot.py
"""

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from soraj.data.shapes import split_prompts
from soraj.eval.bootstrap import bootstrap_interval
from soraj.eval.evaluate import evaluate
from soraj.eval.shapes_probe import score_video
from soraj.eval.validation_loss import heldout_clips, validation_loss
from soraj.generate import Generator

TIMES = (0.1, 0.3, 0.5, 0.7, 0.9)


def score_export(export: Path, prompts, clip, steps, guidance, loss_clips) -> dict:
    generator = Generator.load(export)
    _, videos = evaluate(generator, prompts, *clip, steps, guidance)
    per_prompt = [score_video(video, prompt) for video, prompt in zip(videos, prompts, strict=True)]
    batch = heldout_clips(generator, loss_clips, *clip)
    attributes = {name for scores in per_prompt for name in scores}
    return {
        **{name: [s.get(name, np.nan) for s in per_prompt] for name in sorted(attributes)},
        "validation_loss": validation_loss(generator, batch, TIMES),
    }


def summary(values, rng) -> dict:
    return {"mean": float(np.mean(values)), "ci95": bootstrap_interval(values, rng)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("experiments/scaling/runs"))
    parser.add_argument("--num-prompts", type=int, default=100)
    parser.add_argument("--loss-clips", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--clip", type=int, nargs=3, default=(9, 64, 64), metavar=("T", "H", "W"))
    parser.add_argument(
        "--out", type=Path, default=Path("experiments/scaling/results/scaling.json")
    )
    args = parser.parse_args()
    plan = json.loads((args.runs / "plan.json").read_text())
    prompts = split_prompts("heldout", args.num_prompts, 0, args.clip[0])
    settings = {k: v for k, v in vars(args).items() if k not in ("runs", "out")}
    settings["clip"] = list(args.clip)
    cache = args.out.with_name(args.out.stem + "_per_export.json")
    scored = json.loads(cache.read_text()) if cache.exists() else {}
    start = time.perf_counter()
    for width, entry in plan.items():
        for index, budget in entry["budgets"].items():
            key = f"w{width}/budget{index}"
            if key in scored and scored[key]["settings"] == settings:
                continue  # scored earlier with the same settings: exports are never rewritten
            print(f"scoring {key} ({budget['flops']:.2g} FLOPs)", flush=True)
            result = score_export(
                Path(budget["export"]),
                prompts,
                args.clip,
                args.steps,
                args.guidance,
                args.loss_clips,
            )
            scored[key] = {"settings": settings, **result}
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(scored))
    rng = np.random.default_rng(0)
    rows, differences = [], {}
    for width, entry in plan.items():
        for index, budget in sorted(entry["budgets"].items()):
            cell = scored[f"w{width}/budget{index}"]
            rows.append(
                {
                    "width": int(width),
                    "params": entry["params"],
                    "budget": int(index),
                    "flops": budget["flops"],
                    "steps": budget["steps"],
                    "minutes": budget["minutes"],
                    "fully_right": summary(cell["fully_right"], rng),
                    "overall": summary(cell["overall"], rng),
                    # Each attribute's mean over the prompts that name it.
                    "attributes": {
                        name: float(np.nanmean(cell[name]))
                        for name in ("present", "shape", "size", "motion", "background")
                        if name in cell
                    },
                    "validation_loss": cell["validation_loss"]["mean"],
                    "validation_loss_by_t": cell["validation_loss"],
                }
            )
    # Paired differences: each width's next budget, and at each budget the next width.
    widths = sorted({row["width"] for row in rows})
    cells = {(row["width"], row["budget"]): row for row in rows}
    pairs = [((w, b + 1), (w, b)) for w, b in cells if (w, b + 1) in cells]
    pairs += [((w2, b), (w1, b)) for w1, w2 in itertools.pairwise(widths) for _, b in cells]
    for (wa, ba), (wb, bb) in dict.fromkeys(p for p in pairs if p[0] in cells and p[1] in cells):
        a = scored[f"w{wa}/budget{ba}"]["fully_right"]
        b = scored[f"w{wb}/budget{bb}"]["fully_right"]
        differences[f"w{wa}/b{ba} - w{wb}/b{bb}"] = summary(np.subtract(a, b), rng)
    output = {
        "settings": settings,
        "prompts": "soraj.data.shapes.split_prompts('heldout', n, seed 0)",
        "rows": rows,
        "paired_differences_fully_right": differences,
        "seconds": time.perf_counter() - start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(output, indent=1))
    print(
        f"{'width':>6} {'params':>8} {'FLOPs':>9} {'steps':>6} {'fully right':>22} {'val loss':>9}"
    )
    for row in rows:
        fr = row["fully_right"]
        print(
            f"{row['width']:>6} {row['params'] / 1e6:>7.2f}M {row['flops']:>9.2e} "
            f"{row['steps']:>6} "
            f"{fr['mean']:>6.3f} [{fr['ci95'][0]:.3f}, {fr['ci95'][1]:.3f}] "
            f"{row['validation_loss']:>9.4f}"
        )
    for name, delta in differences.items():
        print(f"{name}: {delta['mean']:+.3f} [{delta['ci95'][0]:+.3f}, {delta['ci95'][1]:+.3f}]")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
