"""Prompt expansion: a short prompt → a dense caption in the training captions' style, by one of
several backends behind one function.

`Expansion.ok` is False exactly when `revised` is the original prompt because expansion failed
(an unreachable endpoint, an unusable reply, an empty prompt). A `learned` expansion whose
output fails the check falls back to `rule`: that is a working expansion, so ok stays True,
`backend` names the backend that wrote `revised` ("rule") and `message` says why.
"""

import dataclasses
import itertools

import numpy as np

from soraj.captions.prompt_parse import StatedObject, StatedPrompt, parse_prompt
from soraj.data.shapes import (
    BACKGROUNDS,
    COLOURS,
    HELD_OUT_PAIRS,
    MOTIONS,
    SHAPES,
    SIZES,
    STILL,
    ShapeObject,
    ShapesScene,
    dense_caption,
    parse_dense_caption,
)

BACKENDS = ("none", "rule", "learned", "openai")


@dataclasses.dataclass(frozen=True)
class Expansion:
    original: str
    revised: str
    backend: str  # the backend that wrote `revised`
    ok: bool  # False: expansion failed and `revised` is `original`
    message: str  # what was not used, what was changed, or why it failed; "" when nothing


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown expansion backend {backend!r}; allowed: {', '.join(BACKENDS)}")


# ---- Filling what the prompt leaves out ---------------------------------------------------------


def _candidate_pairs(obj: StatedObject, taken: set) -> list[tuple[str, str]]:
    """Colour-shape pairs the Shapes sampler could draw for this object, given what is stated:
    a held-out pair only when the user named both its colour and its shape."""
    both_stated = obj.colour is not None and obj.shape is not None
    return [
        (colour, shape)
        for colour in COLOURS
        for shape in SHAPES
        if (colour == obj.colour if obj.colour else colour not in taken)
        and obj.shape in (None, shape)
        and (both_stated or (colour, shape) not in HELD_OUT_PAIRS)
    ]


def _objects_to_fill(stated: StatedPrompt, rng, notes: list) -> list[StatedObject]:
    objects = list(stated.objects)
    if len(objects) > 2:
        notes.append(f"{len(objects)} objects named, a scene holds at most 2: kept the first two")
        objects = objects[:2]
    wanted = stated.count if stated.count in (1, 2) else None
    if not objects:
        objects = [StatedObject()] * (wanted or int(rng.integers(1, 3)))
    elif wanted == 2 and len(objects) == 1:
        objects.append(StatedObject())
    seen = set()
    for i, obj in enumerate(objects):
        if obj.colour and obj.colour in seen:  # the world draws distinct colours per scene
            notes.append(f"two {obj.colour} objects: the second one's colour is drawn instead")
            objects[i] = dataclasses.replace(obj, colour=None)
        seen.add(obj.colour)
    return objects


def fill_scene(stated: StatedPrompt, rng: np.random.Generator, num_frames: int = 9):
    """A scene keeping every stated attribute, the rest drawn as `sample_scene` draws them
    (uniform choices, distinct colours, no unstated held-out pair). Returns (scene, notes)."""
    notes: list[str] = []
    objects = _objects_to_fill(stated, rng, notes)
    taken = {o.colour for o in objects if o.colour}
    filled = []
    for obj in objects:
        pairs = _candidate_pairs(obj, taken)
        colour, shape = pairs[int(rng.integers(len(pairs)))]
        taken.add(colour)
        size = obj.size or tuple(SIZES)[int(rng.integers(len(SIZES)))]
        motion = obj.motion or (
            MOTIONS[int(rng.integers(len(MOTIONS)))] if num_frames > 1 else STILL
        )
        filled.append(ShapeObject(colour=colour, shape=shape, size=size, motion=motion))
    background = stated.background or tuple(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    return ShapesScene(objects=tuple(filled), background=background), notes


def violations(stated: StatedPrompt, scene: ShapesScene) -> list[str]:
    """What `scene` gets wrong of what was stated ([] when it keeps all of it). Objects may come
    in any order: the best pairing of stated to drawn objects counts."""
    problems = []
    if stated.background and scene.background != stated.background:
        problems.append(f"background {scene.background}, stated {stated.background}")
    named = stated.objects[:2]
    expected = max(len(named), stated.count or 0)  # 0: any count will do
    if expected and len(scene.objects) != expected:
        return problems + [f"{len(scene.objects)} objects, stated {expected}"]
    best = None
    for order in itertools.permutations(scene.objects, len(named)):
        wrong = [
            f"object {i + 1} {slot} {getattr(drawn, slot)}, stated {value}"
            for i, (obj, drawn) in enumerate(zip(named, order, strict=True))
            for slot, value in obj.stated().items()
            if getattr(drawn, slot) != value
        ]
        best = wrong if best is None or len(wrong) < len(best) else best
    return problems + (best or [])


# ---- Backends ---------------------------------------------------------------------------------


def _unused_message(stated: StatedPrompt, notes) -> str:
    parts = [f"could not use: {', '.join(stated.unused)}"] if stated.unused else []
    return "; ".join([*parts, *stated.notes, *notes])


def expand_rule(prompt: str, seed: int = 0, num_frames: int = 9) -> Expansion:
    try:
        canonical = dense_caption(parse_dense_caption(prompt))
        return Expansion(prompt, canonical, "rule", True, "already a dense caption")
    except ValueError:
        pass
    stated = parse_prompt(prompt)
    scene, notes = fill_scene(stated, np.random.default_rng(seed), num_frames)
    return Expansion(prompt, dense_caption(scene), "rule", True, _unused_message(stated, notes))


def expand_prompt(
    prompt: str,
    backend: str,
    *,
    seed: int = 0,
    num_frames: int = 9,
    checkpoint=None,
    endpoint: str | None = None,
    model: str | None = None,
    timeout_s: float = 30.0,
) -> Expansion:
    """Expands `prompt` with `backend` (one of BACKENDS). `checkpoint` is the learned expander's
    folder (None: the shipped one); `endpoint` and `model` are the openai backend's."""
    check_backend(backend)
    if not prompt.strip():
        return Expansion(prompt, prompt, backend, False, "empty prompt: nothing to expand")
    if backend == "none":
        return Expansion(prompt, prompt, "none", True, "")
    if backend == "rule":
        return expand_rule(prompt, seed, num_frames)
    if backend == "learned":
        from soraj.captions.expander_model import expand_learned

        return expand_learned(prompt, seed=seed, num_frames=num_frames, checkpoint=checkpoint)
    from soraj.captions.expand_openai import expand_openai

    return expand_openai(prompt, endpoint, model, seed=seed, timeout_s=timeout_s)
