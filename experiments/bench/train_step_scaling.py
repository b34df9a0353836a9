"""How the DiT train step scales over devices, and how much memory each device needs.

(a) Throughput: the tiny train step (t2v.py:tiny's 8 rows of 192 tokens, the same global batch
    for every mesh) on 1, 2, 4 and 8 fake CPU devices of a data-parallel mesh, built as the
    trainer builds it (soraj.sharding: sharded_init, jit_train_step, shard_batch). The fake
    devices share this machine's cores, so the ratios measure the cost of splitting and
    gathering, not the speed-up of real chips.
(b) Memory per device of the S/2, B/2, L/2 and XL/2 DiTs under (fsdp, tensor) meshes, from XLA's
    memory analysis of the compiled sharded step (arguments + outputs + temporaries - aliased
    donated buffers). Nothing runs: the state and batch are abstract arrays with shardings.
    Each device holds one packed row of its preset's t2v.py length (rows = data × fsdp), with
    float32 params, AdamW moments and EMA, and bfloat16 compute; blocks run as one scan.
    Attention is XLA's (the only CPU backend), which keeps each block's softmax probabilities
    for the backward pass; TPU's splash kernel does not, so these are upper bounds there.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \\
        .venv/bin/python experiments/bench/train_step_scaling.py --part throughput
    XLA_FLAGS=--xla_force_host_platform_device_count=256 JAX_PLATFORMS=cpu \\
        .venv/bin/python experiments/bench/train_step_scaling.py --part memory

Writes results/train_step_scaling.json and the tables in results/train_step_scaling.md.
"""

import argparse
import dataclasses
import functools
import json
import statistics
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from train_step import TEXT_WIDTH, Setting, synthetic_batch

from soraj import optim, sharding
from soraj.configs import t2v
from soraj.generate import init_params
from soraj.models.conditioning import TextConfig
from soraj.models.dit import DIT_PRESETS, DiT
from soraj.train import train_step

RESULTS = Path(__file__).parent / "results"
GIB = 2**30
HBM_GIB = {"v5e": 16, "v6e": 32, "v5p": 95}  # per chip
MESHES = ((8, 1), (32, 1), (64, 1), (256, 1), (8, 4), (64, 4))  # (fsdp, tensor)
# Remat "full" keeps only each block's input for the backward pass, as a large preset trains;
# "none" (everything kept) on the smallest mesh shows what that saves.
MEMORY_GRID = tuple((mesh, "full") for mesh in MESHES) + (((8, 1), "none"),)
PRESETS = ("S/2", "B/2", "L/2", "XL/2")
# Every clip of a row fills the token budget of its t2v.py preset: 5×16×16 patches (17 frames
# of 256² through a 4×8×8 VAE, 1×2×2 patches) for S/2 and B/2, 9×16×16 (33 frames) for L and XL.
CLIP_GRIDS = {"S/2": (5, 16, 16), "B/2": (5, 16, 16), "L/2": (9, 16, 16), "XL/2": (9, 16, 16)}


# ---- One sharded step ----


def step_parts(setting: Setting, config):
    """(init_state(rng), step function, host batch) of one setting, as the trainer builds them."""
    text = TextConfig(**config.text)
    dit_config = dataclasses.replace(
        DIT_PRESETS[setting.preset],
        dtype=setting.dtype,
        latent_channels=setting.latent_channels,
        text_width=TEXT_WIDTH,
        scan_blocks=setting.scan_blocks,
        remat=setting.remat,
    )
    dit = DiT(dit_config)
    optimizer = optim.make_optimizer(config.optim)

    def init_state(rng):
        init_rng, state_rng = jax.random.split(rng)
        return optim.TrainState.create(init_params(dit, text, init_rng), optimizer, state_rng)

    step = functools.partial(train_step, dit=dit, text=text, optimizer=optimizer, config=config)
    return init_state, step, synthetic_batch(setting, dit_config.patch_features, text)


def mesh_of(devices, data=1, fsdp=1, tensor=1):
    mesh_config = ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor, context=1))
    return sharding.make_mesh(mesh_config, devices[: data * fsdp * tensor])


# ---- (a) Throughput on fake devices ----


def throughput(device_counts, repeats: int, log) -> dict:
    setting = Setting("tiny", "tiny", "float32", 8, 192, (3, 4, 4))
    config = t2v.get_config("tiny")
    init_state, step, host_batch = step_parts(setting, config)
    rates = {}
    for count in device_counts:
        mesh = mesh_of(jax.devices(), data=count)
        state, shardings = sharding.sharded_init(
            init_state, jax.random.key(0), mesh, sharding.DIT_RULES
        )
        jitted = sharding.jit_train_step(step, shardings, mesh, sharding.DIT_RULES)
        batch = sharding.shard_batch(host_batch, mesh)
        rng = jax.random.key(1)
        state, metrics = jitted(state, batch, rng)  # compiles
        jax.block_until_ready(metrics)
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            state, metrics = jitted(state, batch, rng)
            jax.block_until_ready((state, metrics))
            seconds.append(time.perf_counter() - started)
        rates[count] = 1.0 / statistics.median(seconds)
        log(f"tiny step on {count} devices: {rates[count]:.2f} steps/s")
    return {
        "steps_per_s": rates,
        "ratio_to_one_device": {n: rate / rates[device_counts[0]] for n, rate in rates.items()},
    }


