"""`soraj generate`'s prompting modes: reading and checking the inputs before any weights load,
then one or two windows through Generator.sample_window (soraj/prompting.py has the plans)."""

import dataclasses
import math
import time
from pathlib import Path

import jax
import numpy as np

from soraj.data.video_io import VideoReadError, read_video
from soraj.long_generation import LongPlan, generate_long, total_frames
from soraj.prompting import PlanBuilder, bridge_given, default_given_frames, fit_frames


@dataclasses.dataclass
class ModeRequest:
    """A checked prompting-mode request, its inputs already read and fitted to the window."""

    mode: str  # text, image, extend_forward, extend_backward, connect or edit
    images: list = dataclasses.field(default_factory=list)  # [(uint8 (H, W, 3), pixel frame)]
    videos: list = dataclasses.field(default_factory=list)  # uint8 (T, H, W, 3) each
    given: int = 0  # --given-frames of an extension
    strength: float = 1.0  # SDEdit
    loop: bool = False
    seconds: float | None = None  # --seconds: a video longer than the window, by extension
    notes: list = dataclasses.field(default_factory=list)  # what was done to the inputs
    inputs: dict = dataclasses.field(default_factory=dict)  # for the output JSON


def add_mode_arguments(parser) -> None:
    modes = parser.add_argument_group("prompting modes (one model, one sampler)")
    modes.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="PATH[@FRAME]",
        help="image to video: the image at pixel frame FRAME (0 by default, or 'last'); "
        "repeat for several keyframes",
    )
    modes.add_argument("--video", metavar="PATH", help="the video to --extend")
    modes.add_argument("--extend", choices=("forward", "backward"))
    modes.add_argument(
        "--given-frames",
        type=int,
        metavar="K",
        help="frames given to an extension (--extend, or each window of --seconds): 1 + ft·k; "
        "default about half the window",
    )
    modes.add_argument("--connect", nargs=2, metavar=("A", "B"), help="a transition from A to B")
    modes.add_argument("--loop", action="store_true", help="a seamless loop (with --image or text)")
    modes.add_argument(
        "--seconds",
        type=float,
        metavar="S",
        help="a video of S seconds, longer than the window: the first window from the prompt "
        "(or --image), each next one a forward extension given the last --given-frames frames "
        "(default about half the window) of the video so far",
    )
    modes.add_argument("--edit", metavar="PATH", help="SDEdit this video with the prompt")
    modes.add_argument("--strength", type=float, help="SDEdit strength, 0 < S ≤ 1")
    modes.add_argument(
        "--visual-guidance",
        type=float,
        default=1.0,
        help="guidance on the given frames (dual with --guidance); 1 keeps them in both branches",
    )


def _read(path: str, what: str, height: int, width: int, request: ModeRequest) -> np.ndarray:
    if not Path(path).is_file():
        raise ValueError(f"{what} {path} does not exist")
    try:
        video, _ = read_video(path)
    except VideoReadError as error:
        raise ValueError(f"{what}: {error}") from None
    fitted, note = fit_frames(video, height, width)
    request.notes.append(f"{what} {path}: {len(video)} frame(s), {note}")
    return fitted


def parse_image_spec(text: str, frames: int) -> tuple[str, int]:
    """PATH[@FRAME] → (path, pixel frame); FRAME is an index in [0, frames) or 'last'."""
    path, frame = text.rsplit("@", 1) if "@" in text else (text, "0")
    if frame == "last":
        return path, frames - 1
    try:
        index = int(frame)
    except ValueError:
        raise ValueError(
            f"--image {text}: FRAME must be an integer or 'last', got {frame!r}"
        ) from None
    if not 0 <= index < frames:
        raise ValueError(f"--image {text}: FRAME must be in [0, {frames - 1}] or 'last'")
    return path, index


