"""The Shapes world: procedural, exactly captioned videos of moving shapes, any size and length."""

import dataclasses
import json
import re

import grain
import numpy as np

# ---- Vocabulary ----

# Frames per second a Shapes clip plays at: a DiT trained on Shapes records it (config.data.fps)
# and `soraj generate` writes its videos at it.
FPS = 8
MIN_CANVAS = 16
BACKGROUNDS = {"black": (15, 15, 15), "gray": (90, 90, 90)}
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 135, 30),
    "cyan": (40, 200, 215),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.22, "large": 0.36}  # object width and height as a fraction of min(H, W)
MOTIONS = ("moves to the left", "moves to the right", "moves up", "moves down", "stays still")
STILL = "stays still"
HELD_OUT_PAIRS = frozenset(
    {("purple", "triangle"), ("cyan", "square"), ("orange", "circle"), ("white", "triangle")}
)
SPLITS = ("train", "heldout", "all")
DISPLACEMENT_RANGE = (0.3, 0.6)  # of the canvas along the motion axis, first to last frame
BORDER_GAP = 1.0  # pixels kept free between an object and the frame edge (anti-aliasing halo)
OBJECT_GAP = 1.0  # pixels kept free between two objects when placement allows it
PLACEMENT_TRIES = 128
# Motion as a unit (dy, dx) step in image coordinates (row 0 at the top).
MOTION_DIRECTIONS = {
    "moves to the left": (0, -1),
    "moves to the right": (0, 1),
    "moves up": (-1, 0),
    "moves down": (1, 0),
    STILL: (0, 0),
}


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"Unknown {name} {value!r}; allowed: {', '.join(map(str, allowed))}.")


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")


# ---- Scenes and captions ----


@dataclasses.dataclass(frozen=True)
class ShapeObject:
    colour: str
    shape: str
    size: str
    motion: str

    def __post_init__(self):
        _check_choice("colour", self.colour, tuple(COLOURS))
        _check_choice("shape", self.shape, SHAPES)
        _check_choice("size", self.size, tuple(SIZES))
        _check_choice("motion", self.motion, MOTIONS)


@dataclasses.dataclass(frozen=True)
class ShapesScene:
    objects: tuple
    background: str

    def __post_init__(self):
        object.__setattr__(self, "objects", tuple(self.objects))
        if not 1 <= len(self.objects) <= 2:
            raise ValueError(f"A scene holds 1 or 2 objects, got {len(self.objects)}.")
        if not all(isinstance(obj, ShapeObject) for obj in self.objects):
            raise ValueError("Scene objects must be ShapeObject instances.")
        colours = [obj.colour for obj in self.objects]
        if len(set(colours)) != len(colours):
            raise ValueError(f"Objects in a scene need distinct colours, got {colours}.")
        _check_choice("background", self.background, tuple(BACKGROUNDS))


def dense_caption(scene: ShapesScene) -> str:
    sentences = [f"A {o.size} {o.colour} {o.shape} {o.motion}." for o in scene.objects]
    return " ".join([*sentences, f"The background is {scene.background}."])


def short_caption(scene: ShapesScene) -> str:
    return " and ".join(f"{o.colour} {o.shape}" for o in scene.objects)


def structured_caption(scene: ShapesScene) -> dict:
    return {
        "background": scene.background,
        "objects": [dataclasses.asdict(obj) for obj in scene.objects],
    }


def _alternatives(words):
    return "|".join(re.escape(word) for word in words)


_OBJECT_SENTENCE = re.compile(
    f"A ({_alternatives(SIZES)}) ({_alternatives(COLOURS)}) ({_alternatives(SHAPES)}) "
    f"({_alternatives(MOTIONS)})\\."
)
_BACKGROUND_SENTENCE = re.compile(f"The background is ({_alternatives(BACKGROUNDS)})\\.")
_GRAMMAR = (
    "one or two sentences 'A <size> <colour> <shape> <motion>.' then "
    f"'The background is <background>.' with size in {tuple(SIZES)}, colour in "
    f"{tuple(COLOURS)}, shape in {SHAPES}, motion in {MOTIONS}, background in {tuple(BACKGROUNDS)}"
)