# ---- (b) Memory per device ----


def abstract_args(init_state, host_batch, mesh):
    """Abstract (state, batch, rng) with the shardings the trainer gives them; nothing allocated."""
    abstract = jax.eval_shape(init_state, jax.random.key(0))
    shardings = sharding.logical_shardings(abstract, mesh, sharding.DIT_RULES)
    state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        nn.unbox(abstract),
        shardings,
    )
    batch_sharding = sharding.batch_sharding(mesh)
    batch = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding)
        for k, v in host_batch.items()
    }
    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=sharding.replicated(mesh))
    return state, shardings, batch, rng


def memory_per_device(preset: str, fsdp: int, tensor: int, remat: str) -> dict:
    config = t2v.get_config(preset)
    config.data.token_budget = int(np.prod(CLIP_GRIDS[preset]))
    mesh = mesh_of(jax.devices(), fsdp=fsdp, tensor=tensor)
    setting = Setting(
        preset,
        preset,
        "bfloat16",
        rows=1,
        row_length=config.data.row_length,
        clip_grid=CLIP_GRIDS[preset],
        latent_channels=16,
        scan_blocks=True,
        remat=remat,
    )
    init_state, step, row = step_parts(setting, config)
    # One row a device (batch rows go over data × fsdp): shapes only, nothing allocated.
    host_batch = {k: jax.ShapeDtypeStruct((fsdp, *x.shape[1:]), x.dtype) for k, x in row.items()}
    state, shardings, batch, rng = abstract_args(init_state, host_batch, mesh)
    jitted = sharding.jit_train_step(step, shardings, mesh, sharding.DIT_RULES)
    started = time.perf_counter()
    memory = jitted.lower(state, batch, rng).compile().memory_analysis()
    total = (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        + memory.temp_size_in_bytes
        - memory.alias_size_in_bytes
    )
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    return {
        "preset": preset,
        "fsdp": fsdp,
        "tensor": tensor,
        "remat": remat,
        "params": params,
        "rows": fsdp,
        "row_length": setting.row_length,
        "argument_bytes": memory.argument_size_in_bytes,
        "output_bytes": memory.output_size_in_bytes,
        "temp_bytes": memory.temp_size_in_bytes,
        "alias_bytes": memory.alias_size_in_bytes,
        "total_bytes": total,
        "compile_seconds": time.perf_counter() - started,
    }


# ---- Main ----


def markdown(result: dict) -> str:
    lines = ["## Throughput of the tiny train step on fake CPU devices (same global batch)", ""]
    lines += ["| devices | steps/s | ratio to 1 device |", "|---|---|---|"]
    scaling = result.get("throughput", {"steps_per_s": {}})
    for n, rate in scaling["steps_per_s"].items():
        lines.append(f"| {n} | {rate:.2f} | {scaling['ratio_to_one_device'][n]:.2f} |")
    lines += ["", "## Memory per device (GiB), one packed row per device, bf16 compute", ""]
    chips = ", ".join(f"{name} {gib} GiB" for name, gib in HBM_GIB.items())
    lines += [f"HBM per chip: {chips}. Fits: the chips whose HBM holds the step.", ""]
    lines += [
        "| preset | params (M) | fsdp | tensor | remat | state GiB | temp GiB | total GiB | fits |"
    ]
    lines += ["|---|---|---|---|---|---|---|---|---|"]
    for m in result.get("memory", []):
        gib = m["total_bytes"] / GIB
        fits = ", ".join(name for name, hbm in HBM_GIB.items() if gib <= hbm) or "none"
        lines.append(
            f"| {m['preset']} | {m['params'] / 1e6:.0f} | {m['fsdp']} | {m['tensor']} | "
            f"{m['remat']} | {m['argument_bytes'] / GIB:.2f} | {m['temp_bytes'] / GIB:.2f} | "
            f"{gib:.2f} | {fits} |"
        )
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("throughput", "memory", "both"), default="both")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    args = parser.parse_args()
    needed = 8 if args.part == "throughput" else max(f * t for f, t in MESHES)
    if jax.device_count() < needed:
        sys.exit(
            f"--part {args.part} needs {needed} devices, found {jax.device_count()}: run with "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={needed} JAX_PLATFORMS=cpu"
        )
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {message}", flush=True)

    out = RESULTS / "train_step_scaling.json"
    # A run of one part keeps the other part's committed numbers.
    result = json.loads(out.read_text()) if out.exists() else {}
    if args.part in ("throughput", "both"):
        result["throughput"] = throughput((1, 2, 4, 8), args.repeats, log)
        result["throughput_devices_in_process"] = jax.device_count()
    if args.part in ("memory", "both"):
        result["memory"] = []
        for preset in args.presets:
            for (fsdp, tensor), remat in MEMORY_GRID:
                m = memory_per_device(preset, fsdp, tensor, remat)
                result["memory"].append(m)
                log(
                    f"{preset} fsdp {fsdp} tensor {tensor} remat {remat}: "
                    f"{m['total_bytes'] / GIB:.2f} GiB/device ({m['compile_seconds']:.0f} s)"
                )
    RESULTS.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "train_step_scaling.md").write_text(markdown(result))
    print(markdown(result))
    log(f"wrote {out} and {out.with_suffix('.md').name}")


if __name__ == "__main__":
    main()
