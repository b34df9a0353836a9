"""Probes of the prompting modes on Shapes clips, against ground truth and naive baselines.

For each probe clip (a one-object Shapes scene of the held-out split rendered at 21 frames,
an object moving at constant velocity), every mode runs from `soraj.generate_modes.run_mode`
as `soraj generate` runs it:
  extend forward    given frames 0..8, 4 new frames; the truth is frames 9..12
  extend backward   given frames 4..12, 4 new frames and frame 4's place; the truth 0..4
  connect           A = frames 0..8, B = frames 12..20, the gap generated; the truth 9..12
  loop              from the caption; the bridge's wrap-around against the video played as is
  image to video    frame 0 given as an image; the rest from the prompt
Metrics, in pixels after decoding (uint8 → [0, 1]):
  seam jump     the mean absolute change across each given/generated boundary over the clip's
                own mean frame-to-frame change away from the seams (1: as smooth as the clip)
  motion ratio  the mean frame-to-frame change of the generated frames over the truth's, so a
                frozen video cannot score well on seams
  direction     cosine between the object's centroid velocity over the generated frames and
                the truth's; speed ratio, their lengths
  given PSNR    of the given frames in the output against the input frames (the ceiling is the
                VAE round trip of the input)
  wrap jump     a loop's jump from its last frame to its first, over its mean change
Baselines: the truth itself, the truth through the VAE (the ceiling), a naive splice (the
inputs joined with nothing between) and a repeated frame (the last given frame held).

    .venv/bin/python experiments/probes/modes.py --checkpoint experiments/shapes/checkpoint \
        --clips 24 --out experiments/probes/results/modes.json
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

from soraj.data.shapes import FPS, STILL, clip_scene_tracks, dense_caption, render_tracks
from soraj.eval.continuity import motion_ratio, seam_jump
from soraj.eval.metrics import psnr
from soraj.eval.shapes_probe import PALETTE_NAMES, label_pixels, score_video
from soraj.generate import Generator
from soraj.generate_modes import ModeRequest, run_mode

FRAMES, HEIGHT, WIDTH = 9, 32, 32
TRUTH_FRAMES = 21


# ---- Clips -------------------------------------------------------------------------------


def probe_clips(count: int, seed: int = 7):
    """One-object held-out scenes whose 21-frame track stays on the canvas."""
    clips, index = [], 0
    while len(clips) < count:
        scene, tracks = clip_scene_tracks(seed, index, TRUTH_FRAMES, HEIGHT, WIDTH, "heldout")
        index += 1
        if len(scene.objects) != 1 or scene.objects[0].motion == STILL:
            continue
        clips.append((scene, render_tracks(scene, tracks, HEIGHT, WIDTH)))
    return clips


# ---- Metrics -----------------------------------------------------------------------------


def centroids(video, colour: str) -> np.ndarray:
    """The object's centroid (y, x) per frame, NaN where its colour is absent."""
    labels = label_pixels(np.asarray(video)) == PALETTE_NAMES.index(colour)  # (T, H, W)
    out = np.full((len(video), 2), np.nan)
    for t, mask in enumerate(labels):
        if mask.sum() >= 3:
            out[t] = np.argwhere(mask).mean(axis=0)
    return out


def velocity(points) -> np.ndarray | None:
    ok = ~np.isnan(points[:, 0])
    if ok.sum() < 2:
        return None
    frames = np.nonzero(ok)[0]
    return np.polyfit(frames, points[ok], deg=1)[0]  # (2,)


def direction_and_speed(video, truth, colour) -> tuple[float, float]:
    got, want = velocity(centroids(video, colour)), velocity(centroids(truth, colour))
    if got is None or want is None or np.linalg.norm(want) < 1e-6:
        return 0.0, 0.0
    speed = float(np.linalg.norm(got) / np.linalg.norm(want))
    cosine = float(got @ want / max(np.linalg.norm(got) * np.linalg.norm(want), 1e-9))
    return cosine, speed


# ---- One clip ----------------------------------------------------------------------------


