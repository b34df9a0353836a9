"""Writing generated videos: NAME.mp4, NAME.gif and NAME.json side by side, named after the
prompt and seed."""

import json
import re
import time
from pathlib import Path

import numpy as np

from soraj.data.video_io import write_gif, write_mp4


def slug(prompt: str, limit: int = 48) -> str:
    return re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:limit] or "video"


def write_video_files(
    out_dir: Path, name: str, video: np.ndarray, settings: dict, fps: float
) -> dict:
    """Writes NAME.mp4 (H.264) and NAME.gif at fps (the rate the model was trained on, or the
    one asked for), and NAME.json (settings, fps and the files); returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    upscale = max(1, 256 // max(video.shape[1:3]))  # tiny canvases are upscaled for viewing
    paths = {
        "mp4": str(write_mp4(out_dir / f"{name}.mp4", video, fps, upscale=upscale)),
        "gif": str(write_gif(out_dir / f"{name}.gif", video, fps, upscale=upscale)),
    }
    paths["json"] = str(out_dir / f"{name}.json")
    record = {**settings, "fps": fps, "files": paths}
    Path(paths["json"]).write_text(json.dumps(record, indent=2))
    return paths


def generate_to_files(
    generator,
    prompt: str,
    out_dir: Path,
    frames: int,
    height: int,
    width: int,
    seed: int,
    steps: int,
    guidance: float,
    settings: dict,
    fps: float,
):
    """One text-to-video sample written by write_video_files; returns (video, paths, seconds)."""
    start = time.perf_counter()
    video = generator([prompt], frames, height, width, seed, steps, guidance)[0]
    seconds = time.perf_counter() - start
    name = f"{slug(prompt)}_seed{seed}"
    timings = {"seconds": seconds, **generator.sampler.timings}
    paths = write_video_files(out_dir, name, video, {**settings, **timings}, fps)
    return video, paths, seconds