def prepare_mode(args, ft: int, latent_frames: int) -> ModeRequest | None:
    """The request --image/--video/--extend/--connect/--loop/--edit ask for, or None for
    plain text to video; every input read, fitted and checked, with no weights loaded."""
    frames, height, width = args.frames, args.height, args.width
    chosen = [
        name
        for name, on in (
            ("--image", bool(args.image)),
            ("--extend", bool(args.extend or args.video)),
            ("--connect", bool(args.connect)),
            ("--edit", bool(args.edit or args.strength is not None)),
        )
        if on
    ]
    if len(chosen) > 1:
        raise ValueError(f"{' and '.join(chosen)} cannot be combined; choose one mode")
    if args.loop and chosen and chosen != ["--image"]:
        raise ValueError(f"--loop works from text or from --image, not with {chosen[0]}")
    seconds = getattr(args, "seconds", None)
    if seconds is not None:
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"--seconds must be a positive number of seconds, got {seconds}")
        if args.loop or (chosen and chosen != ["--image"]):
            other = "--loop" if args.loop else chosen[0]
            raise ValueError(f"--seconds works from text or from --image, not with {other}")
    if (args.loop or args.extend or args.connect or getattr(args, "seconds", None)) and frames == 1:
        raise ValueError(
            "--frames 1 is an image: it cannot be extended, connected, looped or made longer "
            "with --seconds"
        )
    if args.visual_guidance < 0:
        raise ValueError(f"--visual-guidance must be ≥ 0, got {args.visual_guidance}")
    if args.given_frames is not None and not (args.extend or seconds is not None):
        raise ValueError("--given-frames is for --extend and --seconds")
    if not chosen and not args.loop and seconds is None:
        return None
    request = ModeRequest("text", loop=args.loop, seconds=seconds)
    if seconds is not None:
        request.given = check_given_frames(args.given_frames, latent_frames, ft, "forward", frames)
        request.inputs.update(seconds=seconds, given_frames=request.given)
    if args.image:
        request.mode = "image"
        specs = [parse_image_spec(text, frames) for text in args.image]
        if args.loop and any(frame == frames - 1 for _, frame in specs):
            raise ValueError(
                "--loop with an image at the last frame: the loop bridge replaces the video's "
                "end, so the image would not be kept; put it at frame 0 or between"
            )
        for path, frame in specs:
            image = _read(path, "--image", height, width, request)
            if len(image) != 1:
                raise ValueError(f"--image {path} holds {len(image)} frames; give a still image")
            request.images.append((image[0], frame))
        request.inputs.update(images=[f"{p}@{f}" for p, f in specs])
    elif args.extend or args.video:
        if not (args.extend and args.video):
            raise ValueError("an extension needs both --video PATH and --extend forward|backward")
        request.mode = f"extend_{args.extend}"
        given = check_given_frames(args.given_frames, latent_frames, ft, args.extend, frames)
        video = _read(args.video, "--video", height, width, request)
        if len(video) < given:
            raise ValueError(f"--video has {len(video)} frames, fewer than --given-frames {given}")
        end = "last" if args.extend == "forward" else "first"
        request.notes.append(f"--video: its {end} {given} frames are given to the window")
        request.videos, request.given = [video], given
        request.inputs = {"video": args.video, "extend": args.extend, "given_frames": given}
    elif args.connect:
        request.mode = "connect"
        tail, head = bridge_given(latent_frames, ft)
        check_bridge_window(latent_frames, ft, "--connect")
        for path, need in zip(args.connect, (tail, head), strict=True):
            video = _read(path, "--connect", height, width, request)
            if len(video) < need:
                raise ValueError(f"--connect {path} has {len(video)} frames; it needs {need}")
            request.videos.append(video)
        request.inputs = {"connect": list(args.connect)}
    elif args.edit or args.strength is not None:
        if args.edit is None or args.strength is None:
            raise ValueError("SDEdit needs both --edit PATH and --strength S")
        if not 0.0 < args.strength <= 1.0:
            raise ValueError(f"--strength must be in (0, 1], got {args.strength}")
        request.mode, request.strength = "edit", float(args.strength)
        video = _read(args.edit, "--edit", height, width, request)
        if len(video) < frames:
            raise ValueError(f"--edit {args.edit} has {len(video)} frames, fewer than {frames}")
        if len(video) > frames:
            request.notes.append(f"--edit: its first {frames} of {len(video)} frames are edited")
        request.videos = [video]
        request.inputs = {"edit": args.edit, "strength": request.strength}
    if args.loop:
        check_bridge_window(latent_frames, ft, "--loop")
        request.inputs["loop"] = True
    return request


def check_given_frames(given, latent_frames: int, ft: int, direction: str, frames: int) -> int:
    """--given-frames (None: the default) of a forward or backward extension, checked."""
    forward = direction == "forward"
    given = given or default_given_frames(latent_frames, ft, forward)
    # forward: k + 1 latent frames given from window frame 0; backward: latents 1..k of the
    # video end the window. Either way one latent frame at least is generated.
    low, high = (0, latent_frames - 2) if forward else (1, latent_frames - 1)
    k, off = divmod(given - 1, ft)
    if given < 1 or off or not low <= k <= high:
        raise ValueError(
            f"--given-frames must be 1 + {ft}·k with k from {low} to {high} for a "
            f"{direction} extension in a window of {frames} frames, got {given}"
        )
    return given