class Prober:
    def __init__(self, generator, steps, guidance, visual_guidance):
        self.generator, self.steps = generator, steps
        self.guidance, self.visual = guidance, visual_guidance
        codec = generator.codec
        self.round_trip = jax.jit(
            lambda v: codec.decode(codec.params, codec.encode(codec.params, v))
        )

    def run(self, request, prompt, seed):
        video, info = run_mode(
            self.generator,
            request,
            prompt,
            (FRAMES, HEIGHT, WIDTH),
            seed,
            self.steps,
            self.guidance,
            self.visual,
            FPS,
        )
        assert info["given_latent_max_error"] == 0.0, info
        return video

    def vae(self, video):
        return np.asarray(self.round_trip(video[None]))[0]

    def clip(self, scene, truth, seed) -> dict:
        caption = dense_caption(scene)
        colour = scene.objects[0].colour
        rows = {}

        # Extend forward: frames 0..8 given; output = 0..3 as given, window 4..12.
        out = self.run(ModeRequest("extend_forward", videos=[truth[:9]], given=5), caption, seed)
        repeated = np.concatenate([truth[:9], np.repeat(truth[8:9], 4, axis=0)])
        ceiling = self.vae(truth[:13])
        rows["extend_forward"] = {
            "model": self._continuation(out, truth[:13], [9], slice(9, 13), slice(4, 9), colour),
            "repeated frame": self._continuation(
                repeated, truth[:13], [9], slice(9, 13), None, colour
            ),
            "truth": self._continuation(truth[:13], truth[:13], [9], slice(9, 13), None, colour),
            "truth through VAE": self._continuation(
                ceiling, truth[:13], [9], slice(9, 13), slice(4, 9), colour
            ),
        }

        # Extend backward: frames 4..12 given; output = window (0..8) then 9..12 as given.
        out = self.run(ModeRequest("extend_backward", videos=[truth[4:13]], given=5), caption, seed)
        repeated = np.concatenate([np.repeat(truth[4:5], 4, axis=0), truth[4:13]])
        rows["extend_backward"] = {
            "model": self._continuation(out, truth[:13], [5], slice(0, 5), slice(5, 9), colour),
            "repeated frame": self._continuation(
                repeated, truth[:13], [4], slice(0, 4), None, colour
            ),
            "truth": self._continuation(truth[:13], truth[:13], [5], slice(0, 5), None, colour),
            "truth through VAE": self._continuation(
                ceiling, truth[:13], [5], slice(0, 5), slice(5, 9), colour
            ),
        }

        # Connect: A = 0..8, B = 12..20; output A 0..7, window 8..16 (gap 9..12), B 17..20.
        out = self.run(ModeRequest("connect", videos=[truth[:9], truth[12:21]]), caption, seed)
        splice = np.concatenate([truth[:9], truth[13:21]])
        rows["connect"] = {
            "model": self._continuation(out, truth, [9, 13], slice(9, 13), slice(13, 17), colour),
            "naive splice": {
                "seam_jump": seam_jump(splice, [9]),
                "motion_ratio": motion_ratio(splice, truth),
            },
            "truth": self._continuation(truth, truth, [9, 13], slice(9, 13), None, colour),
        }

        # Loop from the caption: the wrap against the generated video played as is.
        request = ModeRequest("text", loop=True)
        looped = self.run(request, caption, seed)
        plain = self.run(ModeRequest("text"), caption, seed)
        rows["loop"] = {
            "model": {"wrap_jump": _wrap_jump(looped), "motion_ratio": motion_ratio(looped, truth)},
            "video played as a cycle": {
                "wrap_jump": _wrap_jump(plain),
                "motion_ratio": motion_ratio(plain, truth),
            },
        }

        # Image to video: frame 0 given; the prompt's colour, shape and motion after it.
        out = self.run(ModeRequest("image", images=[(truth[0], 0)]), caption, seed)
        text_only = plain
        rows["image_to_video"] = {
            "model": {
                "given_psnr": psnr(truth[:1], out[:1]),
                **{f"probe_{k}": v for k, v in score_video(out, caption).items()},
                "start_offset_pixels": _start_offset(out, truth, colour),
            },
            "text to video": {
                **{f"probe_{k}": v for k, v in score_video(text_only, caption).items()},
                "start_offset_pixels": _start_offset(text_only, truth, colour),
            },
            "truth through VAE": {"given_psnr": psnr(truth[:1], self.vae(truth[:9])[:1])},
        }
        return rows

    def _continuation(self, video, truth, seams, generated, given, colour) -> dict:
        row = {
            "seam_jump": seam_jump(video, seams),
            "motion_ratio": motion_ratio(video[generated], truth[generated]),
        }
        cosine, speed = direction_and_speed(video[generated], truth[generated], colour)
        row.update(direction_cosine=cosine, speed_ratio=speed)
        if given is not None:
            row["given_psnr"] = psnr(truth[given], video[given])
        return row


def _wrap_jump(video) -> float:
    cycle = np.concatenate([video, video[:1]])
    return seam_jump(cycle, [len(video)])


def _start_offset(video, truth, colour) -> float:
    got, want = centroids(video[:1], colour)[0], centroids(truth[:1], colour)[0]
    return float(np.linalg.norm(got - want)) if not np.isnan(got).any() else float(WIDTH)


# ---- Summary -----------------------------------------------------------------------------


def summarise(rows: list[dict]) -> dict:
    """Mean of each metric per mode and method over the clips."""
    summary = {}
    for mode in rows[0]:
        summary[mode] = {}
        for method in rows[0][mode]:
            metrics = rows[0][mode][method].keys()
            summary[mode][method] = {
                metric: float(statistics.fmean(r[mode][method][metric] for r in rows))
                for metric in metrics
            }
    return summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="experiments/shapes/checkpoint")
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--visual-guidance", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=Path("experiments/probes/results/modes.json"))
    args = parser.parse_args()
    if args.clips < 1:
        raise SystemExit(f"--clips must be ≥ 1, got {args.clips}")
    generator = Generator.load(args.checkpoint)
    prober = Prober(generator, args.steps, args.guidance, args.visual_guidance)
    rows, started = [], time.perf_counter()
    for i, (scene, truth) in enumerate(probe_clips(args.clips)):
        rows.append(prober.clip(scene, truth, seed=i))
        print(f"clip {i + 1}/{args.clips} ({time.perf_counter() - started:.0f} s)", flush=True)
    result = {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "summary": summarise(rows),
        "clips": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
