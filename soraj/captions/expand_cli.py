"""`soraj generate --expand ...`: the expansion flags, their checks before any weights load,
and the step that prints the revised prompt and checks that it fits the text encoder."""

import argparse
import sys
from pathlib import Path

from soraj import exports
from soraj.captions.expand import BACKENDS, Expansion, expand_prompt
from soraj.captions.expander_model import SHIPPED_EXPANDER


def add_expand_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--expand",
        choices=BACKENDS,
        default="none",
        help="rewrite the prompt into a dense training-style caption first (seeded by --seed)",
    )
    parser.add_argument("--expand-endpoint", help="OpenAI-compatible base URL (--expand openai)")
    parser.add_argument("--expand-model", help="chat model name (--expand openai)")
    parser.add_argument(
        "--expander-checkpoint",
        help="a `soraj train-expander` workdir or export (--expand learned; default: shipped)",
    )


def check_expand_args(args) -> None:
    if args.expand == "openai" and not (args.expand_endpoint and args.expand_model):
        raise ValueError(
            "--expand openai needs --expand-endpoint URL (e.g. http://127.0.0.1:8080/v1) and "
            "--expand-model NAME"
        )
    if args.expand == "learned":
        folder = Path(args.expander_checkpoint or SHIPPED_EXPANDER)
        try:
            exports.find_export(folder, "expander")
        except exports.BundleError as error:
            raise exports.BundleError(
                f"--expander-checkpoint: {error}; train one with `soraj train-expander "
                "--config=soraj/configs/expander.py:tiny --workdir=DIR`"
            ) from error


def check_prompt_length(prompt: str, bundle: Path, which: str) -> None:
    """The prompt must fit the checkpoint's text encoder (it would be cut silently): counted
    with the tokenizer alone, before any weights load."""
    text = exports.load_export_config(bundle / "dit", "dit").get("text")
    if text is None:  # a class-conditional model reads class names
        return
    limit = text.get("max_tokens", 32)
    if text.get("encoder", "minilm") == "bytes":
        count, unit = len(prompt.encode("utf-8")), "bytes"
    else:
        from tokenizers import Tokenizer

        from soraj.models.text import minilm_model_dir

        tokenizer = Tokenizer.from_file(str(minilm_model_dir() / "tokenizer.json"))
        tokenizer.no_truncation()
        tokenizer.no_padding()  # the shipped file pads to 128
        count, unit = len(tokenizer.encode(prompt).ids), "MiniLM tokens with [CLS] and [SEP]"
    if count > limit:
        raise ValueError(
            f"the {which} is {count} {unit}; this checkpoint's text encoder reads at most "
            f"{limit} (its text config max_tokens): shorten it"
        )


def expand_for_generation(args) -> Expansion:
    """Expands args.prompt as --expand asks, prints the revised prompt and checks its length."""
    from soraj.generate import resolve_bundle

    expansion = expand_prompt(
        args.prompt,
        args.expand,
        seed=args.seed,
        num_frames=args.frames,
        checkpoint=args.expander_checkpoint,
        endpoint=args.expand_endpoint,
        model=args.expand_model,
    )
    if args.expand != "none":
        print(f"revised prompt ({expansion.backend}): {expansion.revised}")
        if expansion.message:
            warning = "" if expansion.ok else "warning: "
            print(f"{warning}expansion: {expansion.message}", file=sys.stderr)
    check_prompt_length(expansion.revised, resolve_bundle(args.checkpoint), "revised prompt")
    return expansion
