"""How right a caption is about a Shapes clip, read exactly: the caption is parsed with the
dense-caption grammar and compared attribute by attribute with the clip's scene."""

import itertools

import numpy as np

from soraj.data.shapes import ShapesScene, parse_dense_caption

ATTRIBUTES = ("colour", "shape", "size", "motion")


def _agreement(predicted, truth) -> int:
    return sum(getattr(predicted, a) == getattr(truth, a) for a in ATTRIBUTES)


def _matched(predicted: tuple, truth: tuple) -> list:
    """For each true object, the predicted object paired with it (None if unpaired), choosing
    the pairing with the most agreeing attributes: captions may name objects in any order."""
    best, best_agreement = [None] * len(truth), -1
    slots = list(range(len(predicted))) + [None] * len(truth)
    for order in itertools.permutations(slots, len(truth)):
        if len({i for i in order if i is not None}) != sum(i is not None for i in order):
            continue
        pairs = [None if i is None else predicted[i] for i in order]
        agreement = sum(_agreement(p, t) for p, t in zip(pairs, truth, strict=True) if p)
        if agreement > best_agreement:
            best, best_agreement = pairs, agreement
    return best


def score_caption(caption: str, truth: ShapesScene) -> dict:
    """1.0 / 0.0 per attribute (averaged over the true objects), parsed, count, background and
    exact (every object, as a set, and the background)."""
    try:
        scene = parse_dense_caption(caption)
    except ValueError:
        zero = dict.fromkeys(ATTRIBUTES, 0.0)
        return {"parsed": 0.0, "count": 0.0, "background": 0.0, **zero, "exact": 0.0}
    pairs = _matched(scene.objects, truth.objects)
    scores = {
        a: float(
            np.mean(
                [
                    p is not None and getattr(p, a) == getattr(t, a)
                    for p, t in zip(pairs, truth.objects, strict=True)
                ]
            )
        )
        for a in ATTRIBUTES
    }
    count = float(len(scene.objects) == len(truth.objects))
    background = float(scene.background == truth.background)
    exact = float(
        count == 1.0
        and background == 1.0
        and sorted(scene.objects, key=repr) == sorted(truth.objects, key=repr)
    )
    return {"parsed": 1.0, "count": count, "background": background, **scores, "exact": exact}


def caption_accuracy(captions: list[str], truths: list[ShapesScene]) -> dict:
    """Mean of score_caption over clips, plus the number of clips."""
    rows = [score_caption(c, t) for c, t in zip(captions, truths, strict=True)]
    return {key: float(np.mean([r[key] for r in rows])) for key in rows[0]} | {"clips": len(rows)}
