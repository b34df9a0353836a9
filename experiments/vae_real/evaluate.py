"""PSNR and SSIM of trained VAEs on held-out real footage and on Shapes, with compression ratios.

    .venv/bin/python experiments/vae_real/evaluate.py \
        --checkpoint experiments/vae_real/checkpoints/cpu-4x8x8-c16 \
        --checkpoint experiments/vae_real/checkpoints/cpu-4x4x4-c8 \
        --out experiments/vae_real/results/reconstruction.json

Sets (made by prepare_data.py; none of them was trained on):
- heldout_frames: clips cut from the last part of demo.mp4, whose first part is trained on;
- unseen_clip: clips from a video never used in training (vtest.avi);
- shapes: synthetic Shapes clips (the DiT's world), never used in this VAE's training.

Every clip is taken at its native size, centre-cropped to multiples of the spatial factor, and
cut to `--frames` frames. Metrics are averaged over clips.
"""

import argparse
import json
import sys
from pathlib import Path

import jax
import numpy as np

from soraj.data.shapes import ShapesSource
from soraj.data.video_io import read_video
from soraj.eval.metrics import psnr, ssim
from soraj.models.latent_codec import LatentCodec
from soraj.reconstruct import compression_ratio, fit_frames, fit_size

DATA = Path(__file__).parent / "data"
REAL_SETS = ("heldout_frames", "unseen_clip")
MEMORY_BUDGET = 4 * 2**30


def real_clips(folder: Path, frames: int, spatial_factor: int) -> list[np.ndarray]:
    entries = [json.loads(line) for line in (folder / "captions.jsonl").read_text().splitlines()]
    clips = []
    for entry in entries:
        video, _ = read_video(folder / entry["path"], max_frames=frames)
        if video.shape[0] < frames:
            continue  # a short clip cannot give `frames` frames; skipped, and counted below
        clips.append(fit_size(fit_frames(video, frames, 1, []), None, None, spatial_factor, []))
    return clips


def shapes_clips(frames: int, size: int, count: int) -> list[np.ndarray]:
    source = ShapesSource(count, frames, size, size, seed=1234, split="all")
    return [source[i]["video"] for i in range(count)]


def score(codec: LatentCodec, clips: list[np.ndarray]) -> dict:
    psnrs, ssims, ratios = [], [], []
    for clip in clips:
        latents = np.asarray(codec.encode_within_budget(clip[None], MEMORY_BUDGET))
        reconstruction = np.asarray(codec.decode_within_budget(latents, MEMORY_BUDGET))[0]
        psnrs.append(psnr(clip, reconstruction))
        ssims.append(ssim(clip, reconstruction))
        ratios.append(compression_ratio((1, *clip.shape), latents.shape))
    return {
        "psnr": round(float(np.mean(psnrs)), 3),
        "ssim": round(float(np.mean(ssims)), 4),
        "compression_ratio": round(float(np.mean(ratios)), 2),
        "num_clips": len(clips),
        "clip_shape": list(clips[0].shape[:3]),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", action="append", required=True, help="VAE export(s)")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--shapes-size", type=int, default=64)
    parser.add_argument("--shapes-clips", type=int, default=16)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    results = {"backend": jax.default_backend(), "frames": args.frames, "models": {}}
    for checkpoint in args.checkpoint:
        codec = LatentCodec.load(checkpoint)
        fs = codec.config.spatial_factor
        sets = {name: real_clips(Path(args.data) / name, args.frames, fs) for name in REAL_SETS}
        sets["shapes"] = shapes_clips(args.frames, args.shapes_size, args.shapes_clips)
        model_results = {"nominal_compression_ratio": nominal_ratio(codec)}
        for name, clips in sets.items():
            if not clips:
                sys.exit(f"no clip of {args.frames} frames in set {name}")
            model_results[name] = score(codec, clips)
            print(checkpoint, name, model_results[name], flush=True)
        results["models"][checkpoint] = model_results
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


def nominal_ratio(codec: LatentCodec) -> float:
    """ft·fs²·3 / C: the ratio for long clips, where the lone first latent frame is negligible."""
    cfg = codec.config
    return cfg.temporal_factor * cfg.spatial_factor**2 * 3 / cfg.latent_channels


if __name__ == "__main__":
    main()
