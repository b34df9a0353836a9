"""Model FLOPs utilisation (MFU) of the DiT train step, against a matmul measured in the same run.

The step is soraj.train.train_step, jitted with donation as the trainer jits it, on a
synthetic packed batch: rows of whole clips (one patch grid each, contiguous segments, tail
padding) with random latents and random text states, so no VAE or text encoder runs.

- Model FLOPs per step: the standard count of useful work (dit_flops.model_train_step_flops:
  real tokens only, attention over the pairs the masks allow, adaLN per sample, three times
  the forward). Beside it, XLA's cost analysis of the step's HLO as traced, with the blocks
  unrolled, no remat and XLA attention (see `twin`), and the hand count of what the code
  executes (dit_flops.train_step_flops), which XLA's count checks.
- MFU = model FLOPs / the fastest step's seconds / the FLOP/s of the fastest large jitted
  matmul of the same dtype, timed in turns with the steps (float32, and bfloat16 for bfloat16).
- Presets: `tiny` (soraj/configs/t2v.py:tiny, its packed rows) and `small` (the S/2 DiT on a
  batch that runs in seconds on a CPU), each in float32 and bfloat16, then the best small
  setting found by `--sweep` (batch shape, attention window, scan, remat) beside the baseline.
- GPU (`--platform gpu`, or when JAX's default backend is a GPU): cuDNN attention, bf16,
  bigger batches; MFU against the device's bf16 dense peak and against a measured bf16 matmul.

    .venv/bin/python experiments/bench/train_step.py              # CPU, a few minutes on 2 cores
    .venv/bin/python experiments/bench/train_step.py --sweep      # CPU: search small settings
    python experiments/bench/train_step.py --platform gpu --quick  # GPU, under 3 minutes
"""

import argparse
import dataclasses
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path

from soraj.cpu_runtime import prepare_command_process

prepare_command_process()  # the soraj command's environment; before JAX is imported

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from dit_flops import PackedShape, model_train_step_flops, train_step_flops  # noqa: E402

from soraj import optim  # noqa: E402
from soraj.configs import t2v  # noqa: E402
from soraj.generate import init_params  # noqa: E402
from soraj.models import patching  # noqa: E402
from soraj.models.conditioning import TextConfig  # noqa: E402
from soraj.models.dit import DIT_PRESETS, DiT, DiTConfig  # noqa: E402
from soraj.train import train_step  # noqa: E402

RESULTS = Path(__file__).parent / "results"
MATMULS_PER_STEP = 5
TRAINER_MODEL = t2v.get_config("tiny").model  # scan and remat of `soraj train`
# E of the random text states: MiniLM's hidden size, what a latent cache stores. A constant, so
# the benchmark runs where the MiniLM package is not installed (a bare GPU host).
TEXT_WIDTH = 384
# Dense bf16 peak FLOP/s by device_kind (vendor datasheets, without sparsity).
GPU_BF16_PEAK = {"NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100": 989e12, "NVIDIA H200": 989e12}


# ---- Settings ----