def parse_dense_caption(text: str) -> ShapesScene:
    """Inverse of dense_caption; raises ValueError for text outside the caption grammar."""
    if not isinstance(text, str):
        raise ValueError(f"Caption must be a string, got {type(text).__name__}.")
    sentences = re.split(r"(?<=\.)\s+", text.strip())
    if not 2 <= len(sentences) <= 3:
        raise ValueError(f"Caption {text!r} is not in the Shapes grammar: expected {_GRAMMAR}.")
    background = _BACKGROUND_SENTENCE.fullmatch(sentences[-1])
    if background is None:
        raise ValueError(f"Sentence {sentences[-1]!r} is not in the grammar: expected {_GRAMMAR}.")
    objects = []
    for sentence in sentences[:-1]:
        match = _OBJECT_SENTENCE.fullmatch(sentence)
        if match is None:
            raise ValueError(f"Sentence {sentence!r} is not in the grammar: expected {_GRAMMAR}.")
        size, colour, shape, motion = match.groups()
        objects.append(ShapeObject(colour=colour, shape=shape, size=size, motion=motion))
    return ShapesScene(objects=tuple(objects), background=background.group(1))


# ---- Sampling scenes ----


def _allowed_pairs(split):
    pairs = [(colour, shape) for colour in COLOURS for shape in SHAPES]
    return [pair for pair in pairs if split != "train" or pair not in HELD_OUT_PAIRS]


def sample_scene(rng: np.random.Generator, num_frames: int, split: str) -> ShapesScene:
    """Draws objects and background; "heldout" puts a held-out pair in a random object slot."""
    _check_int("num_frames", num_frames, 1)
    _check_choice("split", split, SPLITS)
    num_objects = int(rng.integers(1, 3))
    pairs = _allowed_pairs(split)
    held_out = sorted(HELD_OUT_PAIRS)
    held_out_slot = int(rng.integers(num_objects)) if split == "heldout" else -1
    chosen = []
    for slot in range(num_objects):
        taken = {colour for colour, _ in chosen}
        candidates = [
            p for p in (held_out if slot == held_out_slot else pairs) if p[0] not in taken
        ]
        chosen.append(candidates[int(rng.integers(len(candidates)))])
    objects = []
    for colour, shape in chosen:
        size = tuple(SIZES)[int(rng.integers(len(SIZES)))]
        motion = MOTIONS[int(rng.integers(len(MOTIONS)))] if num_frames > 1 else STILL
        objects.append(ShapeObject(colour=colour, shape=shape, size=size, motion=motion))
    background = tuple(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    return ShapesScene(objects=tuple(objects), background=background)


def split_prompts(split: str, n: int = 50, seed: int = 0, num_frames: int = 9) -> list[str]:
    """n dense captions drawn from one split, deterministic in (split, seed): the prompts that
    `soraj evaluate` scores ("heldout" always names a held-out colour-shape pair)."""
    _check_choice("split", split, SPLITS)
    _check_int("n", n, 0)
    _check_int("seed", seed, 0)
    # Fixed stream numbers per split keep the prompts of experiments/shapes/results stable.
    rng = np.random.default_rng((seed, {"heldout": 0, "train": 1, "all": 2}[split]))
    return [dense_caption(sample_scene(rng, num_frames, split)) for _ in range(n)]


# ---- Placement and rendering ----


def object_extent(size: str, height: int, width: int) -> float:
    """Width (= height) in pixels of an object's bounding box."""
    return SIZES[size] * min(height, width)


def _candidate_tracks(rng, obj, num_frames, canvas, tries):
    """Centres (tries, T, 2) as (y, x) at constant velocity, fully inside the canvas."""
    half = object_extent(obj.size, *canvas) / 2
    low = half + BORDER_GAP
    high = np.array(canvas, np.float64) - half - BORDER_GAP  # (2,)
    direction = np.array(MOTION_DIRECTIONS[obj.motion], np.float64)  # (2,)
    axis_length = float(np.abs(direction) @ np.array(canvas))  # 0 for a still object
    max_shift = min(DISPLACEMENT_RANGE[1] * axis_length, float(np.abs(direction) @ (high - low)))
    shift = rng.uniform(DISPLACEMENT_RANGE[0] * axis_length, max_shift, size=(tries, 1))
    displacement = shift * direction  # (tries, 2) first to last frame
    start_low = low + np.maximum(-displacement, 0)
    start_high = high - np.maximum(displacement, 0)
    start = start_low + rng.uniform(size=(tries, 2)) * (start_high - start_low)  # (tries, 2)
    progress = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)  # (T,)
    return start[:, None, :] + progress[None, :, None] * displacement[:, None, :]


