"""`soraj caption --checkpoint DIR --input VIDEO [--mode dense|short] [--beam N]`: one JSON line
with the caption of a video file."""

import argparse
import json
import sys
from pathlib import Path

from soraj.captions.captioner import MODES
from soraj.exports import find_export


def caption_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="soraj caption", description="video file → caption")
    parser.add_argument(
        "--checkpoint", required=True, help="captioner export, its workdir, or a bundle"
    )
    parser.add_argument("--input", required=True, help="a video file (mp4, avi, gif, ...)")
    parser.add_argument("--mode", choices=MODES, default="dense")
    parser.add_argument("--beam", type=int, default=1, help="beam width (1: greedy)")
    return parser


def run_caption(argv: list[str]) -> dict:
    args = caption_parser().parse_args(argv)
    try:
        if args.beam < 1:
            raise ValueError(f"--beam must be a positive integer (1: greedy), got {args.beam}")
        if not Path(args.input).is_file():
            raise ValueError(f"--input {args.input} is not a file; give a video file")
        directory = find_export(args.checkpoint, "captioner")
        from soraj.captions.captioner import Captioner
        from soraj.data.video_io import read_video

        video, _ = read_video(args.input)  # (T, H, W, 3) uint8
        captioner = Captioner.load(directory)
        captions, seconds = captioner.timed_caption(video[None], args.mode, args.beam)
    except ValueError as error:
        sys.exit(f"soraj caption: error: {error}")
    result = {"caption": captions[0], "mode": args.mode, "seconds": round(seconds, 3)}
    print(json.dumps(result))
    return result
