"""Short prompts rendered from a Shapes scene, with the attributes each one states: the sources
of the expander's (short → dense) training pairs and of its evaluation prompts."""

import numpy as np

from soraj.captions.prompt_parse import StatedObject, StatedPrompt
from soraj.data.shapes import ShapesScene, short_caption
from soraj.data.shapes_alt_text import (
    BACKGROUND_WORDS,
    FILLERS,
    MOTION_WORDS,
    SHAPE_WORDS,
    SIZE_WORDS,
)

# How a prompt is phrased: the dataset's short caption, alt-text-like phrasing (never a wrong
# colour: a prompt states what the user wants), dense sentences with slots left out, or an
# object count alone.
STYLES = ("short", "alt", "partial_dense", "count")
STYLE_ODDS = (0.2, 0.45, 0.3, 0.05)
# The odds that an alt-text or partial-dense prompt states each slot of an object.
ALT_ODDS = {"colour": 0.85, "size": 0.3, "motion": 0.4, "background": 0.3}
PARTIAL_ODDS = {"colour": 0.7, "size": 0.5, "motion": 0.6, "background": 0.5}


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _keep(rng, odds: dict, slot: str, value: str) -> str | None:
    return value if rng.random() < odds[slot] else None


def _stated_objects(scene: ShapesScene, rng, odds: dict) -> list[StatedObject]:
    return [
        StatedObject(
            colour=_keep(rng, odds, "colour", o.colour),
            shape=o.shape,
            size=_keep(rng, odds, "size", o.size),
            motion=_keep(rng, odds, "motion", o.motion),
        )
        for o in scene.objects
    ]


def _alt_phrase(obj: StatedObject, rng) -> str:
    words = [_pick(rng, SIZE_WORDS[obj.size])] if obj.size else []
    words += [obj.colour] if obj.colour else []
    words.append(_pick(rng, SHAPE_WORDS[obj.shape]))
    words += [_pick(rng, MOTION_WORDS[obj.motion])] if obj.motion else []
    return " ".join(words)


def _dense_sentence(obj: StatedObject) -> str:
    words = ["A", obj.size, obj.colour, obj.shape, obj.motion]
    return " ".join(w for w in words if w) + "."


def shorten(scene: ShapesScene, rng: np.random.Generator, style: str | None = None):
    """(prompt, what it states as a StatedPrompt). Every object is named, so an expansion never
    needs to invent one; `style` None draws one with STYLE_ODDS."""
    if style is None:
        style = STYLES[int(rng.choice(len(STYLES), p=STYLE_ODDS))]
    if style not in STYLES:
        raise ValueError(f"unknown short-prompt style {style!r}; allowed: {', '.join(STYLES)}")
    if style == "short":
        objects = [StatedObject(colour=o.colour, shape=o.shape) for o in scene.objects]
        return short_caption(scene), StatedPrompt(tuple(objects), None, None, (), ())
    if style == "count":
        count = len(scene.objects)
        text = _pick(rng, ("one shape", "a single shape") if count == 1 else ("two shapes",))
        background = _keep(rng, ALT_ODDS, "background", scene.background)
        if background:
            text += " " + _pick(rng, BACKGROUND_WORDS[background])
        return text, StatedPrompt((), background, count, (), ())
    odds = ALT_ODDS if style == "alt" else PARTIAL_ODDS
    objects = _stated_objects(scene, rng, odds)
    background = _keep(rng, odds, "background", scene.background)
    if style == "partial_dense":
        sentences = [_dense_sentence(o) for o in objects]
        if background:
            sentences.append(f"The background is {background}.")
        return " ".join(sentences), StatedPrompt(tuple(objects), background, None, (), ())
    if len(objects) == 2 and rng.random() < 0.5:  # alt-text often names the bigger one first
        objects.reverse()
    text = _pick(rng, (" and ", " with a ", ", ")).join(_alt_phrase(o, rng) for o in objects)
    if background:
        text = f"{text} {_pick(rng, BACKGROUND_WORDS[background])}"
    text = f"{_pick(rng, ('a ', 'the ', '', *(f + ' ' for f in FILLERS[:3])))}{text}"
    if rng.random() < 0.3:
        text = _pick(rng, (str.lower, str.upper, str.capitalize))(text)
    return text, StatedPrompt(tuple(objects), background, None, (), ())
