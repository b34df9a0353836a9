"""The `soraj` command: generate, demo, train, train-vae, make-dataset, evaluate."""

import argparse
import sys
from pathlib import Path

from soraj.cpu_runtime import prepare_command_process

COMMANDS = (
    "generate",
    "demo",
    "train",
    "train-vae",
    "make-dataset",
    "evaluate",
    "reconstruct",
    "cache-latents",
    "train-expander",
    "recaption",
    "train-captioner",
    "caption",
)
USAGE = f"""usage: soraj COMMAND [options]

commands:
  generate      prompt → mp4 + gif + json from a checkpoint
  demo          generate from the shipped Shapes checkpoint (--train-quick-checkpoint: train one)
  train         train the DiT: --config=soraj/configs/t2v.py:tiny --workdir=DIR [--config.x=...]
  train-vae     train the VAE: --config=soraj/configs/vae.py:tiny --workdir=DIR [--config.x=...]
  make-dataset  write a dataset as TFDS ArrayRecord (shapes)
  evaluate      shapes-probe accuracy of a checkpoint on held-out prompts
  reconstruct   a video file through a VAE and back: side-by-side mp4 + PSNR/SSIM JSON line
  cache-latents encode a dataset once with a VAE (ArrayRecord latents + captions [+ text])
  train-expander train the learned prompt expander: --config=soraj/configs/expander.py:tiny
                 --workdir=DIR (then: soraj generate --expand learned --expander-checkpoint DIR)
  train-captioner train the video captioner: --config=soraj/configs/captioner.py:tiny --workdir=DIR
  caption       caption a video file with a trained captioner: one JSON line
  recaption     a new caption version (dense + short) of a dataset: --backend soraj|openai

`soraj COMMAND --help` shows a command's options. Allowed commands: {", ".join(COMMANDS)}"""


# ---- Training commands (absl flags + ml_collections configs) --------------------------------


def run_trainer(command: str, argv: list[str]):
    """A training command: absl flags and an ml_collections config. Bad input (a flag, a config
    value, a path) ends in one line on stderr and exit code 2, before the first step; an error
    raised once steps run keeps its traceback, as an internal bug should."""
    from absl import app, flags, logging
    from ml_collections import config_flags

    defaults = {
        "train": "t2v",
        "train-vae": "vae",
        "train-expander": "expander",
        "train-captioner": "captioner",
    }
    default = f"soraj/configs/{defaults[command]}.py"

    def refuse(message: str):
        print(f"soraj {command}: error: {message}", file=sys.stderr)
        sys.exit(2)  # a usage error (soraj/distributed.py lists the exit codes)

    def flag_error_line(error: BaseException) -> str:
        """absl and ml_collections fold the config file's traceback into their message, and
        report --config.x for a field the config lacks as KeyError("'x'", with a "Did you mean"
        line when one is close) inside an AttributeError: the error they came from, one line."""
        chain = [error]
        while chain[-1].__cause__ or chain[-1].__context__:
            chain.append(chain[-1].__cause__ or chain[-1].__context__)
        unknown = [e.args[0] for e in chain if isinstance(e, KeyError) and e.args]
        if unknown:
            return "unknown config field " + str(unknown[0]).strip().replace("\n", "; ")
        text = str(error).strip()
        return text if "\n" not in text else str(chain[-1]).strip().splitlines()[-1].strip()

    def parse_flags(args: list[str]) -> list[str]:
        try:
            # Defined here because ml_collections parses the default config file, with the
            # --config.x overrides of args, as soon as the flag is defined.
            config_flags.DEFINE_config_file(
                "config", default, "training config file[:arg]", lock_config=True, sys_argv=args
            )
            flags.DEFINE_string(
                "workdir", None, "where checkpoints, metrics and samples go", required=True
            )
            rest = flags.FLAGS(args)
            flags.FLAGS.config.keys()  # a config file that failed to load raises only when read
        except (flags.Error, OSError, AttributeError, KeyError) as error:
            refuse(flag_error_line(error))
        return rest

    def main(_):
        logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
        config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
        if command == "train-expander":  # one process, one CPU, no checkpoints: no step loop
            from soraj.captions.train_expander import prepare
        elif command == "train":
            from soraj.train import prepare
        elif command == "train-vae":
            from soraj.train_vae import prepare
        else:
            from soraj.captions.train_captioner import prepare
        from soraj import distributed

        # With several processes, one process's exception ends every process at once
        # (run_main); in a single process, bad input found while setting up ends in one line.
        try:
            run = distributed.run_main(prepare, config, workdir)
        except (ValueError, FileNotFoundError) as error:
            refuse(" ".join(str(error).split()))
        distributed.run_main(run.train)

    app.run(main, argv=[f"soraj {command}", *argv], flags_parser=parse_flags)


