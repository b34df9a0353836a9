"""Padding waste and useful tokens/s of packing against buckets and pad-to-max, on one mixed
dataset of native clip shapes, and how far the packed loader keeps ahead of the train step.

    .venv/bin/python experiments/bench/packing.py

Dataset: seeded native shapes over six aspect ratios, many sizes and lengths, a quarter images.
VAE factors (ft, fs) = (4, 8), patches (1, 2, 2), C = 16 (the Wan-like layout); every clip is
planned by the native-size policy (token_budget, max_frames = min_frames, as the trainer sets them).

- Packing waste: the real pipeline (packed_dataset, the trainer's packer and bins) over records
  shaped like a latent cache's: latents of each clip's planned shape (random values drawn on
  read; waste depends on shapes only) and cached text states; padded tokens ÷ all tokens over
  many batches, checked against a naive recount from each segment's grid on the first batch.
- Bucket and pad-to-max waste: soraj/data/buckets.py on the same native shapes, one epoch of
  them, its end-of-epoch partial batches padded with empty rows.
- Useful tokens/s: real (non-padding) tokens per second of the jitted train_step of one small
  DiT, on packed pipeline batches and on bucket batches (one fixed (rows, tokens) shape per
  bucket, one clip per row, empty rows for a partial batch). Each timed shape is compiled first;
  rounds alternate packed and bucket steps so that load from other processes hits both alike.
  XLA's FLOP count of each step shape gives the work per useful token beside the timings.
- loader_to_step_ratio: pipeline batches/s (next() plus BatchBuilder's sharding; text states are
  cached, so no encoder runs) ÷ train steps/s on packed batches, measured in the same rounds;
  loader_to_step_ratio_minilm: the same records with captions only, encoded by MiniLM per batch.
"""

import argparse
import copy
import dataclasses
import functools
import json
import os
import statistics
import time
from pathlib import Path

import jax
import numpy as np

from soraj import optim, sharding
from soraj.configs import t2v
from soraj.data.bucket_batches import bucket_batches, clip_tokens, pad_to_max
from soraj.data.buckets import BucketTable
from soraj.data.native_size import plan_native_size
from soraj.data.packed_pipeline import PackedDataSpec, packed_dataset
from soraj.dit_data import BatchBuilder
from soraj.generate import init_params
from soraj.models import patching
from soraj.models.conditioning import TextConfig
from soraj.models.dit import DiT, DiTConfig
from soraj.train import train_step

RESULTS = Path(__file__).parent / "results" / "packing.json"
VAE_FACTORS, PATCH, CHANNELS = (4, 8), (1, 2, 2), 16
ASPECTS = {
    "9:16": (9, 16),
    "3:4": (3, 4),
    "1:1": (1, 1),
    "4:3": (4, 3),
    "16:9": (16, 9),
    "2:1": (2, 1),
}
SHORT_SIDES = (64, 96, 128, 144, 180, 240, 360)  # pixels; large ones get downscaled
IMAGE_SHARE = 0.25

# ---- The mixed dataset ----


def mixed_shapes(num_clips: int, seed: int) -> list[tuple[int, int, int]]:
    """Native (T, H, W): aspect ratio width:height from ASPECTS, a short side, T = 1 or 5..48."""
    rng = np.random.default_rng(seed)
    shapes = []
    for _ in range(num_clips):
        w_ratio, h_ratio = list(ASPECTS.values())[rng.integers(len(ASPECTS))]
        short = int(rng.choice(SHORT_SIDES))
        scale = short / min(w_ratio, h_ratio)
        frames = 1 if rng.random() < IMAGE_SHARE else int(rng.integers(5, 49))
        shapes.append((frames, round(h_ratio * scale), round(w_ratio * scale)))
    return shapes