@dataclasses.dataclass(frozen=True)
class Setting:
    """One timed train step: a DiT preset, its compute dtype, and the packed batch shape. Every
    row holds as many whole clips of `clip_grid` patches as fit, the rest is padding; the clip
    fills the token budget, which is the self-attention window (train_step's max_segment_tokens)."""

    name: str
    preset: str  # a DIT_PRESETS key
    dtype: str
    rows: int  # B
    row_length: int  # L
    clip_grid: tuple[int, int, int]  # (gt, gh, gw) of every clip
    latent_channels: int = 8  # C
    scan_blocks: bool = TRAINER_MODEL.scan_blocks  # the trainer's unless a setting says
    remat: str = TRAINER_MODEL.remat
    attention_backend: str = "xla"

    @property
    def token_budget(self) -> int:
        return int(np.prod(self.clip_grid))

    @property
    def segments(self) -> int:  # S
        return max(1, self.row_length // self.token_budget)


def cpu_settings() -> list[Setting]:
    """tiny: t2v.py:tiny's rows (8 × 192 tokens, 4 clips of 3×4×4 patches: 9×32×32 frames through
    the 4×4×4 Shapes VAE). small: the S/2 DiT on 2 rows of 1024 tokens, 4 clips of 4×8×8 patches
    each (13 frames of 64×64 through a 4×8×8 VAE, C = 16)."""
    tiny = dict(preset="tiny", rows=8, row_length=192, clip_grid=(3, 4, 4))
    small = dict(preset="S/2", rows=2, row_length=1024, clip_grid=(4, 8, 8), latent_channels=16)
    return [
        Setting(f"{name}_{dtype}", dtype=dtype, **kwargs)
        for name, kwargs in (("tiny", tiny), ("small", small))
        for dtype in ("float32", "bfloat16")
    ]


# ---- The step ----


def dit_config(setting: Setting, text_width: int) -> DiTConfig:
    """The preset's DiTConfig with this setting's compute dtype, latents and switches; scan and
    remat only where DiTConfig has them."""
    changes = dict(
        dtype=setting.dtype,
        latent_channels=setting.latent_channels,
        text_width=text_width,
        attention_backend=setting.attention_backend,
    )
    fields = {f.name for f in dataclasses.fields(DiTConfig)}
    for name in ("scan_blocks", "remat"):
        if name in fields:
            changes[name] = getattr(setting, name)
        elif getattr(setting, name) != getattr(Setting, name):
            raise ValueError(f"DiTConfig has no {name!r} yet; setting {setting.name} needs it")
    return dataclasses.replace(DIT_PRESETS[setting.preset], **changes)


def synthetic_batch(setting: Setting, patch_features: int, text: TextConfig, seed: int = 0):
    """A packed host batch (docs/architecture.md §4) of whole clips with random latents and text
    states."""
    rng = np.random.default_rng(seed)
    B, L, S, n = setting.rows, setting.row_length, setting.segments, setting.token_budget
    coords = np.asarray(patching.patch_coords(setting.clip_grid))  # (n, 3)
    used = min(S * n, L)
    segment_ids = np.zeros((B, L), np.int32)
    segment_ids[:, :used] = np.repeat(np.arange(1, S + 1, dtype=np.int32), n)[:used]
    row_coords = np.zeros((B, L, 3), np.int32)
    row_coords[:, :used] = np.tile(coords, (S, 1))[:used]
    return {
        "latents": rng.standard_normal((B, L, patch_features), np.float32),
        "coords": row_coords,
        "segment_ids": segment_ids,
        "cond_mask": np.zeros((B, L), bool),
        "grid": np.broadcast_to(np.asarray(setting.clip_grid, np.int32), (B, S, 3)).copy(),
        "text": rng.standard_normal((B, S, text.max_tokens, TEXT_WIDTH), np.float32),
        "text_mask": np.ones((B, S, text.max_tokens), bool),
    }


def twin(setting: Setting) -> Setting:
    """The same model and batch unrolled, without remat, with XLA attention: the step whose HLO
    XLA counts in full (a scan body is counted once, not depth times; remat adds recomputation
    that is not model work; a cuDNN attention call is not counted at all)."""
    return dataclasses.replace(setting, scan_blocks=False, remat="none", attention_backend="xla")


class Stepper:
    """The jitted, donating train step of one setting on its synthetic batch."""

    def __init__(self, setting: Setting):
        config = t2v.get_config("tiny")  # optimizer and diffusion settings of training
        config.data.token_budget = setting.token_budget  # train_step's attention window
        self.text = TextConfig(**config.text)
        self.setting = setting
        self.dit = DiT(dit_config(setting, TEXT_WIDTH))
        self.optimizer = optim.make_optimizer(config.optim)
        params = nn.unbox(init_params(self.dit, self.text, jax.random.key(0)))
        self.state = optim.TrainState.create(params, self.optimizer, jax.random.key(1))
        host = synthetic_batch(setting, self.dit.config.patch_features, self.text)
        self.batch = jax.device_put(host)
        self.rng = jax.random.key(2)
        step = functools.partial(
            train_step, dit=self.dit, text=self.text, optimizer=self.optimizer, config=config
        )
        self.jitted = jax.jit(step, donate_argnums=0)
        self.compiled = None

    def compile(self) -> float:
        started = time.perf_counter()
        self.compiled = self.jitted.lower(self.state, self.batch, self.rng).compile()
        return time.perf_counter() - started

    def lowered_flops(self) -> float | None:
        """XLA's cost analysis of the step's HLO as traced (no compile); None where this JAX
        gives none for lowered HLO (jax 0.11 on GPU)."""
        analysis = self.jitted.lower(self.state, self.batch, self.rng).cost_analysis()
        return None if analysis is None else float(analysis["flops"])

    def compiled_flops(self) -> float:
        return float(self.compiled.cost_analysis()["flops"])

    def packed_shape(self) -> PackedShape:
        return PackedShape(
            self.setting.rows,
            self.setting.row_length,
            self.setting.segments,
            self.text.max_tokens,
            TEXT_WIDTH,
            self.setting.token_budget,
            self.setting.token_budget,  # every segment is one whole clip
        )

    def hand_flops(self) -> int:
        """What the step executes, by hand (padding, windows, per-token work included)."""
        return train_step_flops(self.dit.config, self.packed_shape())

    def model_flops(self) -> int:
        """The standard count of the step's useful work."""
        return model_train_step_flops(self.dit.config, self.packed_shape())

    def seconds(self) -> float:
        started = time.perf_counter()
        self.state, metrics = self.compiled(self.state, self.batch, self.rng)
        jax.block_until_ready((self.state, metrics))
        return time.perf_counter() - started


def matmul_seconds(size: int, dtype: str):
    """A timer of one jitted (size, size) @ (size, size) product: 2·size³ FLOPs a call."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size)), dtype)
    product = jax.jit(jnp.matmul).lower(a, a).compile()
    jax.block_until_ready(product(a, a))

    def seconds() -> float:
        started = time.perf_counter()
        jax.block_until_ready(product(a, a))
        return time.perf_counter() - started

    return seconds


# ---- Measuring ----


def measure(settings: list[Setting], repeats: int, matmul_timers: dict, log) -> list[dict]:
    """Compile and count every setting, then time them in turns: each round runs one step of
    every setting, each followed by a few matmuls of its dtype, so load from other processes
    hits all of them alike. Such load only ever slows a call down, so the fastest step and the
    fastest matmul are the best estimates of each on a quiet machine."""
    steppers, results = [], []
    for setting in settings:
        log(f"{setting.name}: compiling")
        stepper = Stepper(setting)
        compile_seconds = stepper.compile()
        counted = stepper if setting == twin(setting) else Stepper(twin(setting))
        xla_flops = counted.lowered_flops()
        result = {
            "setting": dataclasses.asdict(setting),
            "model_flops_per_step": stepper.model_flops(),
            "xla_flops_per_step": xla_flops,  # None where this JAX gives no count (GPU)
            "hand_flops_per_step": stepper.hand_flops(),
            "compile_seconds": compile_seconds,
        }
        if counted is stepper:  # compiled counts are whole only for an unrolled step
            result["compiled_flops_per_step"] = stepper.compiled_flops()
        if setting.attention_backend == "cudnn":  # it falls back to XLA where cuDNN cannot run
            result["cudnn_attention_compiled"] = "cudnn" in stepper.compiled.as_text()
        stepper.seconds()  # the first call after compiling also allocates the donated buffers
        log(
            f"{setting.name}: compiled in {compile_seconds:.1f} s; "
            f"{result['model_flops_per_step']:.4g} FLOPs a step"
        )
        steppers.append(stepper)
        results.append(result)
    steps = [[] for _ in settings]
    matmuls = [[] for _ in settings]
    for round_ in range(repeats):
        for stepper, times, rates in zip(steppers, steps, matmuls, strict=True):
            times.append(stepper.seconds())
            size, timer = matmul_timers[stepper.setting.dtype]
            rates += [2 * size**3 / timer() for _ in range(MATMULS_PER_STEP)]
        log(f"round {round_ + 1}/{repeats} timed")
    for result, times, rates in zip(results, steps, matmuls, strict=True):
        result["step_seconds"] = min(times)
        result["step_seconds_median"] = statistics.median(times)
        result["matmul_flops_per_s_max"] = max(rates)
        result["model_flops_per_s"] = result["model_flops_per_step"] / min(times)
    return results


# ---- Settings per platform ----


def best_cpu_settings() -> list[Setting]:
    """The best small settings found on this CPU: float32 on 8 rows of one 256-token clip each
    (attention over exactly the clip, the matmuls over all 2048 tokens at once) with the
    trainer's scanned blocks and dots_saveable remat (`--sweep` times it beside 4 × 512,
    8 × 512 and the other shapes); bfloat16 on 4 rows × 512, unrolled."""
    small = dict(preset="S/2", latent_channels=16, clip_grid=(4, 8, 8))
    return [
        Setting("small_float32_best", dtype="float32", rows=8, row_length=256, **small),
        Setting(
            "small_bfloat16_best",
            dtype="bfloat16",
            rows=4,
            row_length=512,
            scan_blocks=False,
            remat="none",
            **small,
        ),
    ]


def sweep_settings() -> list[Setting]:
    """Small variants of the float32 baseline: scan, remat, batch shape (rows × row length) and
    attention window (the clip's token count, which train_step takes as the window); all are
    held in memory at once (about 1 GB each), so the list stays short."""
    base = next(s for s in cpu_settings() if s.name == "small_float32")
    variants = {
        "float32_unrolled": dict(scan_blocks=False, remat="none"),
        "float32_scan": dict(scan_blocks=True, remat="none"),
        "float32_scan_remat_dots": dict(scan_blocks=True, remat="dots_saveable"),
        "float32_scan_window128": dict(scan_blocks=True, clip_grid=(2, 8, 8)),
        # Rows of at most 3 windows attend over the whole row, without the window blocks.
        "float32_scan_rows4_512": dict(scan_blocks=True, rows=4, row_length=512),
        "float32_scan_rows8_256": dict(scan_blocks=True, rows=8, row_length=256),
        "float32_scan_rows8_512": dict(scan_blocks=True, rows=8, row_length=512),
        "float32_scan_rows4_384_window128": dict(
            scan_blocks=True, rows=4, row_length=384, clip_grid=(2, 8, 8)
        ),
        "bfloat16_rows4_512": dict(dtype="bfloat16", rows=4, row_length=512),
    }
    return [base] + [
        dataclasses.replace(base, name=f"small_{name}", **changes)
        for name, changes in variants.items()
    ]


def gpu_settings(quick: bool) -> list[Setting]:
    """bf16 with cuDNN attention on t2v-sized rows: tiny on 9×32×32 clips, small (S/2) on rows of
    4096 tokens holding three 17×256×256 clips (5×16×16 patches) each, as t2v.py:S/2 packs."""
    cudnn = dict(dtype="bfloat16", attention_backend="cudnn")
    tiny = dict(preset="tiny", row_length=192, clip_grid=(3, 4, 4))
    small = dict(preset="S/2", row_length=4096, clip_grid=(5, 16, 16), latent_channels=16)
    if quick:  # one block to compile
        return [Setting("small_bfloat16_scan", rows=8, scan_blocks=True, **small, **cudnn)]
    return [
        Setting("tiny_bfloat16", rows=256, **tiny, **cudnn),
        Setting("small_bfloat16", rows=8, **small, **cudnn),
        Setting("small_bfloat16_scan", rows=8, scan_blocks=True, **small, **cudnn),
    ]


# ---- Main ----


def flat_results(results: list[dict]) -> dict:
    """The flat dict of the issue: model_flops_per_step_<name>, mfu_<name>, ... per setting."""
    flat = {}
    for result in results:
        name = result["setting"]["name"]
        for key in (
            "model_flops_per_step",
            "xla_flops_per_step",
            "cudnn_attention_compiled",
            "hand_flops_per_step",
            "compiled_flops_per_step",
            "mfu",
            "step_seconds",
            "step_seconds_median",
            "model_flops_per_s",
            "compile_seconds",
        ):
            if key in result:
                flat[f"{key}_{name}"] = result[key]
        flat[f"setting_{name}"] = result["setting"]
    return flat


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--platform", choices=("cpu", "gpu"), default=None, help="default: JAX's default backend"
    )
    parser.add_argument("--quick", action="store_true", help="GPU: one setting, under 3 min")
    parser.add_argument("--sweep", action="store_true", help="CPU: time the small variants")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per setting")
    parser.add_argument("--matmul-size", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    platform = args.platform or ("gpu" if jax.default_backend() == "gpu" else "cpu")
    if platform != jax.default_backend():
        raise ValueError(
            f"--platform {platform}, but JAX's default backend is {jax.default_backend()!r}"
        )
    started, load_before = time.perf_counter(), os.getloadavg()[0]

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {message}", flush=True)

    if platform == "gpu":
        settings = gpu_settings(args.quick)
        out = args.out or RESULTS / "train_step_gpu.json"
        size, repeats = args.matmul_size or 8192, args.repeats or (5 if args.quick else 10)
    elif args.sweep:
        settings = sweep_settings()
        out = args.out or RESULTS / "train_step_sweep.json"
        size, repeats = args.matmul_size or 2048, args.repeats or 4
    else:
        settings = cpu_settings() + best_cpu_settings()
        out = args.out or RESULTS / "train_step.json"
        size, repeats = args.matmul_size or 2048, args.repeats or 3
    dtypes = sorted({s.dtype for s in settings})
    timers = {dtype: (size, matmul_seconds(size, dtype)) for dtype in dtypes}
    device = jax.devices()[0]
    log(f"{device.device_kind} ({platform}); {len(settings)} settings; matmul {size}³ in {dtypes}")

    results = measure(settings, repeats, timers, log)

    flat = {
        "platform": platform,
        "device_kind": device.device_kind,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "matmul_size": size,
        "repeats": repeats,
    }
    for dtype in dtypes:  # the fastest of all the run's matmuls of that dtype
        rate = max(r["matmul_flops_per_s_max"] for r in results if r["setting"]["dtype"] == dtype)
        flat["matmul_flops_per_s" + ("" if dtype == "float32" else f"_{dtype}")] = rate
        for r in results:
            if r["setting"]["dtype"] == dtype:
                r["mfu"] = r["model_flops_per_s"] / rate
    if platform == "gpu":
        peak = GPU_BF16_PEAK.get(device.device_kind)
        flat["bf16_peak_flops_per_s"] = peak
        for r in results:
            if peak:
                flat[f"mfu_of_peak_{r['setting']['name']}"] = r["model_flops_per_s"] / peak
    flat.update(flat_results(results))
    flat["load_average_before_after"] = [load_before, os.getloadavg()[0]]
    flat["seconds"] = time.perf_counter() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(flat, indent=1) + "\n")
    print_table(results, flat)
    log(f"wrote {out}")


def print_table(results: list[dict], flat: dict) -> None:
    print(
        f"\n{'setting':28s} {'tokens':>7s} {'GFLOP/step':>11s} {'xla/model':>9s} "
        f"{'s/step':>8s} {'GFLOP/s':>8s} {'MFU':>6s}"
    )
    for r in results:
        s = r["setting"]
        xla = r["xla_flops_per_step"]
        print(
            f"{s['name']:28s} {s['rows'] * s['row_length']:7d} "
            f"{r['model_flops_per_step'] / 1e9:11.1f} "
            f"{(xla or float('nan')) / r['model_flops_per_step']:9.3f} "
            f"{r['step_seconds']:8.3f} {r['model_flops_per_s'] / 1e9:8.1f} {r['mfu']:6.3f}"
        )
    rates = {k: v for k, v in flat.items() if k.startswith("matmul_flops_per_s")}
    print("matmul: " + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in rates.items()))


if __name__ == "__main__":
    sys.exit(main())
