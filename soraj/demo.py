"""`soraj demo` / `make demo`: a video from a prompt with the shipped Shapes checkpoint, scored
by the shapes probe.

--train-quick-checkpoint first trains a quick checkpoint (VAE then DiT, about 15 minutes on a
2-core CPU, with progress bars) into OUT/quick_checkpoint and generates from it.
"""

import argparse
import sys
import time
from pathlib import Path

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
    """The tiny configs, shortened: what --train-quick-checkpoint trains."""
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
    print(f"training a quick checkpoint in {workdir}")
    start = time.perf_counter()
    train_vae.train_and_evaluate(vae_config, workdir / "vae")
    dit_config.vae_checkpoint = str(workdir / "vae" / "export")
    train.train_and_evaluate(dit_config, workdir / "dit")
    print(f"quick checkpoint trained in {(time.perf_counter() - start) / 60:.1f} minutes")
    return workdir / "dit" / "export"


def demo_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="soraj demo", description=__doc__)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument(
        "--checkpoint",
        help=f"a generation bundle or `soraj train` workdir (default: {SHIPPED_CHECKPOINT})",
    )
    parser.add_argument(
        "--train-quick-checkpoint",
        action="store_true",
        help="train a quick checkpoint (about 15 minutes on 2 CPU cores) into "
        "OUT/quick_checkpoint and generate from it, instead of using --checkpoint",
    )
    parser.add_argument("--out", default="out/demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, default=4.0)
    from soraj.captions.expand_cli import add_expand_arguments
    from soraj.generate_request import add_fps_argument

    add_fps_argument(parser)
    add_expand_arguments(parser)
    return parser


def check_demo_flags(args, request) -> None:
    if args.train_quick_checkpoint and args.checkpoint:
        raise ValueError(
            "--train-quick-checkpoint and --checkpoint cannot be combined: the quick "
            "checkpoint is trained into OUT/quick_checkpoint"
        )
    if not args.train_quick_checkpoint and not Path(request.checkpoint).exists():
        raise ValueError(
            f"--checkpoint {request.checkpoint} does not exist; give a generation bundle "
            "(dit/ + vae/) or a `soraj train` workdir, or pass --train-quick-checkpoint to "
            "train a quick one (about 15 minutes on 2 CPU cores)"
        )


def run_demo(argv: list[str]):
    args = demo_parser().parse_args(argv)
    from soraj.captions.expand_cli import check_expand_args
    from soraj.exports import BundleError
    from soraj.generate_request import GenerateRequest, check_flags, check_request, run_checked

    request = GenerateRequest(
        prompt=args.prompt,
        checkpoint=args.checkpoint or str(SHIPPED_CHECKPOINT),
        out=args.out,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        fps=args.fps,
        expand=args.expand,
        expand_endpoint=args.expand_endpoint,
        expand_model=args.expand_model,
        expander_checkpoint=args.expander_checkpoint,
    )
    try:  # everything that can be checked before a 15-minute training run is
        check_demo_flags(args, request)
        check_flags(request)
        check_expand_args(request)
    except ValueError as error:
        sys.exit(f"soraj demo: error: {error}")
    if args.train_quick_checkpoint:
        request.checkpoint = str(train_quick_checkpoint(Path(args.out) / "quick_checkpoint"))
    try:
        checked = check_request(request)
    except ValueError as error:
        sys.exit(f"soraj demo: error: {error}")
    try:
        generated = run_checked(checked)
    except BundleError as error:  # damage that only reading the weights finds
        sys.exit(f"soraj demo: error: {error}")
    from soraj.eval.shapes_probe import score_video

    try:  # the probe scores the prompt the video was generated from
        scores = score_video(generated.video, generated.revised_prompt)
    except ValueError:
        print("shapes probe: the prompt is not a Shapes-world caption, so it is not scored")
        return
    print("shapes probe: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))