class LatentRecords:
    """What a latent cache holds for clip i: latents (T', H', W', C) of its native-size plan,
    a caption and cached text states (M, E). Latent values are drawn on read from seed i
    (waste depends on shapes only), standing in for the cache's disk read."""

    def __init__(self, shapes, token_budget, max_frames, text_tokens, text_width, seed):
        rng = np.random.default_rng(seed)
        self.cached_text = True
        self.latent_shapes = []
        for shape in shapes:
            plan = plan_native_size(
                shape, VAE_FACTORS, PATCH, token_budget, max_frames, rng, min_frames=max_frames
            )
            grid = zip(plan.latent_grid, PATCH, strict=True)
            self.latent_shapes.append((*(g * p for g, p in grid), CHANNELS))
        self.texts = [rng.standard_normal((text_tokens, text_width), np.float32) for _ in range(8)]
        self.text_mask = np.arange(text_tokens) < text_tokens // 2
        self.null_text = (np.zeros((text_tokens, text_width), np.float32), self.text_mask)

    def __len__(self) -> int:
        return len(self.latent_shapes)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        latents = np.random.default_rng(index).standard_normal(self.latent_shapes[index])
        record = {"latents": latents.astype(np.float32), "caption": f"clip {index}"}
        if self.cached_text:
            record.update(text_states=self.texts[index % len(self.texts)], text_mask=self.text_mask)
        return record


# ---- Packing waste ----


def recount_padding(batch: dict) -> int:
    """Padded tokens from first principles: rows × L minus every used slot's grid volume."""
    rows, length = batch["segment_ids"].shape
    used = batch["grid"][..., 0] > 0  # (B, S)
    for row in range(rows):  # each segment holds exactly its grid's tokens (no token drop)
        for slot in np.flatnonzero(used[row]):
            count = int(np.sum(batch["segment_ids"][row] == slot + 1))
            assert count == int(np.prod(batch["grid"][row, slot])), (row, slot, count)
    return rows * length - int(np.prod(batch["grid"], axis=-1)[used].sum())


def packing_waste(records, spec: PackedDataSpec, num_batches: int) -> float:
    iterator = iter(packed_dataset(records, spec, codec=None, null_text=records.null_text))
    padded = total = 0
    start = time.perf_counter()
    for index in range(num_batches):
        batch = next(iterator)
        pad = int(np.sum(batch["segment_ids"] == 0))
        if index == 0:
            assert pad == recount_padding(batch), (pad, recount_padding(batch))
        padded, total = padded + pad, total + batch["segment_ids"].size
    print(f"  {num_batches} batches in {time.perf_counter() - start:.1f} s")
    return padded / total


# ---- Buckets ----


