"""Measures the prompt expanders on held-out short prompts (no video model needed), as
research/captions.md §5.4 asks: parse rate, stated-attribute preservation before and after the
check, the rule fallback rate, and fill calibration (total variation distance between the
values an expander fills in and the training prior). Writes one JSON file.

    .venv/bin/python experiments/expander/evaluate.py --num-prompts 500 \
        --out experiments/shapes/expander/evaluation.json
"""

import argparse
import collections
import itertools
import json
import time
from pathlib import Path

import numpy as np
import tqdm

from soraj.captions.expand import _candidate_pairs, expand_rule, violations
from soraj.captions.expander_model import SHIPPED_EXPANDER, TRIES, LearnedExpander
from soraj.captions.prompt_parse import StatedObject
from soraj.captions.short_prompts import shorten
from soraj.data.shapes import (
    BACKGROUNDS,
    MOTIONS,
    SIZES,
    parse_dense_caption,
    sample_scene,
)

# Prompts come from a stream the trainer never draws from (it uses (seed, 11)).
PROMPT_STREAM = 21
UNIFORM = {"size": tuple(SIZES), "motion": MOTIONS, "background": tuple(BACKGROUNDS)}


def parse_or_none(text):
    try:
        return parse_dense_caption(text)
    except ValueError:
        return None


def pairing(stated, scene):
    """The drawn object each stated object is matched to (best pairing), then the rest."""
    named = stated.objects[:2]
    best = min(
        itertools.permutations(scene.objects),
        key=lambda order: sum(
            getattr(d, k) != v
            for o, d in zip(named, order, strict=False)
            for k, v in o.stated().items()
        ),
    )
    return [(named[i] if i < len(named) else StatedObject(), d) for i, d in enumerate(best)]


class Fills:
    """Filled values per slot, and the prior's expected histogram of the same fills."""

    def __init__(self):
        self.seen = collections.defaultdict(collections.Counter)
        self.expected = collections.defaultdict(collections.Counter)

    def add(self, stated, scene):
        if stated.background is None:
            self._add("background", scene.background, {b: 1 / 2 for b in BACKGROUNDS})
        pairs = pairing(stated, scene)
        for obj, drawn in pairs:
            for slot in ("size", "motion"):
                if getattr(obj, slot) is None:
                    values = UNIFORM[slot]
                    self._add(slot, getattr(drawn, slot), {v: 1 / len(values) for v in values})
            if obj.colour is None or obj.shape is None:
                others = {d.colour for _, d in pairs if d is not drawn}
                candidates = _candidate_pairs(obj, others)
                prior = collections.Counter()
                for colour, shape in candidates:
                    prior[(colour, shape)] += 1 / len(candidates)
                self._add("colour_shape", (drawn.colour, drawn.shape), prior)

    def _add(self, slot, value, prior):
        self.seen[slot][value] += 1
        for key, p in prior.items():
            self.expected[slot][key] += p

    def total_variation(self) -> dict:
        out = {}
        for slot, seen in self.seen.items():
            n = sum(seen.values())
            keys = set(seen) | set(self.expected[slot])
            tv = 0.5 * sum(abs(seen[k] / n - self.expected[slot][k] / n) for k in keys)
            out[slot] = {"tv": round(tv, 4), "fills": n}
        return out


def rate(flags):
    return round(float(np.mean(flags)), 4) if flags else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(SHIPPED_EXPANDER))
    parser.add_argument("--num-prompts", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=["train", "heldout"], default="train")
    parser.add_argument("--out", default="out/expander_evaluation.json")
    args = parser.parse_args()
    if args.num_prompts < 1:
        raise SystemExit(f"--num-prompts must be a positive integer, got {args.num_prompts}")
    learned = LearnedExpander.load(args.checkpoint)
    rng = np.random.default_rng((args.seed, PROMPT_STREAM))
    results = {name: collections.defaultdict(list) for name in ("rule", "learned")}
    fills = {"rule": Fills(), "learned": Fills()}
    start = time.perf_counter()
    for i in tqdm.trange(args.num_prompts, desc="expand", dynamic_ncols=True):
        prompt, stated = shorten(sample_scene(rng, 9, args.split), rng)
        rule = parse_dense_caption(expand_rule(prompt, seed=i).revised)
        results["rule"]["kept"].append(not violations(stated, rule))
        fills["rule"].add(stated, rule)
        first = parse_or_none(learned.sample([prompt] * TRIES, seed=i)[0])
        results["learned"]["parsed_before_check"].append(first is not None)
        results["learned"]["kept_before_check"].append(
            first is not None and not violations(stated, first)
        )
        expansion = learned.expand(prompt, seed=i)
        final = parse_dense_caption(expansion.revised)
        results["learned"]["kept_after_check"].append(not violations(stated, final))
        results["learned"]["fell_back_to_rule"].append(expansion.backend == "rule")
        if expansion.backend == "learned":
            fills["learned"].add(stated, final)
    report = {
        "checkpoint": args.checkpoint,
        "num_prompts": args.num_prompts,
        "split": args.split,
        "seed": args.seed,
        "seconds": round(time.perf_counter() - start, 1),
    }
    for name, flags in results.items():
        report[name] = {k: rate(v) for k, v in flags.items()}
        report[name]["fill_total_variation"] = fills[name].total_variation()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
