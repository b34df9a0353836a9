"""Web-style "original" captions for the Shapes world: alt-text that leaves things out, gets
colours wrong and varies its phrasing, deterministic in (seed, clip index).

Real training captions are like this (DALL·E 3 §2: alt-text names the subject and omits the
rest, or is simply wrong); re-captioning exists to replace them. The exact dense caption of
`soraj.data.shapes.dense_caption` stays the evaluation truth.
"""

import dataclasses

import numpy as np

from soraj.data.shapes import COLOURS, SIZES, STILL, ShapeObject, ShapesScene

# ---- Noise settings ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AltTextNoise:
    """Per-attribute odds of an original caption; every field is a config field of the data."""

    colour: float = 0.8  # the main object's colour is named (else its shape alone)
    second: float = 0.3  # a second object, when there is one, is named
    size: float = 0.2
    motion: float = 0.3
    background: float = 0.15
    wrong_colour: float = 0.1  # a named colour is replaced by another palette colour
    irrelevant: float = 0.05  # the whole caption says nothing about the clip
    filler: float = 0.5  # a phrase such as "cool clip of" comes first
    casing: float = 0.3  # the caption's casing is changed (lower, upper, title)

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ValueError(f"alt-text odds {field.name} must be in [0, 1], got {value!r}")


# ---- Phrasing ---------------------------------------------------------------------------------

SHAPE_WORDS = {
    "circle": ("circle", "ball", "dot", "round thing"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "triangle shape", "pyramid"),
}
MOTION_WORDS = {
    "moves to the left": ("going left", "moving left", "sliding to the left", "heading left"),
    "moves to the right": ("going right", "moving right", "sliding to the right"),
    "moves up": ("going up", "rising", "moving upwards", "floating up"),
    "moves down": ("going down", "falling", "dropping", "moving downwards"),
    STILL: ("not moving", "standing still", "sitting there", "static"),
}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
BACKGROUND_WORDS = {
    "black": ("on black", "on a black background", "black bg", "on a dark background"),
    "gray": ("on gray", "on a grey background", "gray bg", "on a gray backdrop"),
}
FILLERS = ("cool clip of", "video of", "check out this", "animation:", "my", "footage of", "lol")
ENDINGS = ("", "", ".", "!", "!!", " #shapes", " :)")
IRRELEVANT = (
    "watch till the end!",
    "new video every day",
    "untitled",
    "my first animation",
    "like and subscribe",
    "test render 3",
    "clip_0042.mp4",
)

# Random streams under (seed, index): separate from the scene's own stream (seed, index).
ALT_TEXT_STREAM = 1_000_001
LABELLED_STREAM = 1_000_002


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def main_object(scene: ShapesScene) -> ShapeObject:
    """The object a short caption names first: the larger one, the first drawn on a tie."""
    return max(scene.objects, key=lambda obj: SIZES[obj.size])


def _object_phrase(obj, rng, noise, named_colour: bool) -> str:
    words = []
    if rng.random() < noise.size:
        words.append(_pick(rng, SIZE_WORDS[obj.size]))
    if named_colour:
        colour = obj.colour
        if rng.random() < noise.wrong_colour:
            colour = _pick(rng, [c for c in COLOURS if c != obj.colour])
        words.append(colour)
    words.append(_pick(rng, SHAPE_WORDS[obj.shape]))
    if rng.random() < noise.motion:
        words.append(_pick(rng, MOTION_WORDS[obj.motion]))
    return " ".join(words)


def _recase(text: str, rng) -> str:
    return _pick(rng, (str.lower, str.upper, str.title, str.capitalize))(text)


def original_caption(scene: ShapesScene, seed: int, index: int, noise: AltTextNoise) -> str:
    """The alt-text-like caption of clip `index` of `seed`: a pure function of its arguments."""
    rng = np.random.default_rng((seed, index, ALT_TEXT_STREAM))
    if rng.random() < noise.irrelevant:
        return _pick(rng, IRRELEVANT)
    main = main_object(scene)
    phrases = [_object_phrase(main, rng, noise, rng.random() < noise.colour)]
    others = [obj for obj in scene.objects if obj is not main]
    if others and rng.random() < noise.second:
        phrases.append(_object_phrase(others[0], rng, noise, named_colour=True))
    text = _pick(rng, (" and ", " with a ", ", ")).join(phrases)
    if rng.random() < noise.background:
        text = f"{text} {_pick(rng, BACKGROUND_WORDS[scene.background])}"
    if rng.random() < noise.filler:
        text = f"{_pick(rng, FILLERS)} {text}"
    else:
        text = f"{_pick(rng, ('a ', 'the ', ''))}{text}"
    if rng.random() < noise.casing:
        text = _recase(text, rng)
    return text + _pick(rng, ENDINGS)


def is_labelled(seed: int, index: int, fraction: float) -> bool:
    """Whether clip `index` of `seed` is in the small labelled subset whose exact dense caption
    may train the captioner (DALL·E 3's small human-written set); about `fraction` of clips."""
    if not 0 <= fraction <= 0.05:
        raise ValueError(f"the labelled fraction must be in [0, 0.05], got {fraction!r}")
    return bool(np.random.default_rng((seed, index, LABELLED_STREAM)).random() < fraction)
