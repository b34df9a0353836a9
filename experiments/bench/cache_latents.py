"""Batches/s and DiT train steps/s with on-the-fly VAE + MiniLM encoding against a latent cache
(`soraj cache-latents`), measured side by side in one run.

    .venv/bin/python experiments/bench/cache_latents.py

Both paths run what `soraj train` runs: training_data's grain iterator and BatchBuilder, then the
jitted train step of the tiny DiT. Rounds alternate online and cached so that load from other
processes hits both alike; each rate is the median over rounds. Every clip is seen once, so the
online text encoder meets captions as in a first epoch. Writes a flat JSON dict.
"""

import argparse
import functools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from soraj import cli, optim, sharding
from soraj.configs import t2v
from soraj.dit_data import training_data
from soraj.generate import init_params
from soraj.models.conditioning import TextConfig
from soraj.models.latent_codec import LatentCodec
from soraj.train import make_dit, train_step

RESULTS = Path(__file__).parent / "results" / "cache_latents.json"


def make_config(args, cache: str):
    config = t2v.get_config("tiny")
    config.vae_checkpoint = args.vae
    config.data.num_clips = args.num_clips
    config.data.latent_cache = str(cache)
    return config


class Feed:
    """One way of feeding training: its iterator, batch builder, and a train state to step."""

    def __init__(self, config):
        self.text = TextConfig(**config.text)
        self.codec = LatentCodec.load(config.vae_checkpoint)
        self.dit = make_dit(config, self.codec, self.text)
        mesh = sharding.make_mesh()
        self.iterator, self.build = training_data(
            config, self.codec, config.vae_checkpoint, self.text, self.dit.config.patch_size, mesh
        )
        optimizer = optim.make_optimizer(config.optim)
        params = init_params(self.dit, self.text, jax.random.key(0))
        self.state = optim.TrainState.create(params, optimizer, jax.random.key(1))
        self.rng = jax.random.key(config.seed)
        self.step = jax.jit(
            functools.partial(
                train_step, dit=self.dit, text=self.text, optimizer=optimizer, config=config
            ),
            donate_argnums=0,
        )

    def batches_per_s(self, count: int) -> float:
        start = time.perf_counter()
        for _ in range(count):
            jax.block_until_ready(self.build(next(self.iterator)))
        return count / (time.perf_counter() - start)

    def steps_per_s(self, count: int) -> float:
        start = time.perf_counter()
        for _ in range(count):
            self.state, metrics = self.step(self.state, self.build(next(self.iterator)), self.rng)
        jax.block_until_ready(metrics)
        return count / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vae", default="experiments/shapes/checkpoint/vae")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=8, help="batches per round and measure")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    config = t2v.get_config("tiny")
    warmup = 2  # compiles
    load_before = os.getloadavg()[0]  # other processes on the machine skew both paths
    per_path = 2 * (warmup + args.rounds * args.batches)  # batches, then steps
    args.num_clips = per_path * config.batch_size

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        cache_argv = ["cache-latents", "--vae", args.vae, "--out", str(cache), "--text-states"]
        cache_argv += ["--num-clips", str(args.num_clips), "--seed", str(config.seed)]
        cache_argv += ["--frames", str(config.data.num_frames), "--height", str(config.data.height)]
        cache_argv += ["--width", str(config.data.width), "--batch-size", str(config.batch_size)]
        cli.main(cache_argv)
        feeds = {"online": Feed(make_config(args, "")), "cached": Feed(make_config(args, cache))}
        rates = {f"{name}_{kind}": [] for name in feeds for kind in ("batches", "steps")}
        for measure in ("batches", "steps"):
            for feed in feeds.values():  # compile outside the timed rounds
                getattr(feed, f"{measure}_per_s")(warmup)
            for _ in range(args.rounds):
                for name, feed in feeds.items():
                    rates[f"{name}_{measure}"].append(
                        getattr(feed, f"{measure}_per_s")(args.batches)
                    )

    median = {key: statistics.median(values) for key, values in rates.items()}
    latent = feeds["online"].codec.latent_shape(
        config.data.num_frames, config.data.height, config.data.width
    )
    results = {
        "online_batches_per_s": median["online_batches"],
        "cached_batches_per_s": median["cached_batches"],
        "speedup": median["cached_batches"] / median["online_batches"],
        "online_steps_per_s": median["online_steps"],
        "cached_steps_per_s": median["cached_steps"],
        "step_speedup": median["cached_steps"] / median["online_steps"],
        "batch_size": config.batch_size,
        "num_frames": config.data.num_frames,
        "height": config.data.height,
        "width": config.data.width,
        "latent_tokens": int(np.prod(latent[:3])) // int(np.prod(config.model.patch_size)),
        "dit": "tiny",
        "text_states_cached": True,
        "rounds": args.rounds,
        "batches_per_round": args.batches,
        "device": jax.devices()[0].device_kind,
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
    }
    print(f"{'path':8} {'batches/s':>10} {'steps/s':>10}")
    for name in feeds:
        print(f"{name:8} {median[f'{name}_batches']:10.2f} {median[f'{name}_steps']:10.2f}")
    print(
        f"speed-up: batches ×{results['speedup']:.2f}, train steps ×{results['step_speedup']:.2f}"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