def sample_tracks(
    scene: ShapesScene, num_frames: int, height: int, width: int, rng: np.random.Generator
) -> np.ndarray:
    """Object centres (O, T, 2) as (y, x) pixels; two objects are kept apart when possible."""
    _check_canvas(num_frames, height, width)
    for obj in scene.objects:
        if num_frames == 1 and obj.motion != STILL:
            raise ValueError(f"A 1-frame clip cannot show {obj.motion!r}; use {STILL!r}.")
    canvas = (height, width)
    tries = [_candidate_tracks(rng, o, num_frames, canvas, PLACEMENT_TRIES) for o in scene.objects]
    if len(tries) == 1:
        return tries[0][:1]
    # Boxes overlap by how much they are closer than their summed half-widths, on both axes.
    # Two large objects on crossing paths rarely have a clean placement: keep the least overlap.
    reach = sum(object_extent(o.size, *canvas) / 2 for o in scene.objects) + OBJECT_GAP
    depth = np.maximum(reach - np.abs(tries[0] - tries[1]), 0.0)  # (tries, T, 2)
    overlap_area = depth.prod(axis=-1).sum(axis=-1)  # (tries,)
    best = int(np.argmin(overlap_area))  # the first clean try, deterministic
    return np.stack([tries[0][best], tries[1][best]])


def _check_canvas(num_frames, height, width):
    _check_int("num_frames", num_frames, 1)
    _check_int("height", height, MIN_CANVAS)
    _check_int("width", width, MIN_CANVAS)


def _coverage(shape, dy, dx, half):
    """Fraction (T, H, W) of each pixel inside the shape, from distances to its edges.

    clip(0.5 - distance) is a pixel's exact coverage by one axis-aligned edge; multiplying the
    edges' coverages makes the square exact and keeps a triangle's vertices from bleeding.
    """

    def edge(distance):  # distance outside the edge's half-plane, in pixels
        return np.clip(0.5 - distance, 0.0, 1.0)

    if shape == "circle":
        return edge(np.sqrt(dy * dy + dx * dx) - half)
    box = edge(np.abs(dx) - half) * edge(np.abs(dy) - half)
    if shape == "square":
        return box
    # Upward triangle: apex (-half, 0), base corners (half, +-half); side normals (+-2, -1)/sqrt5.
    sides = [edge((sign * 2 * dx - dy - half) / np.sqrt(5.0)) for sign in (1, -1)]
    return box * sides[0] * sides[1]


def render_tracks(
    scene: ShapesScene, tracks: np.ndarray, height: int, width: int, colours=None
) -> np.ndarray:
    """Anti-aliased uint8 video (T, H, W, 3); later objects are drawn over earlier ones.
    `colours` (O, 3) RGB replaces the palette colours of the objects (recolouring
    augmentation); None draws each object in its named colour."""
    num_frames = tracks.shape[1]
    if colours is None:
        colours = [COLOURS[obj.colour] for obj in scene.objects]
    colours = np.asarray(colours, np.float32)
    if colours.shape != (len(scene.objects), 3):
        raise ValueError(
            f"colours must be ({len(scene.objects)}, 3) RGB, one per object; got {colours.shape}"
        )
    rows = np.arange(height, dtype=np.float32) + 0.5  # pixel centres
    cols = np.arange(width, dtype=np.float32) + 0.5
    video = np.empty((num_frames, height, width, 3), np.float32)
    video[...] = BACKGROUNDS[scene.background]
    for obj, track, colour in zip(scene.objects, tracks.astype(np.float32), colours, strict=True):
        dy = rows[None, :, None] - track[:, 0, None, None]  # (T, H, 1)
        dx = cols[None, None, :] - track[:, 1, None, None]  # (T, 1, W)
        half = object_extent(obj.size, height, width) / 2
        alpha = _coverage(obj.shape, dy, dx, half)  # (T, H, W)
        video += alpha[..., None] * (colour - video)
    return np.rint(video).astype(np.uint8)


