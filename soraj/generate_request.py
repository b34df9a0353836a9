"""One generation request, prompt to files, as `soraj generate` and `soraj demo` make it: every
check that needs no weights first, then the bundle loads, the sampler compiles and runs with
progress on stderr, and the video is written at the frame rate the model was trained on."""

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np

from soraj import exports
from soraj.data.shapes import FPS as SHAPES_FPS
from soraj.long_generation import total_frames
from soraj.sampling_progress import status


@dataclasses.dataclass
class GenerateRequest:
    """What `soraj generate` takes, field for flag (argparse's names), so the mode and
    expansion checks (soraj/generate_modes.py, soraj/captions/expand_cli.py) read it as they
    read the parsed flags."""

    prompt: str
    checkpoint: str
    # None: the clip size the model was trained on (trained_on in its export), else 9×32×32.
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    seed: int = 0
    steps: int = 30
    guidance: float = 4.0
    out: str = "out/generate"
    fps: float | None = None  # None: the frame rate the model was trained on
    expand: str = "none"
    expand_endpoint: str | None = None
    expand_model: str | None = None
    expander_checkpoint: str | None = None
    image: list = dataclasses.field(default_factory=list)  # the prompting modes' fields
    video: str | None = None
    extend: str | None = None
    given_frames: int | None = None
    connect: list | None = None
    loop: bool = False
    edit: str | None = None
    strength: float | None = None
    visual_guidance: float = 1.0
    seconds: float | None = None

    @classmethod
    def from_args(cls, args) -> "GenerateRequest":
        return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls)})


@dataclasses.dataclass
class CheckedRequest:
    """A request that passed every check, with what the checks found out."""

    request: GenerateRequest
    mode: object  # generate_modes.ModeRequest, or None for text to video
    expansion: object  # captions.expand.Expansion of the prompt
    fps: float  # what the files are written at
    fps_note: str | None  # said when the rate is a guess


@dataclasses.dataclass
class Generated:
    video: np.ndarray  # uint8 (T, H, W, 3)
    paths: dict  # {"mp4" | "gif" | "json": path written}
    seconds: float
    fps: float
    revised_prompt: str  # the prompt the video was generated from (after --expand)


# ---- Checks before any weights load ---------------------------------------------------------


def add_fps_argument(parser) -> None:
    """--fps, shared by `soraj generate` and `soraj demo`."""
    parser.add_argument(
        "--fps",
        type=float,
        help="frame rate of the written video (default: the rate the model was trained on, "
        "from the checkpoint's dit/config.json)",
    )


