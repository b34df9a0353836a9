"""`soraj reconstruct`: a real video through a trained VAE and back, in bounded memory.

Writes the original and its reconstruction side by side as an mp4 and prints one JSON line
with PSNR, SSIM, the compression ratio and the peak memory.
"""

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

from soraj.data.video_folder import center_crop_resize
from soraj.data.video_io import read_video, write_mp4
from soraj.eval.metrics import psnr, ssim
from soraj.eval.peak_memory import PeakMemory
from soraj.exports import config_errors, find_export, load_export_config
from soraj.models.latent_codec import LatentCodec, stored_factors, vae_config_from_dict
from soraj.models.vae import latent_shape
from soraj.models.vae_memory_plan import plan_decode, plan_encode

DEFAULT_MEMORY_BUDGET = 4 * 2**30  # bytes; the planner cuts time and space to fit it


def reconstruct_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="soraj reconstruct",
        description="encode and decode a video file with a trained VAE; report PSNR/SSIM",
    )
    parser.add_argument("--checkpoint", required=True, help="VAE export, bundle or VAE workdir")
    parser.add_argument("--input", required=True, help="a video, GIF or image file")
    parser.add_argument("--out", default="out/reconstruct", help="output directory")
    parser.add_argument(
        "--frames",
        type=int,
        default=None,
        help="frames to use, 1 + ft·k (default: all, trimmed to the largest 1 + ft·k)",
    )
    parser.add_argument("--start-frame", type=int, default=0, help="first frame to use")
    parser.add_argument("--height", type=int, default=None, help="multiple of the spatial factor")
    parser.add_argument("--width", type=int, default=None, help="multiple of the spatial factor")
    parser.add_argument(
        "--memory-budget",
        type=int,
        default=DEFAULT_MEMORY_BUDGET,
        help=f"bytes for encode and decode activations (default {DEFAULT_MEMORY_BUDGET})",
    )
    return parser


# ---- Checks that need no weights and no decoding ----