# ---- generate ---------------------------------------------------------------------------------


def generate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="soraj generate", description="prompt → video")
    parser.add_argument("--checkpoint", required=True, help="bundle (dit/ + vae/) or train workdir")
    parser.add_argument("--prompt", required=True)
    for flag in ("--frames", "--height", "--width"):
        parser.add_argument(flag, type=int, help="default: what the model was trained on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--out", default="out/generate")
    from soraj.captions.expand_cli import add_expand_arguments
    from soraj.generate_modes import add_mode_arguments
    from soraj.generate_request import add_fps_argument

    add_fps_argument(parser)
    add_expand_arguments(parser)
    add_mode_arguments(parser)
    return parser


def run_generate(argv: list[str]):
    """Parses the flags and hands them to soraj/generate_request.py, which checks them all
    before any weights load."""
    args = generate_parser().parse_args(argv)
    from soraj.exports import BundleError
    from soraj.generate_request import GenerateRequest, check_request, run_checked

    try:
        checked = check_request(GenerateRequest.from_args(args))
    except ValueError as error:
        sys.exit(f"soraj generate: error: {error}")
    try:
        return run_checked(checked)
    except BundleError as error:  # damage that only reading the weights finds
        sys.exit(f"soraj generate: error: {error}")


def run_make_dataset(argv: list[str]):
    parser = argparse.ArgumentParser(
        prog="soraj make-dataset", description="write a dataset as TFDS ArrayRecord"
    )
    parser.add_argument("name", choices=["shapes"])
    parser.add_argument("--data-dir", default="data/tfds")
    parser.add_argument("--num-clips", type=int, default=1000)
    parser.add_argument("--num-validation", type=int, default=100)
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--height", type=int, default=32)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from soraj.data.tfds_shapes import make_shapes_dataset

    make_shapes_dataset(
        args.data_dir,
        args.num_clips,
        args.frames,
        args.height,
        args.width,
        seed=args.seed,
        num_validation=args.num_validation,
    )


def parse_canvases(text: str) -> tuple[tuple[int, int], ...]:
    try:
        return tuple(tuple(int(x) for x in c.split("x", 1)) for c in text.split(","))
    except ValueError:
        raise ValueError(
            f"--canvases must be HxW,HxW,... (e.g. 32x64,64x32), got {text!r}"
        ) from None


def parse_patch(text: str) -> tuple[int, int, int]:
    patch = tuple(int(x) for x in text.split(",")) if text.replace(",", "").isdigit() else ()
    if len(patch) != 3 or min(patch) < 1:
        raise ValueError(f"--patch must be three positive ints pt,ph,pw (e.g. 1,2,2), got {text!r}")
    return patch


def cache_latents_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="soraj cache-latents",
        description="encode a dataset once into normalised VAE latents for DiT training "
        "(--config.data.latent_cache=OUT)",
    )
    parser.add_argument("--vae", required=True, help="VAE export, generation bundle or workdir")
    parser.add_argument("--out", required=True, help="new folder for the cache")
    parser.add_argument(
        "--source",
        choices=["shapes", "shapes_canvases"],
        default="shapes",
        help="shapes: every clip --frames×--height×--width; shapes_canvases: clips on --canvases "
        "cut to native size (soraj/data/native_size.py) within --token-budget patches of --patch",
    )
    parser.add_argument("--canvases", default="32x64,64x32", help="HxW,HxW,... (shapes_canvases)")
    parser.add_argument("--token-budget", type=int, default=96, help="(shapes_canvases)")
    parser.add_argument("--patch", default="1,2,2", help="the DiT's pt,ph,pw (shapes_canvases)")
    parser.add_argument("--num-clips", type=int, default=1000)
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--height", type=int, default=32)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="the Shapes seed (= config.seed)")
    parser.add_argument("--split", choices=["train", "heldout", "all"], default="train")
    parser.add_argument("--text-states", action="store_true", help="also cache MiniLM states")
    parser.add_argument("--max-tokens", type=int, default=64, help="MiniLM tokens per caption")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="captions per MiniLM call and clips per progress step; the VAE encodes one clip "
        "per call, as training does, so cached latents equal on-the-fly ones bit for bit",
    )
    return parser