def render_scene(
    scene: ShapesScene, num_frames: int, height: int, width: int, rng: np.random.Generator
) -> np.ndarray:
    tracks = sample_tracks(scene, num_frames, height, width, rng)
    return render_tracks(scene, tracks, height, width)  # (T, H, W, 3)


# ---- Grain source ----


def clip_scene_tracks(seed: int, index: int, num_frames: int, height: int, width: int, split: str):
    """The scene and object centres (O, T, 2) of clip `index` of `seed`: what `clip_item`
    renders, for drawing the same clip again in other colours."""
    rng = np.random.default_rng((seed, index))
    scene = sample_scene(rng, num_frames, split)
    return scene, sample_tracks(scene, num_frames, height, width, rng)


def clip_item(
    seed: int, index: int, num_frames: int, height: int, width: int, split: str, alt_text=None
):
    """Clip `index` of `seed` at (height, width): a pure function of its arguments, as every
    Shapes source item is. "caption" is the exact dense caption (the evaluation truth);
    "caption_original" is web-style alt-text with the odds of `alt_text` (an AltTextNoise)."""
    # Imported here: the alt-text module builds on this module's vocabulary.
    from soraj.data.shapes_alt_text import AltTextNoise, original_caption

    scene, tracks = clip_scene_tracks(seed, index, num_frames, height, width, split)
    alt_text = AltTextNoise() if alt_text is None else alt_text
    return {
        "video": render_tracks(scene, tracks, height, width),  # (T, H, W, 3)
        "caption": dense_caption(scene),
        "caption_original": original_caption(scene, seed, index, alt_text),
        "short_caption": short_caption(scene),
        "structured": json.dumps(structured_caption(scene)),
        "index": index,
    }


class ShapesSource(grain.sources.RandomAccessDataSource):
    """num_clips captioned clips; clip i of a seed is a pure function of (seed, i)."""

    def __init__(
        self,
        num_clips: int,
        num_frames: int,
        height: int,
        width: int,
        seed: int = 0,
        split: str = "train",
        alt_text=None,
    ):
        _check_int("num_clips", num_clips, 1)
        _check_canvas(num_frames, height, width)
        _check_int("seed", seed, 0)
        _check_choice("split", split, SPLITS)
        self.num_clips, self.num_frames, self.height, self.width = (
            num_clips,
            num_frames,
            height,
            width,
        )
        self.seed, self.split = int(seed), split
        self.alt_text = alt_text  # AltTextNoise of "caption_original"; None: the defaults

    def __len__(self) -> int:
        return self.num_clips

    def __getitem__(self, index: int) -> dict:
        if isinstance(index, bool) or not isinstance(index, int | np.integer):
            raise TypeError(f"Clip index must be an integer, got {type(index).__name__}.")
        if not -self.num_clips <= index < self.num_clips:
            raise IndexError(f"Clip index {index} out of range for {self.num_clips} clips.")
        index = int(index) % self.num_clips
        return clip_item(
            self.seed, index, self.num_frames, self.height, self.width, self.split, self.alt_text
        )

    def __repr__(self) -> str:
        return (
            f"ShapesSource(num_clips={self.num_clips}, num_frames={self.num_frames}, "
            f"height={self.height}, width={self.width}, seed={self.seed}, split={self.split!r})"
        )
