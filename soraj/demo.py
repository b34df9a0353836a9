"""`soraj demo` / `make demo`: a video from a prompt with the shipped Shapes checkpoint.

Without the shipped checkpoint, it first trains a quick one (VAE then DiT, about 15 minutes on
a 2-core CPU, with progress bars) into OUT/quick_checkpoint.
"""

import argparse
import time
from pathlib import Path

from soraj.eval.shapes_probe import score_video

SHIPPED_CHECKPOINT = (
    Path(__file__).resolve().parent.parent / "experiments" / "shapes" / "checkpoint"
)
DEFAULT_PROMPT = (
    "A large red circle moves to the right. A small blue square stays still. "
    "The background is black."
)
# The quick run's step counts: sized from `experiments/shapes/NOTES.md`'s measured step rates
# to finish within about 15 minutes on a 2-core CPU.
QUICK_VAE_STEPS = 600
QUICK_DIT_STEPS = 1000


def quick_configs():
    """The tiny configs, shortened: what the demo trains when no checkpoint is shipped."""
    from soraj.configs import t2v, vae

    vae_config = vae.get_config("tiny")
    vae_config.total_steps = QUICK_VAE_STEPS
    vae_config.save_every = vae_config.sample_every = QUICK_VAE_STEPS
    dit_config = t2v.get_config("tiny")
    dit_config.total_steps = QUICK_DIT_STEPS
    dit_config.save_every = dit_config.sample_every = QUICK_DIT_STEPS
    return vae_config, dit_config


def train_quick_checkpoint(workdir: Path) -> Path:
    from soraj import train, train_vae

    vae_config, dit_config = quick_configs()
    print(f"no checkpoint at the given path: training a quick one in {workdir}")
    start = time.perf_counter()
    train_vae.train_and_evaluate(vae_config, workdir / "vae")
    dit_config.vae_checkpoint = str(workdir / "vae" / "export")
    train.train_and_evaluate(dit_config, workdir / "dit")
    print(f"quick checkpoint trained in {(time.perf_counter() - start) / 60:.1f} minutes")
    return workdir / "dit" / "export"


def run_demo(argv: list[str]):
    parser = argparse.ArgumentParser(prog="soraj demo", description=__doc__)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--checkpoint", default=str(SHIPPED_CHECKPOINT))
    parser.add_argument("--out", default="out/demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, default=4.0)
    from soraj.captions.expand_cli import add_expand_arguments

    add_expand_arguments(parser)
    args = parser.parse_args(argv)
    out = Path(args.out)
    checkpoint = Path(args.checkpoint)
    if not checkpoint.exists():
        checkpoint = train_quick_checkpoint(out / "quick_checkpoint")
    from soraj.cli import run_generate

    generate_argv = [
        "--checkpoint",
        str(checkpoint),
        "--prompt",
        args.prompt,
        "--out",
        str(out),
        "--seed",
        str(args.seed),
        "--steps",
        str(args.steps),
        "--guidance",
        str(args.guidance),
        "--expand",
        args.expand,
    ]
    for flag, value in (
        ("--expand-endpoint", args.expand_endpoint),
        ("--expand-model", args.expand_model),
        ("--expander-checkpoint", args.expander_checkpoint),
    ):
        generate_argv += [flag, value] if value else []
    video, generated = run_generate(generate_argv)
    try:  # the probe scores the prompt the video was generated from
        scores = score_video(video, generated.revised_prompt)
    except ValueError:
        print("shapes probe: the prompt is not a Shapes-world caption, so it is not scored")
        return
    print("shapes probe: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))