def bucket_table(tokens_per_step: int) -> BucketTable:
    """Open-Sora-style buckets within token_budget = 128; batch ≈ tokens_per_step ÷ tokens."""
    sides = {"64px": 64, "96px": 96, "160px": 160}
    frames = {"64px": (1, 5, 9, 17), "96px": (1, 5, 9), "160px": (1,)}
    keep = {("96px", 9): 0.5}  # half the long-enough videos go on to the longer 64px bucket
    unit = VAE_FACTORS[1] * PATCH[1]
    table = {
        name: {
            t: (keep.get((name, t), 1.0), tokens_per_step // ((side // unit) ** 2 * (3 + t) // 4))
            for t in frames[name]
        }
        for name, side in sides.items()
    }
    return BucketTable(
        resolutions={name: side * side for name, side in sides.items()},
        frames=table,
        aspect_ratios=tuple(h / w for w, h in ASPECTS.values()),
        pixel_multiple=unit,
    )


def row_batch(rows: int, grid, text_tokens: int, text_width: int) -> dict:
    """A host batch of `rows` clips of one shape (patch grid (gt, gh, gw)), one per row, as a
    bucket or pad-to-max sampler gives. The step's time does not depend on how many rows are
    real, so every row is."""
    latent_shape = tuple(g * p for g, p in zip(grid, PATCH, strict=True))
    _, coords = patching.patchify(np.zeros((*latent_shape, CHANNELS), np.float32), PATCH)
    tokens = coords.shape[0]
    used = np.ones(rows, bool)  # (B,)
    rng = np.random.default_rng(0)
    return {
        "latents": rng.standard_normal((rows, tokens, int(np.prod(PATCH)) * CHANNELS), np.float32),
        "coords": np.broadcast_to(np.asarray(coords), (rows, tokens, 3)).copy(),  # (B, N, 3)
        "segment_ids": np.repeat(used[:, None], tokens, axis=1).astype(np.int32),  # (B, N)
        "cond_mask": np.zeros((rows, tokens), bool),
        "grid": np.where(used[:, None, None], np.asarray(grid), 0).astype(np.int32),  # (B, 1, 3)
        "text": rng.standard_normal((rows, 1, text_tokens, text_width), np.float32),
        "text_mask": np.repeat(used[:, None, None], text_tokens, axis=2),  # (B, 1, M)
    }


def bucket_grid(bucket) -> tuple[int, int, int]:
    """A bucket's patch grid (gt, gh, gw)."""
    (ft, fs), (pt, ph, pw) = VAE_FACTORS, PATCH
    return (
        (1 + (bucket.num_frames - 1) // ft) // pt,
        bucket.height // (fs * ph),
        bucket.width // (fs * pw),
    )


# ---- Timing ----


class Stepper:
    """The jitted train_step of one small DiT, timed one call at a time."""

    def __init__(self, text: TextConfig, width: int, depth: int, heads: int, mesh, token_budget):
        config = t2v.get_config("tiny")  # optimizer and diffusion settings of CPU training
        # As the trainer does: no sample exceeds token_budget, so self-attention runs in
        # windows of 3 × token_budget keys (layers.attention) wherever a row is longer.
        config.data.token_budget = token_budget
        self.dit = DiT(
            DiTConfig(
                width=width,
                depth=depth,
                num_heads=heads,
                patch_size=PATCH,
                latent_channels=CHANNELS,
                text_width=text.width,
            )
        )
        optimizer = optim.make_optimizer(config.optim)
        params = init_params(self.dit, text, jax.random.key(0))
        state = optim.TrainState.create(params, optimizer, jax.random.key(1))
        # Placed as the trainer places it, so the step's output state matches its input and
        # the second call does not compile again.
        self.state = jax.device_put(state, sharding.replicated(mesh))
        self.rng = jax.random.key(2)
        step = functools.partial(
            train_step, dit=self.dit, text=text, optimizer=optimizer, config=config
        )
        self.step = jax.jit(step, donate_argnums=0)

    def flops(self, batch: dict) -> float:
        """XLA's FLOP count of one step on this batch shape (from the lowered HLO, no run)."""
        return self.step.lower(self.state, batch, self.rng).cost_analysis()["flops"]

    def seconds(self, batch: dict) -> float:
        start = time.perf_counter()
        self.state, metrics = self.step(self.state, batch, self.rng)
        jax.block_until_ready(metrics)
        return time.perf_counter() - start


def loader_seconds(iterator, build, count: int) -> float:
    """Seconds for `count` batches the way the trainer takes them: next() then BatchBuilder."""
    start = time.perf_counter()
    for _ in range(count):
        jax.block_until_ready(build(next(iterator)))
    return time.perf_counter() - start


def bucket_shapes(result: dict, limit: int):
    """The `limit` most frequent (rows, tokens) shapes of the bucket epoch: {shape: (a bucket of
    it, its batches, their useful tokens)}."""
    shapes = {}
    for bucket, members in result["batches"]:
        tokens = clip_tokens(bucket.num_frames, bucket.height, bucket.width, VAE_FACTORS, PATCH)
        _, count, useful = shapes.get((bucket.batch_size, tokens), (bucket, 0, 0))
        shapes[(bucket.batch_size, tokens)] = (bucket, count + 1, useful + len(members) * tokens)
    return dict(sorted(shapes.items(), key=lambda kv: -kv[1][1])[:limit])


# ---- Main ----


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-clips", type=int, default=20_000)
    parser.add_argument("--row-length", type=int, default=1024, help="L")
    parser.add_argument("--max-segments", type=int, default=16, help="S")
    parser.add_argument("--rows", type=int, default=4, help="B, packed rows per step")
    parser.add_argument("--token-budget", type=int, default=128)
    parser.add_argument("--max-frames", type=int, default=17)
    parser.add_argument("--waste-batches", type=int, default=100)
    parser.add_argument("--bucket-shapes", type=int, default=6, help="bucket shapes timed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="steps per shape and round")
    parser.add_argument("--loader-batches", type=int, default=20, help="per round")
    parser.add_argument("--dit", type=int, nargs=3, default=(128, 2, 2), help="width depth heads")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    text = TextConfig(**t2v.get_config("tiny").text)
    tokens_per_step = args.rows * args.row_length

    shapes = mixed_shapes(args.num_clips, seed=0)
    records = LatentRecords(
        shapes, args.token_budget, args.max_frames, text.max_tokens, text.width, seed=1
    )
    spec = PackedDataSpec(
        vae_factors=VAE_FACTORS,
        patch_size=PATCH,
        row_length=args.row_length,
        max_segments=args.max_segments,
        rows_per_batch=args.rows,
        token_budget=args.token_budget,
        max_frames=args.max_frames,
        min_frames=args.max_frames,
    )  # the trainer's defaults otherwise: first_fit over 4·B bins, caption dropout 0.1
    waste = {}
    for packing in ("first_fit", "best_fit"):
        for bins in (spec.bins, 4 * spec.bins):
            variant = dataclasses.replace(spec, packing=packing, packing_bins=bins)
            key = f"packing_waste_{packing}_{bins}_bins"
            waste[key] = packing_waste(records, variant, args.waste_batches)
            print(f"packing waste, {packing} over {bins} bins: {waste[key]:.4f}")
    # Half the row length (same tokens per step): less attention per token, more padding.
    half = dataclasses.replace(
        spec,
        row_length=spec.row_length // 2,
        max_segments=max(1, spec.max_segments // 2),
        rows_per_batch=2 * spec.rows_per_batch,
    )
    waste["packing_waste_half_row_length"] = packing_waste(records, half, args.waste_batches)

    table = bucket_table(tokens_per_step)
    buckets = bucket_batches(
        shapes, VAE_FACTORS, PATCH, args.token_budget, table, seed=0, max_frames=args.max_frames
    )
    dropping = bucket_batches(
        shapes, VAE_FACTORS, PATCH, args.token_budget, table, 0, "drop", args.max_frames
    )
    # Buckets pad only the epoch's last batch of each bucket: a shorter epoch pads more.
    tenth = bucket_batches(
        shapes[: len(shapes) // 10],
        VAE_FACTORS,
        PATCH,
        args.token_budget,
        table,
        0,
        "pad",
        args.max_frames,
    )
    pad_rows = tokens_per_step // args.token_budget
    padded = pad_to_max(
        shapes, VAE_FACTORS, PATCH, args.token_budget, args.max_frames, batch_size=pad_rows
    )

    # ---- Step timing: packed, bucket and pad-to-max batches, plus the loader ----
    mesh = sharding.make_mesh()
    stepper = Stepper(text, *args.dit, mesh, args.token_budget)
    build = BatchBuilder(None, mesh)
    iterator = iter(packed_dataset(records, spec, codec=None, null_text=records.null_text))
    host_pool = [next(iterator) for _ in range(4)]
    packed_pool = [(build(b), int(np.sum(b["segment_ids"] > 0))) for b in host_pool]
    timed = bucket_shapes(buckets, args.bucket_shapes)
    bucket_pool = {
        shape: build(row_batch(bucket.batch_size, bucket_grid(bucket), text.max_tokens, text.width))
        for shape, (bucket, _, _) in timed.items()
    }
    largest = max(records.latent_shapes, key=lambda shape: np.prod(shape))
    pad_grid = patching.grid_shape(largest[:3], PATCH)
    pad_batch = build(row_batch(pad_rows, pad_grid, text.max_tokens, text.width))
    assert int(np.prod(pad_grid)) == padded["max_clip_tokens"]
    compile_start = time.perf_counter()
    for batch in (packed_pool[0][0], *bucket_pool.values(), pad_batch):
        stepper.seconds(batch)  # compiles each shape once
    loader_seconds(iterator, build, 2)
    # The same records without text states: BatchBuilder encodes the captions with MiniLM.
    uncached = copy.copy(records)
    uncached.cached_text = False
    encoder = text.host_encoder()
    for count in (16, 32, 64):  # compiles its power-of-two caption batches
        encoder.encode([f"warm-up {count} {i}" for i in range(count)])
    text_iterator = iter(packed_dataset(uncached, spec, codec=None))
    build_text = BatchBuilder(encoder, mesh)
    loader_seconds(text_iterator, build_text, 2)
    compile_seconds = time.perf_counter() - compile_start

    # Work per useful token, from XLA's count: what the timings should follow on any machine.
    packed_useful = statistics.mean(useful for _, useful in packed_pool)
    pad_useful = (1 - padded["pad_waste"]) * pad_rows * padded["max_clip_tokens"]
    bucket_flops = sum(timed[s][1] * stepper.flops(b) for s, b in bucket_pool.items())
    flops_per_token = {
        "packing_flops_per_useful_token": stepper.flops(packed_pool[0][0]) / packed_useful,
        "bucket_flops_per_useful_token": bucket_flops / sum(u for _, _, u in timed.values()),
        "pad_flops_per_useful_token": stepper.flops(pad_batch) / pad_useful,
    }
    flops_per_token["packing_to_bucket_flops_per_useful_token"] = (
        flops_per_token["packing_flops_per_useful_token"]
        / flops_per_token["bucket_flops_per_useful_token"]
    )

    rounds = {key: [] for key in ("packed", "bucket", "pad", "steps", "loader", "loader_text")}
    for _ in range(args.rounds):  # the schemes take turns, so load from others hits them alike
        seconds, useful = 0.0, 0
        for i in range(args.steps):
            batch, tokens = packed_pool[i % len(packed_pool)]
            seconds, useful = seconds + stepper.seconds(batch), useful + tokens
        rounds["packed"].append(useful / seconds)
        rounds["steps"].append(args.steps / seconds)
        # A bucket epoch restricted to the timed shapes: each batch takes its shape's step time.
        per_shape = {
            shape: statistics.mean(stepper.seconds(batch) for _ in range(args.steps))
            for shape, batch in bucket_pool.items()
        }
        epoch_seconds = sum(timed[shape][1] * per_shape[shape] for shape in timed)
        rounds["bucket"].append(sum(useful for _, _, useful in timed.values()) / epoch_seconds)
        pad_seconds = statistics.mean(stepper.seconds(pad_batch) for _ in range(args.steps))
        rounds["pad"].append(pad_useful / pad_seconds)
        loader = loader_seconds(iterator, build, args.loader_batches)
        rounds["loader"].append(args.loader_batches / loader)
        loader = loader_seconds(text_iterator, build_text, args.loader_batches)
        rounds["loader_text"].append(args.loader_batches / loader)
    median = {key: statistics.median(values) for key, values in rounds.items()}
    ratio = {
        name: statistics.median(a / b for a, b in zip(rounds[top], rounds[bottom], strict=True))
        for name, top, bottom in (
            ("loader_to_step_ratio", "loader", "steps"),
            ("loader_to_step_ratio_minilm", "loader_text", "steps"),
            ("packing_to_bucket_tokens_per_s", "packed", "bucket"),
            ("packing_to_pad_tokens_per_s", "packed", "pad"),
        )
    }

    default = f"packing_waste_{spec.packing}_{spec.bins}_bins"
    covered = sum(count for _, count, _ in timed.values())
    results = {
        "packing_waste": waste[default],
        "bucket_waste": buckets["bucket_waste"],
        "pad_waste": padded["pad_waste"],
        "packing_tokens_per_s": median["packed"],
        "bucket_tokens_per_s": median["bucket"],
        "pad_tokens_per_s": median["pad"],
        **ratio,
        "loader_batches_per_s": median["loader"],
        "loader_minilm_batches_per_s": median["loader_text"],
        "train_steps_per_s": median["steps"],
        **flops_per_token,
        **waste,
        "bucket_cropped_fraction": buckets["cropped_fraction"],
        "bucket_upsampled_tokens_fraction": buckets["upsampled_tokens"] / buckets["native_tokens"],
        "bucket_dropped_clips": buckets["dropped_clips"],
        "bucket_batches": buckets["num_batches"],
        "bucket_count": len(table.buckets()),
        "bucket_waste_partial_dropped": dropping["bucket_waste"],
        "bucket_waste_tenth_of_the_clips": tenth["bucket_waste"],
        "bucket_partial_dropped_clips": dropping["dropped_clips"],
        "bucket_shapes_timed": len(timed),
        "bucket_timed_batch_fraction": covered / buckets["num_batches"],
        "packed_tokens_per_step": tokens_per_step,
        "bucket_tokens_per_step_mean": buckets["batch_tokens"] / buckets["num_batches"],
        "pad_rows": pad_rows,
        "pad_max_clip_tokens": padded["max_clip_tokens"],
        "dataset": (
            f"{args.num_clips} seeded native shapes: aspect ratios (w:h) {', '.join(ASPECTS)}, "
            f"short side {min(SHORT_SIDES)}-{max(SHORT_SIDES)} px, {IMAGE_SHARE:.0%} images, "
            "videos 5-48 frames"
        ),
        "num_clips": args.num_clips,
        "mean_clip_tokens": padded["useful_tokens"] / args.num_clips,
        "vae_factors": list(VAE_FACTORS),
        "patch_size": list(PATCH),
        "latent_channels": CHANNELS,
        "token_budget": args.token_budget,
        "attention_window": args.token_budget,  # train_step's max_segment_tokens
        "max_frames": args.max_frames,
        "row_length": args.row_length,
        "max_segments": args.max_segments,
        "rows_per_batch": args.rows,
        "packing": spec.packing,
        "packing_bins": spec.bins,
        "waste_batches": args.waste_batches,
        "dit_width_depth_heads": list(args.dit),
        "text_states": f"cached (M, E) = ({text.max_tokens}, {text.width}) in the records; "
        "the *_minilm keys: captions only, BatchBuilder encodes them with MiniLM",
        "rounds": args.rounds,
        "steps_per_shape_and_round": args.steps,
        "loader_batches_per_round": args.loader_batches,
        "compile_seconds": compile_seconds,
        "total_seconds": time.perf_counter() - started,
        "device": jax.devices()[0].device_kind,
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
    }
    print(f"{'scheme':12} {'waste':>7} {'useful tokens/s':>16}")
    for name, scheme in (("packing", "packing"), ("buckets", "bucket"), ("pad-to-max", "pad")):
        print(
            f"{name:12} {results[f'{scheme}_waste']:7.4f} {results[f'{scheme}_tokens_per_s']:16.0f}"
        )
    print(
        f"loader {median['loader']:.2f} batches/s, train {median['steps']:.2f} steps/s: "
        f"ratio {ratio['loader_to_step_ratio']:.2f}"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