def check_args(args) -> None:
    for name in ("frames", "height", "width"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be a positive integer, got {value}")
    if args.start_frame < 0:
        raise ValueError(f"--start-frame must be ≥ 0, got {args.start_frame}")
    if args.memory_budget < 1:
        raise ValueError(
            f"--memory-budget must be a positive number of bytes, got {args.memory_budget}"
        )
    if not Path(args.input).is_file():
        raise ValueError(f"--input {args.input} is not a file")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a file; give a directory (it is created if missing)")


def check_geometry(args, temporal_factor: int, spatial_factor: int) -> None:
    ft, fs = temporal_factor, spatial_factor
    if args.frames is not None and (args.frames - 1) % ft:
        raise ValueError(
            f"--frames must be 1 + {ft}·k for this VAE (1, {1 + ft}, {1 + 2 * ft}, ...), "
            f"got {args.frames}"
        )
    for name in ("height", "width"):
        size = getattr(args, name)
        if size is not None and size % fs:
            raise ValueError(
                f"--{name} must be a multiple of the spatial factor {fs} ({fs}, {2 * fs}, ...), "
                f"got {size}"
            )


# ---- Fitting the input to the VAE ----


def fit_frames(video: np.ndarray, requested: int | None, temporal_factor: int, notes: list):
    """Exactly `requested` frames, or all frames trimmed to the largest 1 + ft·k (noted)."""
    available = video.shape[0]
    if requested is not None:
        if requested > available:
            raise ValueError(f"--frames {requested} asks for more frames than the {available} read")
        return video[:requested]
    usable = 1 + (available - 1) // temporal_factor * temporal_factor
    if usable != available:
        notes.append(f"trimmed {available} frames to {usable} = 1 + {temporal_factor}·k")
    return video[:usable]


def fit_size(video: np.ndarray, height, width, spatial_factor: int, notes: list) -> np.ndarray:
    """Resizes to --height × --width (centre crop to that aspect, then area resize); without
    them, centre-crops to the largest multiples of the spatial factor (noted)."""
    src_h, src_w = video.shape[1:3]
    fs = spatial_factor
    if src_h < fs or src_w < fs:
        raise ValueError(
            f"frames of {src_h}×{src_w} are smaller than one latent pixel ({fs}×{fs} pixels)"
        )
    if height is not None or width is not None:
        height = height or src_h // fs * fs
        width = width or src_w // fs * fs
        return center_crop_resize(video, height, width)
    height, width = src_h // fs * fs, src_w // fs * fs
    if (height, width) != (src_h, src_w):
        notes.append(f"centre-cropped {src_h}×{src_w} to {height}×{width} (multiples of {fs})")
    top, left = (src_h - height) // 2, (src_w - width) // 2
    return np.ascontiguousarray(video[:, top : top + height, left : left + width])


def compression_ratio(video_shape, latent_shape) -> float:
    """Values in, values out: T·H·W·3 / (T'·H'·W'·C)."""
    return float(np.prod(video_shape)) / float(np.prod(latent_shape))


# ---- The command ----


def reconstruct(args) -> dict:
    export = find_export(args.checkpoint, "vae")
    stored = load_export_config(export, "vae", required=("vae_config",))
    with config_errors(export):
        config = vae_config_from_dict(stored["vae_config"])
        ft, fs = stored_factors(stored)  # folded latents need whole folds of frames
    check_geometry(args, ft, fs)  # before any weights load or frames decode
    wanted = None if args.frames is None else args.start_frame + args.frames
    video, fps = read_video(args.input, max_frames=wanted)
    if args.start_frame >= video.shape[0]:
        raise ValueError(f"--start-frame {args.start_frame} is past the {video.shape[0]} frames")
    notes: list[str] = []
    video = fit_frames(video[args.start_frame :], args.frames, ft, notes)
    video = fit_size(video, args.height, args.width, fs, notes)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)

    clip = video[None]  # (1, T, H, W, 3)
    # Planning needs only shapes: a budget too small for this clip fails before weights load.
    encode_plan = plan_encode(config, clip.shape[:4], args.memory_budget)
    decode_plan = plan_decode(
        config, (1, *latent_shape(config, *clip.shape[1:4])[:3]), args.memory_budget
    )

    codec = LatentCodec.load(export)
    start = time.perf_counter()
    with PeakMemory() as peak:
        latents = np.asarray(codec.encode_within_budget(clip, args.memory_budget))
        reconstruction = np.asarray(codec.decode_within_budget(latents, args.memory_budget))[0]
    seconds = time.perf_counter() - start

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    side_by_side = np.concatenate([video, reconstruction], axis=2)  # (T, H, 2W, 3)
    video_path = write_mp4(out / f"{Path(args.input).stem}_reconstruction.mp4", side_by_side, fps)
    result = {
        "psnr": round(psnr(video, reconstruction), 4),
        "ssim": round(ssim(video, reconstruction), 5),
        "compression_ratio": round(compression_ratio(clip.shape, latents.shape), 3),
        # Above the level before encoding: the loaded weights and decoded frames are not in it.
        "peak_memory_bytes": peak.bytes,
        "peak_memory_kind": peak.kind,
        "process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "planned_peak_bytes": max(
            encode_plan.estimated_peak_bytes, decode_plan.estimated_peak_bytes
        ),
        "memory_budget": args.memory_budget,
        "frames": int(video.shape[0]),
        "height": int(video.shape[1]),
        "width": int(video.shape[2]),
        "latent_shape": list(latents.shape[1:]),
        "seconds": round(seconds, 3),
        "checkpoint": str(export),
        "input": str(args.input),
        "video": video_path,
        "notes": notes,
    }
    (out / f"{Path(args.input).stem}_reconstruction.json").write_text(json.dumps(result, indent=2))
    print(f"wrote side-by-side video (original | reconstruction): {video_path}", file=sys.stderr)
    return result


def run_reconstruct(argv: list[str]) -> dict:
    args = reconstruct_parser().parse_args(argv)
    try:
        check_args(args)
        result = reconstruct(args)
    except ValueError as error:
        sys.exit(f"soraj reconstruct: error: {error}")
    print(json.dumps(result))
    return result
