"""Long-context memory planner: memory per device of a DiT train step on one long sequence, from
XLA's compiled memory analysis on fake CPU devices, for each preset, sequence length, context
size and context-parallel strategy; and the smallest TPU slice and GPU count that fit one
minute of 720p.

One minute of 720p at 24 fps through a 4×8×8 VAE in 1×2×2 patches is 360 latent frames × 45 ×
80 patches = 1,296,000 tokens in one sequence.

What is compiled: the whole step, as training runs it at scale: scanned blocks with full
rematerialisation (each block keeps only its input for the backward pass), bfloat16 compute
and float32 params, Adam moments and an EMA, the state donated; one sequence (batch 1) with
its tokens split over the `context` mesh axis and the params, moments and EMA sharded over it
too (soraj/sharding.py's rules: ZeRO-3 over the context group). Attention is the Pallas
splash kernel, interpreted off TPU: the compiled program then holds the kernel's blocks, not
an L×L score matrix, as on a TPU (and as a flash kernel on a GPU). Nothing runs: every input
is abstract, so an XL model at a million tokens costs only its compile. XLA:CPU's buffer
assignment is not a TPU's or a GPU's: read the numbers as the program's own needs, within
some tens of percent of what an accelerator's compiler allocates.

Verdict: a preset fits a chip when some strategy's memory per device is at most 90 % of the
chip's HBM (v5p 95 GiB, v6e 32 GiB, H100 80 GB); the smallest context size that fits is the
slice. The full grid (216 compiles, context sizes that leave a device under 1,000 tokens
skipped) takes about an hour of compiling on 2 cores; it resumes from --out, so two
processes over disjoint --tokens with their own --out files can share the work:

    .venv/bin/python experiments/bench/long_context.py \\
        --out experiments/bench/results/long_context.json
    .venv/bin/python experiments/bench/long_context.py --presets S/2 --tokens 10000 --contexts 1 4
    .venv/bin/python experiments/bench/long_context.py \\
        --table experiments/bench/results/long_context.json     # README's tables
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=256")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import optax  # noqa: E402

from soraj import sharding  # noqa: E402
from soraj.models.context_attention import CONTEXT_STRATEGIES, ulysses_group  # noqa: E402
from soraj.models.dit import DIT_PRESETS, DiT  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "long_context.json"
MINUTE_720P = 360 * 45 * 80  # tokens: 1 + 24·60/4 latent frames ≈ 360, 720/16 × 1280/16 patches
GIB = 2**30
# Usable HBM per chip (GiB) and the slice names per chip count.
CHIPS = {
    "v5p": 95.0,  # v5p-N has N/2 chips (N counts TensorCores)
    "v6e": 32.0,  # v6e-N has N chips
    "H100": 80e9 / GIB,
}
HEADROOM = 0.9
LATENT_CHANNELS = 16  # the 4×8×8 real-footage VAE
TEXT_TOKENS, TEXT_WIDTH = 64, 384


def slice_name(chip: str, chips: int) -> str:
    if chip == "v5p":
        return f"v5p-{2 * chips} ({chips} chips)"
    if chip == "v6e":
        return f"v6e-{chips}"
    return f"{chips} × H100" + (f" ({math.ceil(chips / 8)} hosts)" if chips > 8 else "")


def padded_length(tokens: int, context: int) -> int:
    """The row length: tokens rounded up so every device holds whole 128-token splash blocks."""
    multiple = 128 * context
    return -(-tokens // multiple) * multiple


def step_memory(preset: str, tokens: int, context: int, strategy: str) -> dict:
    """Compiled memory per device (bytes) of one train step; strategy is ignored at context 1."""
    config = dataclasses.replace(
        DIT_PRESETS[preset],
        latent_channels=LATENT_CHANNELS,
        text_width=TEXT_WIDTH,
        attention_backend="splash",
        context_parallel=strategy,
        scan_blocks=True,
        remat="full",
        modulation="per_segment",
        dtype="bfloat16",
    )
    dit = DiT(config)
    length = padded_length(tokens, context)
    features = config.patch_features
    batch = dict(
        x_t=jax.ShapeDtypeStruct((1, length, features), jnp.float32),
        t=jax.ShapeDtypeStruct((1, length), jnp.float32),
        coords=jax.ShapeDtypeStruct((1, length, 3), jnp.int32),
        segment_ids=jax.ShapeDtypeStruct((1, length), jnp.int32),
        text=jax.ShapeDtypeStruct((1, 1, TEXT_TOKENS, TEXT_WIDTH), jnp.float32),
        text_mask=jax.ShapeDtypeStruct((1, 1, TEXT_TOKENS), jnp.bool_),
        target=jax.ShapeDtypeStruct((1, length, features), jnp.float32),
    )
    optimizer = optax.adamw(1e-4)

    def init(rng):
        small = {k: jnp.zeros((1, 4) + v.shape[2:], v.dtype) for k, v in batch.items()}
        small["text"] = jnp.zeros(batch["text"].shape)
        small["text_mask"] = jnp.ones(batch["text_mask"].shape, bool)
        small["segment_ids"] = jnp.ones((1, 4), jnp.int32)
        inputs = {k: v for k, v in small.items() if k != "target"}
        params = dit.init(rng, **inputs)["params"]
        return {"params": params, "opt": optimizer.init(params), "ema": params}

    boxed = jax.eval_shape(init, jax.random.key(0))  # params keep their logical names
    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)  # noqa: E731
    state = jax.tree.map(
        lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, boxed, is_leaf=is_box
    )

    def train_step(state, batch):
        def loss_fn(params):
            inputs = {k: v for k, v in batch.items() if k != "target"}
            out = dit.apply({"params": params}, **inputs)
            return jnp.mean(jnp.square(out - batch["target"]))

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt = optimizer.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        ema = jax.tree.map(lambda e, p: 0.9999 * e + 1e-4 * p, state["ema"], params)
        return {"params": params, "opt": opt, "ema": ema}, loss

    mesh = sharding.make_mesh(
        ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1, context=context)),
        jax.devices()[:context],
    )
    replicated = sharding.replicated(mesh)
    # Params, Adam moments and EMA sharded by the rules: over the context group (ZeRO-3).
    state_shardings = sharding.logical_shardings(boxed, mesh, sharding.DIT_RULES)
    batch_shardings = {
        k: replicated if k.startswith("text") else sharding.tokens_sharding(mesh) for k in batch
    }

    def traced(state, batch):
        with (
            jax.sharding.use_abstract_mesh(mesh.abstract_mesh),
            nn.logical_axis_rules(sharding.DIT_RULES),
        ):
            return train_step(state, batch)

    step = jax.jit(
        traced,
        in_shardings=(state_shardings, batch_shardings),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
    )
    started = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    analysis = compiled.memory_analysis()
    total = (
        analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        - analysis.alias_size_in_bytes
        + analysis.temp_size_in_bytes
    )
    param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state["params"]))
    return {
        "preset": preset,
        "tokens": tokens,
        "row_length": length,
        "context": context,
        "strategy": strategy if context > 1 else "none",
        "bytes_per_device": int(total),
        "state_bytes": int(analysis.argument_size_in_bytes),
        "temp_bytes": int(analysis.temp_size_in_bytes),
        "param_bytes": int(param_bytes),  # the whole model's, before sharding
        "compile_seconds": time.perf_counter() - started,
    }


def strategies_for(preset: str, context: int) -> list[str]:
    if context == 1:
        return ["all_gather"]  # any: one device exchanges nothing
    heads = DIT_PRESETS[preset].num_heads
    allowed = []
    for strategy in CONTEXT_STRATEGIES:
        if strategy == "ulysses" and heads % context:
            continue  # heads must divide by the context size
        if strategy == "usp" and ulysses_group(context, heads) in (1, context):
            continue  # the same as ring (group 1) or Ulysses (group = context)
        allowed.append(strategy)
    return allowed


def verdicts(rows: list[dict]) -> dict:
    """Per preset: the smallest context size (and slice) whose best strategy fits each chip at
    the one-minute 720p length, or None when no measured size fits."""
    out = {}
    for preset in sorted({r["preset"] for r in rows}):
        minute = [r for r in rows if r["preset"] == preset and r["tokens"] == MINUTE_720P]
        out[preset] = {}
        for chip, gib in CHIPS.items():
            fits = [r for r in minute if r["bytes_per_device"] <= HEADROOM * gib * GIB]
            if not fits:
                out[preset][chip] = None
                continue
            best = min(fits, key=lambda r: (r["context"], r["bytes_per_device"]))
            out[preset][chip] = {
                "context": best["context"],
                "strategy": best["strategy"],
                "gib_per_device": best["bytes_per_device"] / GIB,
                "slice": slice_name(chip, best["context"]),
            }
    return out


STRATEGY_MARKS = {"none": "", "all_gather": "a", "ulysses": "u", "ring": "r", "usp": "p"}


def markdown_tables(rows: list[dict]) -> str:
    """README's tables: the least memory per device (GiB) over strategies, per preset, length
    and context size (its strategy marked), then the per-slice verdicts at one minute."""
    contexts = sorted({r["context"] for r in rows})
    lines = [
        "| preset | tokens | " + " | ".join(f"c={c}" for c in contexts) + " |",
        "|---|---|" + "---|" * len(contexts),
    ]
    presets = sorted({r["preset"] for r in rows}, key=lambda p: DIT_PRESETS[p].width)
    for preset in presets:
        for tokens in sorted({r["tokens"] for r in rows if r["preset"] == preset}):
            cells = []
            for context in contexts:
                measured = [
                    r
                    for r in rows
                    if (r["preset"], r["tokens"], r["context"]) == (preset, tokens, context)
                ]
                if not measured:
                    cells.append("·")
                    continue
                best = min(measured, key=lambda r: r["bytes_per_device"])
                cells.append(
                    f"{best['bytes_per_device'] / GIB:.3g}{STRATEGY_MARKS[best['strategy']]}"
                )
            lines.append(f"| {preset} | {tokens:,} | " + " | ".join(cells) + " |")
    lines += ["", "| preset | " + " | ".join(CHIPS) + " |", "|---|" + "---|" * len(CHIPS)]
    per_preset = verdicts(rows)
    for preset in presets:
        per_chip = per_preset[preset]
        cells = [
            "does not fit"
            if v is None
            else f"{v['slice']}, {v['strategy']}, {v['gib_per_device']:.1f} GiB"
            for v in per_chip.values()
        ]
        lines.append(f"| {preset} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["S/2", "B/2", "L/2", "XL/2"])
    parser.add_argument("--tokens", nargs="+", type=int, default=[10_000, 100_000, MINUTE_720P])
    parser.add_argument(
        "--contexts", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32, 64, 128, 256]
    )
    parser.add_argument(
        "--min-tokens-per-device",
        type=int,
        default=1000,
        help="skip context sizes that leave fewer tokens a device: the row is then mostly "
        "128-token splash padding, and the interconnect, not memory, is what limits",
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--table", type=Path, help="print README's tables from this result file; compile nothing"
    )
    args = parser.parse_args()
    if args.table:
        print(markdown_tables(json.loads(args.table.read_text())["rows"]))
        return
    if max(args.contexts) > jax.device_count():
        raise SystemExit(
            f"context {max(args.contexts)} needs that many devices, sees {jax.device_count()}"
        )
    rows = []
    previous = json.loads(args.out.read_text())["rows"] if args.out and args.out.exists() else []
    done = {(r["preset"], r["tokens"], r["context"], r["strategy"]) for r in previous}
    rows.extend(previous)
    # The one-minute length first: the verdicts need only it.
    for tokens in sorted(args.tokens, reverse=True):
        for preset in args.presets:
            for context in args.contexts:
                if tokens / context < args.min_tokens_per_device:
                    continue
                for strategy in strategies_for(preset, context):
                    key = (preset, tokens, context, strategy if context > 1 else "none")
                    if key in done:
                        continue
                    row = step_memory(preset, tokens, context, strategy)
                    rows.append(row)
                    print(
                        f"{preset} {tokens} tokens, context {context} {row['strategy']}: "
                        f"{row['bytes_per_device'] / GIB:.2f} GiB per device "
                        f"(compiled in {row['compile_seconds']:.0f} s)",
                        flush=True,
                    )
                    if args.out:  # after every row: a long run can stop and go on
                        args.out.parent.mkdir(parents=True, exist_ok=True)
                        result = {"rows": rows, "verdicts": verdicts(rows), "chips_gib": CHIPS}
                        args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(verdicts(rows), indent=1))
    if args.out:
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