def run_cache_latents(argv: list[str]):
    parser = cache_latents_parser()
    args = parser.parse_args(argv)
    if not args.vae.strip():
        parser.error("--vae is empty: give a VAE export, a generation bundle or a workdir")
    try:
        # Every check that needs no weights first, so bad input fails before anything loads.
        if Path(args.out).exists():
            raise ValueError(f"--out {args.out} already exists; give a new directory")
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be a positive integer, got {args.batch_size}")
        from soraj.data.latent_cache import canvases_description, shapes_description
        from soraj.data.latent_cache_writer import write_latent_cache
        from soraj.data.shapes import ShapesSource
        from soraj.data.shapes_canvases import ShapesCanvasSource
        from soraj.exports import find_export
        from soraj.models.latent_codec import LatentCodec
        from soraj.models.text import MiniLMEncoder

        if args.source == "shapes":
            source = ShapesSource(
                args.num_clips, args.frames, args.height, args.width, args.seed, args.split
            )
            description = shapes_description(
                args.num_clips, args.frames, args.height, args.width, args.seed, args.split
            )
        else:
            canvases = parse_canvases(args.canvases)
            patch = parse_patch(args.patch)
            source = ShapesCanvasSource(
                args.num_clips, canvases, args.frames, args.seed, args.split
            )
        vae_dir = find_export(args.vae, "vae")
        codec = LatentCodec.load(vae_dir)
        if args.source == "shapes":
            codec.check_shape(args.frames, args.height, args.width)
        else:
            description = canvases_description(
                args.num_clips,
                args.frames,
                canvases,
                args.seed,
                args.split,
                args.token_budget,
                (codec.temporal_factor, codec.spatial_factor),
                patch,
            )
        text_encoder = MiniLMEncoder(max_tokens=args.max_tokens) if args.text_states else None
        out = write_latent_cache(
            args.out, codec, source, description, args.batch_size, vae_dir, text_encoder
        )
    except ValueError as error:
        sys.exit(f"soraj cache-latents: error: {error}")
    print(f"wrote a latent cache of {len(source)} clips to {out}")
    print(f"train on it with --config.data.latent_cache={out}")
    return out


def main(argv: list[str] | None = None):
    if argv is None:  # the command line itself, not a call from Python
        try:
            prepare_command_process()  # before JAX is imported: soraj/cpu_runtime.py
        except ValueError as error:
            sys.exit(f"soraj: error: {error}")
        argv = sys.argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command in ("train", "train-vae", "train-expander", "train-captioner"):
        run_trainer(command, rest)
    elif command == "generate":
        run_generate(rest)
    elif command == "demo":
        from soraj.demo import run_demo

        run_demo(rest)
    elif command == "make-dataset":
        run_make_dataset(rest)
    elif command == "evaluate":
        from soraj.eval.evaluate import evaluate_command

        evaluate_command(rest)
    elif command == "reconstruct":
        from soraj.reconstruct import run_reconstruct

        run_reconstruct(rest)
    elif command == "cache-latents":
        run_cache_latents(rest)
    elif command == "caption":
        from soraj.captions.caption_command import run_caption

        run_caption(rest)
    elif command == "recaption":
        from soraj.captions.recaption import run_recaption

        run_recaption(rest)
    else:
        sys.exit(f"soraj: unknown command {command!r}; allowed: {', '.join(COMMANDS)}")
