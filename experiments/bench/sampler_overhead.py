"""What the sampler costs beyond its model calls: seconds per Euler step of soraj.sample_rows
against one bare jitted DiT call on the same doubled (guidance) batch, timed in turns.

Per step the sampler also runs guidance's combination, the Euler update and the clamp of
padding, and it should cost at most 1.05× the bare call. The text side is computed once per
generation (tests/test_sample_rows.py), so it is in neither number. `soraj generate` compiles
the sampler with report_steps (a host callback per step moving a progress bar); its seconds per
step are timed in the same turns, against the sampler without it (`progress_ratio`).

Settings: the tiny DiT (t2v.py:tiny, random weights) on four 9×32×32 prompts (48 tokens each),
and the S/2 DiT on one 17×128×128 prompt through a 4×8×8 VAE (5×8×8 = 320 tokens), float32.

    .venv/bin/python experiments/bench/sampler_overhead.py      # about 2 minutes on 2 cores
"""

import argparse
import contextlib
import dataclasses
import io
import json
import os
import statistics
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp

from soraj.generate import init_params, single_request_rows
from soraj.generate_packed import request_noise
from soraj.models.conditioning import TextConfig
from soraj.models.dit import DIT_PRESETS, DiT
from soraj.sample_rows import guided_conditioning, sample_rows
from soraj.sampling_progress import StepProgress

RESULTS = Path(__file__).parent / "results"
TEXT = TextConfig(max_tokens=64)
SETTINGS = {  # name: (preset, latent channels, prompts, patch grid)
    "tiny": ("tiny", 8, 4, (3, 4, 4)),
    "small": ("S/2", 16, 1, (5, 8, 8)),
}


def timers(preset: str, channels: int, prompts: int, grid, steps: int):
    dit = DiT(dataclasses.replace(DIT_PRESETS[preset], latent_channels=channels))
    params = nn.unbox(init_params(dit, TEXT, jax.random.key(0)))
    tokens = grid[0] * grid[1] * grid[2]
    key = jax.random.key(1)
    conditioning = dict(
        text=jax.random.normal(key, (prompts, 1, TEXT.max_tokens, dit.config.text_width)),
        text_mask=jnp.ones((prompts, 1, TEXT.max_tokens), bool),
        null_text=jnp.zeros((TEXT.max_tokens, dit.config.text_width)),
        null_mask=jnp.ones((TEXT.max_tokens,), bool),
    )
    noise = request_noise(0, prompts, tokens, dit.config.patch_features)
    rows = single_request_rows(noise, grid, 1.0, conditioning)
    static = dict(dit=dit, text_config=TEXT, num_steps=steps)
    sampler = sample_rows.lower(params, rows, jnp.float32(4.0), **static).compile()
    reporting = sample_rows.lower(
        params, rows, jnp.float32(4.0), **static, report_steps=True
    ).compile()

    both = guided_conditioning(params, rows, dit, TEXT)  # what the sampler hoists
    doubled = {k: jnp.concatenate([rows[k], rows[k]]) for k in ("noise", "coords", "segment_ids")}
    t = jnp.full(doubled["segment_ids"].shape, 0.5)

    def denoise(params, x, t, coords, segment_ids, conditioning):
        return dit.apply({"params": params}, x, t, coords, segment_ids, **conditioning)

    args = (params["dit"], doubled["noise"], t, doubled["coords"], doubled["segment_ids"], both)
    bare = jax.jit(denoise).lower(*args).compile()

    def sampler_step_seconds():
        started = time.perf_counter()
        jax.block_until_ready(sampler(params, rows, jnp.float32(4.0)))
        return (time.perf_counter() - started) / steps

    def progress_step_seconds():  # the bar is drawn, into a buffer rather than the table
        started = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()), StepProgress(steps):
            jax.block_until_ready(reporting(params, rows, jnp.float32(4.0)))
        return (time.perf_counter() - started) / steps

    def bare_seconds():
        started = time.perf_counter()
        jax.block_until_ready(bare(*args))
        return time.perf_counter() - started

    return sampler_step_seconds, progress_step_seconds, bare_seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS / "sampler_overhead.json")
    args = parser.parse_args()
    result = {"steps": args.steps, "rounds": args.rounds, "load_before": os.getloadavg()[0]}
    for name, (preset, channels, prompts, grid) in SETTINGS.items():
        sampler_step, progress_step, bare = timers(preset, channels, prompts, grid, args.steps)
        sampler_step(), progress_step(), bare()  # first calls allocate
        ratios, steps, calls, progress_steps, progress_ratios = [], [], [], [], []
        for _ in range(args.rounds):
            step = sampler_step()
            with_progress = progress_step()
            call = statistics.median(bare() for _ in range(args.steps))
            steps.append(step)
            calls.append(call)
            ratios.append(step / call)
            progress_steps.append(with_progress)
            progress_ratios.append(with_progress / step)
        result[name] = {
            "preset": preset,
            "prompts": prompts,
            "tokens_per_prompt": grid[0] * grid[1] * grid[2],
            "sampler_seconds_per_step": statistics.median(steps),
            "bare_call_seconds": statistics.median(calls),
            "ratio": statistics.median(ratios),
            "progress_seconds_per_step": statistics.median(progress_steps),
            "progress_ratio": statistics.median(progress_ratios),
        }
        print(
            f"{name}: sampler {result[name]['sampler_seconds_per_step'] * 1e3:.2f} ms a step, "
            f"bare call {result[name]['bare_call_seconds'] * 1e3:.2f} ms: "
            f"{result[name]['ratio']:.3f}×; with the progress callback "
            f"{result[name]['progress_seconds_per_step'] * 1e3:.2f} ms a step: "
            f"{result[name]['progress_ratio']:.3f}× the sampler without",
            flush=True,
        )
    result["load_after"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