def check_flags(request: GenerateRequest) -> None:
    """The checks that need neither weights nor the checkpoint's configs."""
    if not request.prompt.strip():
        raise ValueError(
            "--prompt is empty: give a text prompt, e.g. 'A large red circle moves "
            "up. The background is black.'"
        )
    if request.steps < 1:
        raise ValueError(f"--steps must be a positive integer, got {request.steps}")
    if request.frames is not None and request.frames < 1:
        raise ValueError(
            f"--frames must be a positive integer of the form 1 + ft·k, got {request.frames}"
        )
    for flag, value in (
        ("--guidance", request.guidance),
        ("--visual-guidance", request.visual_guidance),
    ):
        if not math.isfinite(value):
            raise ValueError(f"{flag} must be a finite number (e.g. 1, 4, 7.5), got {value}")
    if request.strength is not None and not math.isfinite(request.strength):
        raise ValueError(f"--strength must be a number in (0, 1], got {request.strength}")
    if request.fps is not None and not (math.isfinite(request.fps) and request.fps > 0):
        raise ValueError(
            f"--fps must be a positive number of frames per second (e.g. 8, 24, 29.97), "
            f"got {request.fps}"
        )
    out = Path(request.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a directory (it is created if missing)")


def check_request(request: GenerateRequest) -> CheckedRequest:
    """Every check that needs no weights, so bad input fails (ValueError) before anything
    loads; then the prompt expansion --expand asks for."""
    from soraj.captions.expand import Expansion
    from soraj.captions.expand_cli import (
        check_expand_args,
        check_prompt_length,
        expand_for_generation,
    )
    from soraj.generate import BundleGeometry, resolve_bundle
    from soraj.generate_modes import prepare_mode

    check_flags(request)
    if not Path(request.checkpoint).exists():
        raise ValueError(f"--checkpoint {request.checkpoint} does not exist")
    bundle = resolve_bundle(request.checkpoint)
    geometry = BundleGeometry.read(bundle)
    stored = exports.load_export_config(bundle / "dit", "dit", required=("dit_config",))
    fill_trained_size(request, stored)
    geometry.check(request.frames, request.height, request.width)
    latent_frames = (request.frames - 1) // geometry.temporal_factor + 1
    mode = prepare_mode(request, geometry.temporal_factor, latent_frames)
    text_model = stored["dit_config"].get("conditioning", "text") != "class"
    if text_model:
        check_prompt_length(request.prompt, bundle, "prompt")
        check_expand_args(request)
    else:
        check_class_request(request, mode, stored.get("classes", []))
    fps, fps_note = output_fps(request.fps, stored, bundle / "dit")
    if mode is not None and mode.seconds is not None:
        frames = total_frames(mode.seconds, fps)
        if frames < request.frames:
            raise ValueError(
                f"--seconds {mode.seconds:g} at {fps:g} fps is {frames} frames, fewer than one "
                f"window of --frames {request.frames}; for a clip within one window use --frames"
            )
    # Last, as it may run a model or call a server; a class name is not text to expand.
    if text_model:
        expansion = expand_for_generation(request)
    else:
        expansion = Expansion(request.prompt, request.prompt, "none", True, "")
    return CheckedRequest(request, mode, expansion, fps, fps_note)


# A bundle that records no clip size was trained on the first Shapes configs' clips.
FALLBACK_CLIP = {"frames": 9, "height": 32, "width": 32}


def trained_clip(stored: dict) -> dict:
    """{"frames", "height", "width"} of the clips a DiT export was trained on (trained_on's
    num_frames, height and width; FALLBACK_CLIP where it records none)."""
    trained_on = stored.get("trained_on", {})
    if not isinstance(trained_on, dict):
        return dict(FALLBACK_CLIP)
    recorded = {
        "frames": trained_on.get("num_frames"),
        "height": trained_on.get("height"),
        "width": trained_on.get("width"),
    }
    return {
        key: value if isinstance(value, int) and value > 0 else FALLBACK_CLIP[key]
        for key, value in recorded.items()
    }


def fill_trained_size(request: GenerateRequest, stored: dict) -> None:
    """--frames, --height and --width left out take the model's training clip size."""
    for key, value in trained_clip(stored).items():
        if getattr(request, key) is None:
            setattr(request, key, value)


def check_class_request(request: GenerateRequest, mode, class_names) -> None:
    """A class-conditional model takes one of its class names (or an index) as the prompt;
    it has no text to expand and no prompting modes."""
    from soraj.generate_class import class_labels

    if mode is not None:
        raise ValueError(
            "prompting modes need a text-conditional checkpoint; this one is class-conditional"
        )
    if request.expand != "none":
        raise ValueError(
            f"--expand {request.expand} rewrites text prompts; this checkpoint is "
            "class-conditional: give a class name as --prompt and leave --expand at none"
        )
    class_labels(tuple(class_names), [request.prompt])


# The sources of Shapes clips, which play at the Shapes world's rate (config.data.source).
SHAPES_SOURCES = ("shapes", "shapes_canvases", "shapes_tfds")


def output_fps(fps: float | None, stored: dict, directory: Path) -> tuple[float, str | None]:
    """(frame rate, note): --fps, else the rate of the DiT's training data (trained_on.fps of
    its export's config.json, stored in `directory`). Exports written before that field have
    none: one trained on Shapes clips plays at the Shapes world's rate, said in the note; one
    trained on anything else needs --fps. A stored rate that is not a positive number is a
    BundleError (--fps overrides it)."""
    if fps is not None:
        return float(fps), None
    path = Path(directory) / exports.EXPORT_CONFIG
    trained_on = stored.get("trained_on", {})
    if not isinstance(trained_on, dict):
        raise exports.BundleError(
            f"{path}: trained_on is a JSON {type(trained_on).__name__}, not an object; "
            f"{exports.REMEDY}, or pass --fps"
        )
    trained = trained_on.get("fps")
    if trained is not None:
        number = isinstance(trained, int | float) and not isinstance(trained, bool)
        if not (number and math.isfinite(trained) and trained > 0):
            raise exports.BundleError(
                f"{path} gives trained_on.fps = {trained!r}, not a positive number of frames "
                f"per second; {exports.REMEDY}, or pass --fps"
            )
        return float(trained), None
    source = trained_on.get("source")
    if not trained_from_shapes(trained_on):
        data = f"source {source!r}" if source is not None else "no trained_on.source"
        if source == "recaptioned":
            data += f", whose {recaptioned_info(trained_on)} does not name a Shapes dataset here"
        raise exports.BundleError(
            f"{path} records no training frame rate (no trained_on.fps), and its training "
            f"data are not known to be Shapes clips, whose rate is known ({data}): pass --fps "
            "(the frame rate of the clips it was trained on)"
        )
    return float(SHAPES_FPS), (
        f"this checkpoint records no training frame rate ({path} has no trained_on.fps: it "
        f"was exported before the field existed); it was trained on Shapes clips "
        f"(source {source!r}), so writing at the Shapes world's {SHAPES_FPS} fps; --fps sets "
        "another"
    )


def trained_from_shapes(trained_on: dict) -> bool:
    """Whether a DiT's training data (its export's trained_on) were Shapes clips: a Shapes
    source, or a `soraj recaption` folder of a Shapes dataset (its dataset.json says so)."""
    source = trained_on.get("source")
    if source in SHAPES_SOURCES:
        return True
    if source != "recaptioned" or not trained_on.get("root"):
        return False
    try:  # the folder may be on another machine: then the input is not known to be Shapes
        info = json.loads(recaptioned_info(trained_on).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(info, dict) and info.get("kind") == "shapes_tfds"


def recaptioned_info(trained_on: dict) -> Path:
    """The dataset.json of the `soraj recaption` folder a DiT was trained on: it names the
    kind of dataset the folder recaptions."""
    from soraj.data.caption_versions import DATASET_FILE

    return Path(str(trained_on.get("root", ""))) / DATASET_FILE


# ---- Generation -----------------------------------------------------------------------------


def run_checked(checked: CheckedRequest) -> Generated:
    """Loads the bundle, samples (a bar over the steps on stderr) and writes the .mp4, .gif
    and .json under request.out, saying where."""
    from soraj.generate import Generator, TimedSampler
    from soraj.video_files import generate_to_files

    request, mode, expansion = checked.request, checked.mode, checked.expansion
    for note in mode.notes if mode else ():
        print(note)
    if checked.fps_note:
        status(f"note: {checked.fps_note}")
    status(f"loading the checkpoint {request.checkpoint}")
    started = time.perf_counter()
    generator = Generator.load(request.checkpoint)
    generator.sampler = TimedSampler(report=True)
    status(f"loaded in {time.perf_counter() - started:.1f} s")
    settings = {
        k: getattr(request, k)
        for k in ("prompt", "checkpoint", "frames", "height", "width", "seed", "steps", "guidance")
    }
    settings.update(
        expand=request.expand,
        revised_prompt=expansion.revised,
        expansion={"backend": expansion.backend, "ok": expansion.ok, "message": expansion.message},
    )
    if mode is None:
        video, paths, seconds = generate_to_files(
            generator,
            expansion.revised,
            Path(request.out),
            request.frames,
            request.height,
            request.width,
            request.seed,
            request.steps,
            request.guidance,
            settings,
            checked.fps,
        )
    else:
        from soraj.generate_modes import mode_to_files

        settings["visual_guidance"] = request.visual_guidance
        video, paths, seconds = mode_to_files(
            generator, mode, expansion.revised, request, settings, checked.fps
        )
    print(f"generated {video.shape[0]}×{video.shape[1]}×{video.shape[2]} in {seconds:.1f} s")
    for kind, path in paths.items():
        print(f"wrote {kind}: {path}")
    return Generated(video, paths, seconds, checked.fps, expansion.revised)


def generate(request: GenerateRequest) -> Generated:
    """check_request, then run_checked: bad input raises ValueError before any weights load."""
    return run_checked(check_request(request))
