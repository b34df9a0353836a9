"""Seconds per DiT train step (and per VAE encode of the batch) for the native-vs-crop runs.

Native: wide 9×32×64 and tall 9×64×32 clips, 96 tokens each, one clip per row; crop: their
32×32 centre crops, 48 tokens. Run pinned to one core, as each experiment run will be:
    taskset -c 0 .venv/bin/python experiments/native_vs_crop/step_time.py
"""

import argparse
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from soraj import optim
from soraj.configs.t2v import get_config
from soraj.data.shapes_canvases import ShapesCanvasSource
from soraj.generate import init_params
from soraj.models import patching
from soraj.models.conditioning import TextConfig
from soraj.models.latent_codec import LatentCodec
from soraj.train import make_dit, train_step

VAE = "experiments/shapes/checkpoint/vae"


def packed_rows(latents, patch_size) -> dict:
    """One clip per row; clips of one token count but different grids (wide and tall)."""
    tokens, coords, grids = [], [], []
    for z in latents:  # (T', H', W', C)
        t, c = patching.patchify(jnp.asarray(z), patch_size)
        tokens.append(t)
        coords.append(c)
        grids.append(patching.grid_shape(z.shape[:3], patch_size))
    b, n = len(tokens), tokens[0].shape[0]
    return {
        "latents": jnp.stack(tokens),  # (B, L, P)
        "coords": jnp.stack(coords),  # (B, L, 3)
        "segment_ids": jnp.ones((b, n), jnp.int32),
        "cond_mask": jnp.zeros((b, n), bool),
        "grid": jnp.asarray(grids, jnp.int32)[:, None],  # (B, 1, 3)
    }


def measure(mode: str, batch_size: int, repeats: int) -> dict:
    config = get_config("tiny")
    codec = LatentCodec.load(VAE)
    text = TextConfig(**config.text)
    dit = make_dit(config, codec, text)
    source = ShapesCanvasSource(batch_size, ((32, 64), (64, 32)), num_frames=9, seed=0)
    videos = [source[i]["video"] for i in range(batch_size)]
    if mode == "crop":  # centre 32×32 square of each clip
        videos = [
            v[:, (v.shape[1] - 32) // 2 :][:, :32, (v.shape[2] - 32) // 2 :][:, :, :32]
            for v in videos
        ]
    encode = jax.jit(codec.encode)
    groups = {}
    for v in videos:
        groups.setdefault(v.shape, []).append(v)
    latents = []
    encode_seconds = 0.0
    for group in groups.values():
        batch = np.stack(group)
        jax.block_until_ready(encode(codec.params, batch))  # compile
        start = time.perf_counter()
        for _ in range(repeats):
            z = jax.block_until_ready(encode(codec.params, batch))
        encode_seconds += (time.perf_counter() - start) / repeats
        latents.extend(np.asarray(z))
    packed = packed_rows(latents, dit.config.patch_size)
    rng = np.random.default_rng(0)
    packed["text"] = jnp.asarray(rng.normal(size=(batch_size, 1, 32, text.width)), jnp.float32)
    packed["text_mask"] = jnp.ones((batch_size, 1, 32), bool)
    optimizer = optim.make_optimizer(config.optim)
    state = optim.TrainState.create(
        init_params(dit, text, jax.random.key(0)), optimizer, jax.random.key(1)
    )
    step = jax.jit(
        functools.partial(train_step, dit=dit, text=text, optimizer=optimizer, config=config),
        donate_argnums=0,
    )
    key = jax.random.key(2)
    state, _ = step(state, packed, key)  # compile
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(repeats):
        state, metrics = step(state, packed, key)
    jax.block_until_ready(metrics)
    step_seconds = (time.perf_counter() - start) / repeats
    return {
        "mode": mode,
        "batch_size": batch_size,
        "tokens_per_row": int(packed["latents"].shape[1]),
        "step_s": step_seconds,
        "encode_s": encode_seconds,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    for batch_size in args.batch_sizes:
        for mode in ("native", "crop"):
            print(json.dumps(measure(mode, batch_size, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
