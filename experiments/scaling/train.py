"""Trains the scaling grid: each DiT width to each training-compute budget, on the Shapes
world at 64×64 with issue 14's per-frame VAE and latent cache (experiments/shapes/
train_frames64.sh's data and recipe; only the width and heads change).

A budget is training FLOPs in the standard count (experiments/bench/dit_flops.py: three
times the forward's useful matmuls, per-sample adaLN). Each width trains once, with a constant
learning rate after warm-up; the run stops at each budget's step, exports its EMA params to
RUNS/w<width>/budget<i>/ and resumes to the next, so a width's budgets are points on one run
(the usual way to read a compute curve off one run; warm-up and the EMA's warm-up are the
same for every budget). Widths keep the head dimension (32) and the depth.

    .venv/bin/python experiments/scaling/train.py --vae experiments/shapes/runs/vae64_frames

It reads the latent cache experiments/shapes/runs/latents64_frames (train_frames64.sh, steps
1 and 2). The default grid takes about 80 minutes on 2 cores, alone.

RUNS/plan.json records per width the parameter count, FLOPs per step, each budget's step and
the wall-clock minutes it took; experiments/scaling/evaluate.py reads it.
"""

import argparse
import ast
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from dit_flops import PackedShape, model_train_step_flops  # noqa: E402

from soraj import train  # noqa: E402
from soraj.configs import t2v  # noqa: E402
from soraj.exports import find_export  # noqa: E402
from soraj.generate import init_params  # noqa: E402
from soraj.models.conditioning import TextConfig  # noqa: E402
from soraj.models.latent_codec import LatentCodec  # noqa: E402

HEAD_DIM = 32
WIDTHS = (96, 192, 384)
# Training FLOPs (standard count) per budget, each twice the last: the largest is about what
# train_frames64.sh's DiT spends at width 192 (3000 steps = 1.5e14), halved, so that the
# grid fits the two-hour budget of a 2-core CPU.
BUDGETS = (2e13, 4e13, 8e13)
# train_frames64.sh's settings that differ from t2v.py:tiny64-frames's defaults; a 100-step
# warm-up, so that the smallest budget of the widest model (about 100 steps) is not all warm-up.
RECIPE = (
    "--config.text.max_tokens=32",
    "--config.batch_size=4",
    "--config.data.latent_cache=experiments/shapes/runs/latents64_frames",
    "--config.optim.warmup_steps=100",
)
# Everything flops_per_step reads.
COUNTED_FIELDS = (
    "model.width",
    "model.depth",
    "model.num_heads",
    "model.mlp_ratio",
    "model.patch_size",
    "text.max_tokens",
    "data.num_frames",
    "data.height",
    "data.width",
    "data.row_length",
    "data.max_segments",
    "batch_size",
)


def overrides_dict(overrides) -> dict:
    return dict(item.removeprefix("--config.").split("=", 1) for item in overrides)


def apply_overrides(config, overrides):
    """--config.a.b=value strings onto an ml_collections config, values parsed as the field's
    type (what absl's config flags do)."""
    for key, text in overrides_dict(overrides).items():
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        current = node[leaf]
        if isinstance(current, bool):
            value = text.lower() in ("1", "true")
        elif isinstance(current, int | float):
            value = type(current)(float(text))
        elif isinstance(current, tuple):
            value = tuple(ast.literal_eval(text))  # a literal tuple, as absl parses it
        else:
            value = text
        node[leaf] = value
    return config


def check_trained_config(workdir: Path, config) -> None:
    """The FLOPs count used this script's reading of the overrides: the run's own config.json
    (what `soraj train` parsed) must agree on everything the count depends on."""
    trained = json.loads((workdir / "config.json").read_text())
    for path in COUNTED_FIELDS:
        section, name = path.split(".") if "." in path else (None, path)
        ran = trained[section][name] if section else trained[name]
        counted = config[section][name] if section else config[name]
        if list(np.atleast_1d(ran)) != list(np.atleast_1d(counted)):
            raise RuntimeError(f"{path}: the run used {ran!r}, the FLOPs count {counted!r}")


def flops_per_step(config, vae: Path) -> tuple[int, int]:
    """(standard train-step FLOPs, DiT parameter count) of config's model on its Shapes clips."""
    codec = LatentCodec.load(vae)
    text = TextConfig(max_tokens=config.text.max_tokens)
    dit = train.make_dit(config, codec, text)
    data = config.data
    latent = codec.latent_shape(data.num_frames, data.height, data.width)
    pt, ph, pw = config.model.patch_size
    clip_tokens = (latent[0] // pt) * (latent[1] // ph) * (latent[2] // pw)
    segments = min(data.max_segments, data.row_length // clip_tokens)
    shape = PackedShape(
        rows=config.batch_size,
        row_length=data.row_length,
        segments=segments,
        text_tokens=text.max_tokens,
        text_width=text.width,
        segment_tokens=clip_tokens,
    )
    abstract = jax.eval_shape(lambda: init_params(dit, text, jax.random.key(0)))
    params = sum(x.size for x in jax.tree.leaves(abstract["dit"]))
    return model_train_step_flops(dit.config, shape), int(params)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vae", type=Path, required=True)
    parser.add_argument("--preset", default="tiny64-frames", help="soraj/configs/t2v.py's argument")
    parser.add_argument("--widths", type=int, nargs="+", default=list(WIDTHS))
    parser.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS))
    parser.add_argument("--runs", type=Path, default=Path("experiments/scaling/runs"))
    parser.add_argument("--override", action="append", default=list(RECIPE))
    args = parser.parse_args()
    vae = find_export(args.vae, "vae")
    plan_path = args.runs / "plan.json"
    plan = json.loads(plan_path.read_text()) if plan_path.exists() else {}
    for width in args.widths:
        model = (f"--config.model.width={width}", f"--config.model.num_heads={width // HEAD_DIM}")
        overrides = [*args.override, *model, f"--config.vae_checkpoint={vae}"]
        config = apply_overrides(t2v.get_config(args.preset), overrides)
        step_flops, params = flops_per_step(config, vae)
        workdir = args.runs / f"w{width}"
        entry = plan.setdefault(str(width), {"params": params, "flops_per_step": step_flops})
        entry.setdefault("budgets", {})
        for index, budget in enumerate(sorted(args.budgets)):
            steps = max(1, round(budget / step_flops))
            target = workdir / f"budget{index}"
            if target.exists():
                print(f"width {width}: budget {budget:.2g} already at {target}")
                continue
            print(
                f"width {width} ({params / 1e6:.2f} M params): {steps} steps = {budget:.2g} FLOPs"
            )
            start = time.perf_counter()
            preset = f"--config=soraj/configs/t2v.py:{args.preset}"
            command = [sys.executable, "-m", "soraj", "train", preset]
            command += [*overrides, f"--config.total_steps={steps}", f"--workdir={workdir}"]
            subprocess.run(command, check=True)
            check_trained_config(workdir, config)
            shutil.copytree(workdir / "export", target)
            entry["budgets"][str(index)] = {
                "flops": steps * step_flops,
                "steps": steps,
                "minutes": (time.perf_counter() - start) / 60,
                "export": str(target),
            }
            entry["overrides"] = overrides
            plan_path.parent.mkdir(parents=True, exist_ok=True)
            plan_path.write_text(json.dumps(plan, indent=1))
    print(f"wrote {plan_path}")


if __name__ == "__main__":
    main()
