"""Drift of long generation (`soraj generate --seconds S`): per held-out Shapes prompt, a video
of S seconds made window after window by extension with history, as `soraj generate` makes it.
Metrics, in pixels after decoding:
  seam jump     the mean change across the window seams over the mean change elsewhere
                (1: as smooth across the seams as between them; soraj/eval/continuity.py)
  motion kept   the mean frame-to-frame change of the last window's frames over the first
                window's (1: as much motion at the end as at the start; 0: frozen)
  probe         the shapes probe (every attribute of the prompt) on the first window's frames
                and on the last window's: what the prompt says should still hold at the end
Baseline: the same prompts as one window each (the first window of the long video is exactly
that), so the probe's drop from first to last window is the drift.

    .venv/bin/python experiments/probes/long_video.py --checkpoint experiments/shapes/checkpoint \\
        --prompts 8 --seconds 30 --out experiments/probes/results/long_video.json
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from soraj.data.shapes import FPS, split_prompts
from soraj.eval.bootstrap import bootstrap_interval
from soraj.eval.continuity import frame_changes, seam_jump
from soraj.eval.shapes_probe import score_video
from soraj.generate import Generator
from soraj.generate_modes import ModeRequest, run_mode
from soraj.prompting import default_given_frames


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="experiments/shapes/checkpoint")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--height", type=int, default=32)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    generator = Generator.load(args.checkpoint)
    ft = generator.codec.config.temporal_factor
    latent_frames = (args.frames - 1) // ft + 1
    given = default_given_frames(latent_frames, ft, forward=True)
    prompts = split_prompts("heldout", args.prompts, args.seed, args.frames)
    shape = (args.frames, args.height, args.width)
    rows, started = [], time.perf_counter()
    for index, prompt in enumerate(prompts):
        request = ModeRequest("text", seconds=args.seconds, given=given)
        video, info = run_mode(
            generator,
            request,
            prompt,
            shape,
            args.seed + index,
            args.steps,
            args.guidance,
            1.0,
            FPS,
        )
        first, last = video[: args.frames], video[-args.frames :]
        first_scores, last_scores = score_video(first, prompt), score_video(last, prompt)
        row = {
            "prompt": prompt,
            "frames": len(video),
            "windows": info["long"]["windows"],
            "seam_jump": seam_jump(video, info["long"]["seams"]),
            "motion_kept": float(
                frame_changes(last).mean() / max(frame_changes(first).mean(), 1e-6)
            ),
            "first_window": first_scores,
            "last_window": last_scores,
        }
        rows.append(row)
        print(
            f"{index + 1}/{len(prompts)} {prompt!r}: seam jump {row['seam_jump']:.2f}, motion "
            f"kept {row['motion_kept']:.2f}, fully right first {first_scores['fully_right']:.0f} "
            f"last {last_scores['fully_right']:.0f} ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )

    def summary(values):
        values = np.asarray(values, np.float64)
        low, high = bootstrap_interval(values, np.random.default_rng(0))
        return {"mean": float(values.mean()), "interval_95": [low, high]}

    result = {
        "settings": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}},
        "given_frames": given,
        "fps": FPS,
        "seam_jump": summary([r["seam_jump"] for r in rows]),
        "motion_kept": summary([r["motion_kept"] for r in rows]),
        "first_window": {
            key: summary([r["first_window"][key] for r in rows])
            for key in ("overall", "fully_right")
        },
        "last_window": {
            key: summary([r["last_window"][key] for r in rows])
            for key in ("overall", "fully_right")
        },
        "rows": rows,
        "seconds": time.perf_counter() - started,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
