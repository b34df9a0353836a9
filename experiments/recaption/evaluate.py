"""Scores the re-captioning experiment's T2V runs with the shapes probe on four prompt sets.

  dense           the full dense caption of an unseen scene; every attribute is scored
  short           a short web-style prompt of the same scene: every object by colour and
                  shape, some sizes, motions and the background; only what it states is scored
  short+rule      the short prompt expanded by `rule`, scored on what the short prompt states
  short+learned   the same with the shipped learned expander

Scenes are fresh draws of the training distribution (seed EVAL_SEED, never a training clip).
Every run sees the same prompts with the same noise (seed + index): comparisons are paired.
The score of a video is "fully right": every scored attribute right. Intervals are 95 %
bootstrap intervals over prompts; differences between runs, and expanded against short prompts
within a run, are paired bootstraps.

  .venv/bin/python experiments/recaption/evaluate.py --runs A B C D E \
      --num-prompts 200 --out experiments/recaption/results/evaluation.json
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import tqdm

from soraj.captions.expand import expand_prompt
from soraj.captions.prompt_parse import StatedObject
from soraj.data.shapes import dense_caption, sample_scene
from soraj.data.shapes_alt_text import BACKGROUND_WORDS, MOTION_WORDS, SHAPE_WORDS, SIZE_WORDS
from soraj.eval.bootstrap import bootstrap_interval
from soraj.eval.stated_probe import score_stated

EVAL_SEED = 424_242
SHORT_ODDS = {"size": 0.3, "motion": 0.3, "background": 0.3}
PROMPT_SETS = ("dense", "short", "short+rule", "short+learned")
# Paired differences between runs, where both were scored. E-single and E-per_segment are run E
# with other adaLN layouts (experiments/bench/modulation.py).
COMPARED = (
    ("C", "A"),
    ("C", "B"),
    ("C", "D"),
    ("E", "C"),
    ("D", "A"),
    ("E", "A"),
    ("E-single", "E"),
    ("E-per_segment", "E"),
    ("E-per_segment", "E-single"),
)


def short_prompt(scene, rng):
    """A clean web-style prompt of the scene (never a wrong attribute) and what it states."""
    phrases, stated = [], []
    for obj in scene.objects:
        size = obj.size if rng.random() < SHORT_ODDS["size"] else None
        motion = obj.motion if rng.random() < SHORT_ODDS["motion"] else None
        words = [rng.choice(SIZE_WORDS[size])] if size else []
        words += [obj.colour, str(rng.choice(SHAPE_WORDS[obj.shape]))]
        words += [str(rng.choice(MOTION_WORDS[motion]))] if motion else []
        phrases.append(" ".join(map(str, words)))
        stated.append(StatedObject(obj.colour, obj.shape, size, motion))
    text = " and ".join(phrases)
    background = scene.background if rng.random() < SHORT_ODDS["background"] else None
    if background:
        text += " " + str(rng.choice(BACKGROUND_WORDS[background]))
    return text, stated, background


def prompt_sets(n: int):
    """{set: [(prompt, stated objects, stated background)]}, n per set, same scenes."""
    rng = np.random.default_rng((EVAL_SEED, 0))
    scenes = [sample_scene(rng, 9, "train") for _ in range(n)]
    sets = {name: [] for name in PROMPT_SETS}
    for i, scene in enumerate(scenes):
        full = [StatedObject(o.colour, o.shape, o.size, o.motion) for o in scene.objects]
        sets["dense"].append((dense_caption(scene), full, scene.background))
        text, stated, background = short_prompt(scene, np.random.default_rng((EVAL_SEED, 1, i)))
        sets["short"].append((text, stated, background))
        for backend in ("rule", "learned"):
            revised = expand_prompt(text, backend, seed=i).revised
            sets[f"short+{backend}"].append((revised, stated, background))
    return sets


def score_run(run_dir: Path, sets: dict, batch: int, steps: int, guidance: float) -> dict:
    """{set: {"fully_right": [per prompt], "right": [share of stated checks right]}}"""
    from soraj.generate import Generator

    generator = Generator.load(run_dir)
    per_prompt = {}
    for name, items in sets.items():
        prompts = [prompt for prompt, _, _ in items]
        videos = []
        for start in tqdm.trange(0, len(prompts), batch, desc=f"{run_dir.parent.name} {name}"):
            chunk = prompts[start : start + batch]
            videos += list(generator(chunk, 9, 32, 32, start, steps, guidance))
        scores = [score_stated(v, objs, bg) for v, (_, objs, bg) in zip(videos, items, strict=True)]
        per_prompt[name] = {key: [s[key] for s in scores] for key in ("fully_right", "right")}
    return per_prompt


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", default=["A", "B", "C", "D", "E"])
    parser.add_argument("--runs-dir", default="experiments/recaption/runs")
    parser.add_argument("--num-prompts", type=int, default=200)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--out", default="experiments/recaption/results/evaluation.json")
    args = parser.parse_args()
    start = time.perf_counter()
    sets = prompt_sets(args.num_prompts)
    results = {}
    settings = vars(args) | {"runs": None}
    for run in args.runs:
        # Each run's scores are kept beside the results, so runs can be scored as they finish.
        cached = Path(args.out).with_name(f"{Path(args.out).stem}_{run}.json")
        if cached.exists() and json.loads(cached.read_text())["settings"] == settings:
            results[run] = json.loads(cached.read_text())["per_prompt"]
            continue
        results[run] = score_run(
            Path(args.runs_dir) / run / "export", sets, args.batch, args.steps, args.guidance
        )
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps({"settings": settings, "per_prompt": results[run]}))
    rng = np.random.default_rng(0)
    table = {}
    for run, by_set in results.items():
        table[run] = {}
        for name, scores in by_set.items():
            table[run][name] = {
                key: {
                    "mean": float(np.mean(values)),
                    "ci95": bootstrap_interval(np.asarray(values), rng),
                }
                for key, values in scores.items()
            }
    differences = {}
    for a, b in COMPARED:
        if a in results and b in results:
            for name in PROMPT_SETS:
                for key in ("fully_right", "right"):
                    delta = np.subtract(results[a][name][key], results[b][name][key])
                    differences[f"{a}-{b} {name} {key}"] = {
                        "mean": float(delta.mean()),
                        "ci95": bootstrap_interval(delta, rng),
                    }
    # Expansion within each run: the same scenes and noise with the short prompt expanded or not.
    for run in results:
        for expanded in ("short+rule", "short+learned"):
            for key in ("fully_right", "right"):
                delta = np.subtract(results[run][expanded][key], results[run]["short"][key])
                differences[f"{run} {expanded}-short {key}"] = {
                    "mean": float(delta.mean()),
                    "ci95": bootstrap_interval(delta, rng),
                }
    examples = {name: [prompt for prompt, _, _ in sets[name][:5]] for name in PROMPT_SETS}
    output = {
        "settings": vars(args),
        "table": table,
        "paired_differences": differences,
        "per_prompt": results,
        "example_prompts": examples,
        "seconds": time.perf_counter() - start,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(output, indent=1))
    print("fully right (95 % bootstrap interval)")
    print("run  " + "".join(f"{name:>24}" for name in PROMPT_SETS))
    for run, row in table.items():
        cells = [
            f"{c['fully_right']['mean']:.2f} [{c['fully_right']['ci95'][0]:.2f}, "
            f"{c['fully_right']['ci95'][1]:.2f}]"
            for c in row.values()
        ]
        print(f"{run:<5}" + "".join(f"{cell:>24}" for cell in cells))
    for pair, delta in differences.items():
        print(f"{pair}: {delta['mean']:+.3f} [{delta['ci95'][0]:+.3f}, {delta['ci95'][1]:+.3f}]")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
