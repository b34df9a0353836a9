"""What raising config.text.max_tokens from 32 to 64 costs: the tiny DiT train step, and MiniLM
encoding of a batch of new captions, at M = 32 and M = 64 text tokens, timed in turns in one run.

The step is soraj.train.train_step, jitted with donation on train_step.py's synthetic packed
batch (t2v.py:tiny's rows: 8 × 192 tokens, four 3×4×4-patch clips a row) with random text
states of (M, E = 384); only M differs between the two. The DiT sees the text through
cross-attention, whose keys and values grow with M, so the hand count of dit_flops.py says how
much more matmul work to expect. MiniLM runs on the host once per new caption (its states are
cached per caption string), so its cost counts only while captions are new.

    .venv/bin/python experiments/bench/text_length.py   # about 1 min on 2 cores
"""

import argparse
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
from dit_flops import PackedShape, train_step_flops
from train_step import TEXT_WIDTH, Setting, dit_config, synthetic_batch

from soraj import optim
from soraj.configs import t2v
from soraj.data.shapes import split_prompts
from soraj.generate import init_params
from soraj.models.conditioning import TextConfig
from soraj.models.dit import DiT
from soraj.train import train_step

RESULTS = Path(__file__).parent / "results"
TOKENS = (32, 64)  # M before and after the change
TINY = Setting(
    "tiny_float32", preset="tiny", dtype="float32", rows=8, row_length=192, clip_grid=(3, 4, 4)
)


# ---- Timers ----


def step_timer(setting: Setting, max_tokens: int):
    """(seconds of one compiled train step, hand-counted FLOPs a step) at M = max_tokens."""
    config = t2v.get_config("tiny")  # optimizer and diffusion settings of training
    config.data.token_budget = setting.token_budget  # train_step's attention window
    config.text.max_tokens = max_tokens
    text = TextConfig(**config.text)
    dit = DiT(dit_config(setting, TEXT_WIDTH))
    optimizer = optim.make_optimizer(config.optim)
    params = nn.unbox(init_params(dit, text, jax.random.key(0)))
    state = optim.TrainState.create(params, optimizer, jax.random.key(1))
    batch = jax.device_put(synthetic_batch(setting, dit.config.patch_features, text))
    rng = jax.random.key(2)
    step = functools.partial(train_step, dit=dit, text=text, optimizer=optimizer, config=config)
    compiled = jax.jit(step, donate_argnums=0).lower(state, batch, rng).compile()
    holder = [state]  # the donated state is replaced by each step's output

    def seconds() -> float:
        started = time.perf_counter()
        holder[0], metrics = compiled(holder[0], batch, rng)
        jax.block_until_ready((holder[0], metrics))
        return time.perf_counter() - started

    seconds()  # the first call after compiling also allocates the donated buffers
    shape = PackedShape(
        setting.rows,
        setting.row_length,
        setting.segments,
        max_tokens,
        TEXT_WIDTH,
        setting.token_budget,
    )
    return seconds, train_step_flops(dit.config, shape)


def encode_timer(max_tokens: int, captions: list[str]):
    """Seconds of MiniLM encoding `captions`, all new (the per-caption cache cleared first)."""
    from soraj.models.text import MiniLMEncoder

    encoder = MiniLMEncoder(max_tokens=max_tokens)
    encoder.encode(captions)  # compiles this batch shape

    def seconds() -> float:
        encoder.clear_cache()
        started = time.perf_counter()
        encoder.encode(captions)
        return time.perf_counter() - started

    return seconds


# ---- Main ----


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds")
    parser.add_argument("--out", type=Path, default=RESULTS / "text_length.json")
    args = parser.parse_args()
    started, load_before = time.perf_counter(), os.getloadavg()[0]

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {message}", flush=True)

    steps, flops, encodes = {}, {}, {}
    # One caption per segment of a batch, the dense style the trainer sees.
    captions = split_prompts("train", n=TINY.rows * TINY.segments, seed=0)
    for m in TOKENS:
        log(f"M = {m}: compiling the train step and MiniLM")
        steps[m], flops[m] = step_timer(TINY, m)
        encodes[m] = encode_timer(m, captions)
    step_times = {m: [] for m in TOKENS}
    encode_times = {m: [] for m in TOKENS}
    for round_ in range(args.repeats):
        # Alternate which M goes first, so a drift in machine load favours neither.
        for m in TOKENS if round_ % 2 == 0 else TOKENS[::-1]:
            step_times[m].append(steps[m]())
            encode_times[m].append(encodes[m]())
    log(f"{args.repeats} rounds timed")

    old, new = TOKENS
    ratios = [b / a for a, b in zip(step_times[old], step_times[new], strict=True)]
    encode_ratios = [b / a for a, b in zip(encode_times[old], encode_times[new], strict=True)]
    result = {
        "device_kind": jax.devices()[0].device_kind,
        "platform": jax.default_backend(),
        "setting": TINY.name,
        "rows": TINY.rows,
        "row_length": TINY.row_length,
        "segments": TINY.segments,
        "text_width": TEXT_WIDTH,
        "repeats": args.repeats,
        "captions_encoded": len(captions),
    }
    for m in TOKENS:
        result[f"step_seconds_min_m{m}"] = min(step_times[m])
        result[f"step_seconds_median_m{m}"] = statistics.median(step_times[m])
        result[f"hand_flops_per_step_m{m}"] = flops[m]
        result[f"encode_seconds_median_m{m}"] = statistics.median(encode_times[m])
    result["step_time_ratio_median"] = statistics.median(ratios)  # of per-round ratios
    result["step_time_ratio_of_minimums"] = min(step_times[new]) / min(step_times[old])
    result["hand_flops_ratio"] = flops[new] / flops[old]
    result["encode_time_ratio_median"] = statistics.median(encode_ratios)
    result["load_average_before_after"] = [load_before, os.getloadavg()[0]]
    result["seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")

    print(
        f"\n{'M':>4s} {'s/step min':>11s} {'s/step med':>11s} {'GFLOP/step':>11s} "
        f"{'MiniLM s/batch':>15s}"
    )
    for m in TOKENS:
        print(
            f"{m:4d} {result[f'step_seconds_min_m{m}']:11.4f} "
            f"{result[f'step_seconds_median_m{m}']:11.4f} "
            f"{flops[m] / 1e9:11.2f} {result[f'encode_seconds_median_m{m}']:15.4f}"
        )
    print(
        f"M={new} / M={old}: train step {result['step_time_ratio_median']:.3f}× (median of "
        f"per-round ratios), hand FLOPs {result['hand_flops_ratio']:.3f}×, MiniLM encode of "
        f"{len(captions)} new captions {result['encode_time_ratio_median']:.3f}×"
    )
    log(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
