"""Recolouring augmentation for the Shapes world: a clip drawn again with its objects in random
colours off the palette, for training a captioner whose shape words must not follow colour.

A captioner trained on the palette learns shape jointly with colour: an encoder probe that reads
shape off training clips reads 0.04 of held-out colour–shape pairs right
(experiments/captioner/NOTES.md). Drawing the same clips in colours the captions do not name
makes shape the only thing its pixels and words share, as colour jitter does for image models.

The held-out pairs stay held out in pixels too: a random colour whose nearest palette colour
would name a held-out pair with the object's shape is drawn again, so no recoloured training
clip shows, for instance, a purplish triangle.
"""

import numpy as np

from soraj.data.shapes import BACKGROUNDS, COLOURS, HELD_OUT_PAIRS, ShapesScene

MIN_BACKGROUND_DISTANCE = 100.0  # RGB distance an object keeps from the background (palette ≥ 129)
MIN_OBJECT_DISTANCE = 60.0  # and from the other object, so two objects stay two objects
MAX_DRAWS = 1000

_PALETTE_NAMES = tuple(COLOURS)
_PALETTE = np.array([COLOURS[name] for name in _PALETTE_NAMES], np.float64)  # (8, 3)


def nearest_palette_colour(rgb) -> str:
    """The palette name whose colour is nearest `rgb` (Euclidean in RGB)."""
    distances = np.linalg.norm(_PALETTE - np.asarray(rgb, np.float64), axis=-1)
    return _PALETTE_NAMES[int(np.argmin(distances))]


def random_object_colours(scene: ShapesScene, rng: np.random.Generator) -> np.ndarray:
    """RGB (O, 3), one uniform random colour per object: visible on the background, apart from
    the other object, and never nearest to a palette colour that makes a held-out pair with
    the object's shape."""
    background = np.array(BACKGROUNDS[scene.background], np.float64)
    colours = []
    for obj in scene.objects:
        for _ in range(MAX_DRAWS):
            colour = rng.uniform(0.0, 255.0, size=3)
            if (
                np.linalg.norm(colour - background) >= MIN_BACKGROUND_DISTANCE
                and all(np.linalg.norm(colour - c) >= MIN_OBJECT_DISTANCE for c in colours)
                and (nearest_palette_colour(colour), obj.shape) not in HELD_OUT_PAIRS
            ):
                colours.append(colour)
                break
        else:  # the accepted region is most of the RGB cube: this means the limits are wrong
            raise RuntimeError(f"no colour found for {obj} in {MAX_DRAWS} draws")
    return np.array(colours, np.float32)
