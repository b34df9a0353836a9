"""The memory planner's per-chunk estimate against XLA's compiled memory analysis, for every VAE
preset over a grid of chunk shapes; also the count of level-sized activation tensors XLA's
numbers imply (what ACTIVATION_TENSORS in soraj/models/vae_memory_plan.py is rounded up from).

    .venv/bin/python experiments/bench/vae_memory_estimate.py     # about 2 minutes on 2 cores
"""

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp

from soraj.models import vae_memory_plan
from soraj.models.vae import VAE_PRESETS, VideoVAE
from soraj.models.vae_chunked import apply_chunk

RESULTS = Path(__file__).parent / "results" / "vae_memory_estimate.json"
# (batch, pixel frames in the chunk, height, width)
SHAPES = [(1, 4, 32, 32), (1, 16, 32, 32), (2, 8, 64, 32), (1, 8, 64, 64), (1, 16, 96, 64)]


def xla_chunk_call_bytes(config, stage, batch, frames, h, w) -> int:
    """temp + argument + output bytes of one later-chunk call, as XLA compiles it."""
    model, ft, fs = VideoVAE(config), config.temporal_factor, config.spatial_factor
    init_video = jnp.zeros((1, 1 + ft, fs, fs, 3))
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), init_video)["params"])
    if stage == "encode":
        shape, n = (lambda t: (batch, t, h, w, 3)), frames
    else:
        shape, n = (lambda t: (batch, t, h // fs, w // fs, config.latent_channels)), frames // ft
    first = jax.ShapeDtypeStruct(shape(1), jnp.float32)
    method = f"{stage}_chunk"
    _, cache = jax.eval_shape(lambda p, x: apply_chunk(model, method, p, None, x), params, first)
    x = jax.ShapeDtypeStruct(shape(n), jnp.float32)
    stats = apply_chunk.lower(model, method, params, cache, x).compile().memory_analysis()
    return stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default=",".join(VAE_PRESETS))
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    rows, result = [], {"backend": jax.default_backend()}
    print(
        f"{'preset':14s} {'stage':6s} {'B,T,H,W':>14s} {'XLA MiB':>9s} {'est MiB':>9s} "
        f"{'est/XLA':>7s} {'tensors':>7s}"
    )
    for preset in args.presets.split(","):
        config = VAE_PRESETS[preset]
        for stage in vae_memory_plan.STAGES:
            for b, t, h, w in SHAPES:
                measured = xla_chunk_call_bytes(config, stage, b, t, h, w)
                estimate = vae_memory_plan.chunk_call_bytes(config, stage, b, t, h, w)
                activations = vae_memory_plan._activation_bytes(config, stage, b, t, h, w)
                k = vae_memory_plan.ACTIVATION_TENSORS[stage]
                # The tensor count that would make the estimate match XLA exactly.
                implied = k * (measured - (estimate - activations)) / activations
                big_f32 = config.dtype == "float32" and h >= 64
                rows.append((stage, estimate / measured, implied, big_f32))
                name = f"{preset}_{stage}_b{b}_t{t}_{h}x{w}"
                result[f"xla_bytes_{name}"] = measured
                result[f"estimated_bytes_{name}"] = int(estimate)
                result[f"implied_tensors_{name}"] = implied
                print(
                    f"{preset:14s} {stage:6s} {f'{b},{t},{h},{w}':>14s} "
                    f"{measured / 2**20:9.1f} {estimate / 2**20:9.1f} "
                    f"{estimate / measured:7.2f} {implied:7.1f}",
                    flush=True,
                )
    ratios = [ratio for _, ratio, _, _ in rows]
    result.update(ratio_min=min(ratios), ratio_max=max(ratios))
    # Where activations dominate (float32, frames ≥ 64 px high), the implied count is stable;
    # elsewhere params and fixed buffers dominate and the count says little.
    for stage in vae_memory_plan.STAGES:
        implied = [tensors for s, _, tensors, big in rows if s == stage and big]
        result[f"{stage}_implied_tensors_float32_64px_min"] = min(implied)
        result[f"{stage}_implied_tensors_float32_64px_max"] = max(implied)
        print(
            f"{stage}: {min(implied):.1f}-{max(implied):.1f} level-sized tensors (float32, ≥ 64 px)"
        )
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"estimate / XLA from {min(ratios):.2f} to {max(ratios):.2f}; wrote {args.out}")


if __name__ == "__main__":
    main()