def check_bridge_window(latent_frames: int, ft: int, flag: str) -> None:
    """A bridge gives n latent frames at each end and generates one at least between."""
    n = max(1, latent_frames // 4)
    if 2 * n + 1 > latent_frames:
        raise ValueError(
            f"{flag} needs a window of at least {1 + ft * 2 * n} frames (--frames), so that "
            "one latent frame lies between the given ends"
        )


def run_mode(generator, request: ModeRequest, prompt, shape, seed, steps, guidance, visual, fps):
    """The output video (uint8 (T, H, W, 3)) of a (frames, height, width) window (or of
    --seconds at fps, window after window) and what the JSON records: the mode, its inputs,
    and the largest difference between the given and the sampled latents (0: exact)."""
    codec = generator.codec
    encode = jax.jit(codec.encode)
    frames = shape[0]
    latent_shape = codec.latent_shape(*shape)
    builder = PlanBuilder(
        lambda clip: np.asarray(encode(codec.params, clip[None]))[0],
        latent_shape,
        codec.temporal_factor,
        frames,
    )
    if request.mode == "image":
        plan = builder.images(request.images)
    elif request.mode == "extend_forward":
        plan = builder.extend_forward(request.videos[0], request.given)
    elif request.mode == "extend_backward":
        plan = builder.extend_backward(request.videos[0], request.given)
    elif request.mode == "connect":
        plan = builder.connect(*request.videos)
    elif request.mode == "edit":
        plan = builder.edit(request.videos[0], request.strength)
    else:
        plan = builder.text()
    if request.seconds is not None:
        long_plan = LongPlan(total_frames(request.seconds, fps), frames, request.given)

        def sample(window_plan, window_seed):
            return generator.sample_window(
                prompt, window_plan, window_seed, steps, guidance, visual
            )

        video, given_error = generate_long(sample, builder, plan, long_plan, seed)
        info = {
            "mode": request.mode,
            "inputs": request.inputs,
            "given_latent_max_error": given_error,
            "long": {
                "frames": long_plan.total_frames,
                "fps": fps,
                "windows": long_plan.num_windows,
                "seams": long_plan.seams,
            },
        }
        return video, info
    latents, window = generator.sample_window(prompt, plan, seed, steps, guidance, visual)
    given_error = float(np.abs(latents - plan.reference)[plan.level == 0].max(initial=0.0))
    video = plan.assemble(window)
    info = {"mode": request.mode, "inputs": request.inputs, "given_latent_max_error": given_error}
    if request.loop:  # a second window: the bridge from the video's end back to its start
        bridge = builder.loop_bridge(window, latents)
        bridge_latents, bridge_window = generator.sample_window(
            prompt, bridge, seed + 1, steps, guidance, visual
        )
        bridge_error = np.abs(bridge_latents - bridge.reference)[bridge.level == 0]
        info["given_latent_max_error"] = max(given_error, float(bridge_error.max(initial=0.0)))
        info["loop"] = {"frames": int(len(bridge.before) + len(bridge_window))}
        video = bridge.assemble(bridge_window)
    return video, info


def mode_to_files(generator, request: ModeRequest, prompt: str, args, settings: dict, fps: float):
    """Runs a mode request and writes NAME.mp4 and .gif at fps and NAME.json (with the mode,
    its inputs and the timings) under args.out; returns (video, paths, seconds)."""
    from soraj.video_files import slug, write_video_files

    start = time.perf_counter()
    shape = (args.frames, args.height, args.width)
    video, info = run_mode(
        generator,
        request,
        prompt,
        shape,
        args.seed,
        args.steps,
        args.guidance,
        args.visual_guidance,
        fps,
    )
    seconds = time.perf_counter() - start
    suffix = "_loop" if request.loop else ""
    if request.seconds is not None:
        suffix = f"_{request.seconds:g}s"
    name = f"{request.mode}{suffix}_{slug(prompt)}_seed{args.seed}"
    record = {**settings, **info, "input_notes": request.notes, "seconds": seconds}
    record.update(generator.sampler.timings)
    return video, write_video_files(Path(args.out), name, video, record, fps), seconds
