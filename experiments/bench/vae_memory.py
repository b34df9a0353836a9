"""Peak memory and frames/s of VAE encode and decode as the clip grows from 17 to 137 frames,
chunked in time (what encode_within_budget / decode_within_budget run when whole frames fit)
against one whole-clip call. Each configuration runs in a fresh subprocess.

    .venv/bin/python experiments/bench/vae_memory.py                 # CPU
    .venv/bin/python experiments/bench/vae_memory.py --device gpu    # first GPU

Peak memory of one call of the whole encode (or decode), per configuration:
  cpu: the process's peak RSS (ru_maxrss) during the call minus its RSS right before it, with the
       RSS high-water mark reset before each call (/proc/self/clear_refs). glibc is told to map
       large blocks fresh and unmap them on free (MALLOC_MMAP_THRESHOLD_), so freed activations
       leave the RSS instead of being reused unseen. XLA frees a call's buffers asynchronously,
       so one chunk's buffers sometimes overlap the next one's and peaks vary from call to call:
       the first call (compilation included) is recorded, then `--repeats` measured calls give
       the median (peak_bytes) and the largest (peak_bytes_max).
  gpu: the device's peak_bytes_in_use minus bytes_in_use before the call (the device peak is
       process-long; every call does the same work).
The input clip exists before the measurement starts; the assembled output is counted. XLA's own
memory analysis (temp + argument + output) of the compiled per-chunk (or whole-clip) function and
the planner's estimates are recorded beside them.
"""

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "vae_memory.json"
STAGES, MODES = ("encode", "decode"), ("chunked", "unchunked")


# ---- Measuring one configuration (in its own process) ------------------------------------


def _measure(args) -> dict:
    import jax
    import numpy as np

    from soraj.eval.peak_memory import PeakMemory
    from soraj.models.vae import VAE_PRESETS, VideoVAE, latent_shape
    from soraj.models.vae_chunked import apply_chunk
    from soraj.models.vae_memory_plan import chunk_call_bytes, estimate_peak_bytes
    from soraj.models.vae_tiling import decode_tiled, encode_tiled

    config = VAE_PRESETS[args.preset]
    model, ft = VideoVAE(config), config.temporal_factor
    frames, h, w, stage, chunked = (
        args.frames,
        args.size,
        args.size,
        args.stage,
        args.mode == "chunked",
    )
    lt, lh, lw, c = latent_shape(config, frames, h, w)
    noise = np.random.default_rng(0)
    video = noise.uniform(-1, 1, (1, frames, h, w, 3)).astype(np.float32)
    init = jax.jit(model.init)(jax.random.key(0, impl="rbg"), video[:, : 1 + ft])
    params = init["params"]
    if stage == "encode":
        x, chunk, method = video, args.encode_chunk, VideoVAE.encode
    else:
        x, chunk, method = (
            noise.normal(size=(1, lt, lh, lw, c)).astype(np.float32),
            args.decode_chunk,
            VideoVAE.decode,
        )
    del video

    whole = jax.jit(lambda p, x: model.apply({"params": p}, x, method=method))
    if chunked:
        tiled = encode_tiled if stage == "encode" else decode_tiled
        work = lambda: tiled(model, params, x, chunk, (h, w), 0)  # whole frames, `chunk` at a time
        _, cache = jax.eval_shape(
            lambda p, x: apply_chunk(model, f"{stage}_chunk", p, None, x), params, x[:, :1]
        )
        steady = jax.ShapeDtypeStruct((1, min(chunk, x.shape[1] - 1), *x.shape[2:]), x.dtype)
        compiled = apply_chunk.lower(model, f"{stage}_chunk", params, cache, steady).compile()
        call_frames = steady.shape[1] * (1 if stage == "encode" else ft)
    else:
        chunk = (frames - 1) if stage == "encode" else (lt - 1)  # one call holds the whole clip
        work = lambda: jax.tree.map(np.asarray, whole(params, x))
        compiled = whole.lower(params, x).compile()
        call_frames = frames
    analysis = compiled.memory_analysis()
    xla_bytes = (
        analysis.temp_size_in_bytes
        + analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
    )

    gpu = jax.default_backend() != "cpu"

    def measured_call() -> tuple[int, float]:
        """(peak bytes above the level right before the call, seconds) of one call of work."""
        gc.collect()
        time.sleep(0.5)  # the runtime frees the last call's buffers asynchronously
        start = time.perf_counter()
        with PeakMemory() as peak:  # the device's peak is process-long: calls do the same work
            out = work()
        seconds = time.perf_counter() - start
        del out
        return peak.bytes, seconds

    first_peak, _ = measured_call()  # compiles, then runs
    peaks, seconds = zip(*(measured_call() for _ in range(args.repeats)), strict=True)
    return {
        "peak_bytes": int(np.median(peaks)),
        "peak_bytes_max": int(max(peaks)),
        "first_call_peak_bytes": None if gpu else int(first_peak),
        "xla_bytes": int(xla_bytes),
        "estimated_call_bytes": int(chunk_call_bytes(config, stage, 1, call_frames, h, w)),
        "estimated_peak_bytes": estimate_peak_bytes(config, stage, (1, frames, h, w), chunk),
        "frames_per_second": frames / min(seconds),  # pixel frames in (encode) or out (decode)
        "chunk": chunk,
        "device": jax.devices()[0].device_kind,
        "backend": jax.default_backend(),
    }


# ---- Driving the subprocesses ------------------------------------------------------------


def _run_one(args, stage: str, mode: str, frames: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", TF_CPP_MIN_LOG_LEVEL="3")
    env["JAX_PLATFORMS"] = "cpu" if args.device == "cpu" else "cuda"
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    command = [sys.executable, __file__, "--worker", "--stage", stage, "--mode", mode]
    command += ["--frames", str(frames), "--preset", args.preset, "--size", str(args.size)]
    command += ["--encode-chunk", str(args.encode_chunk), "--decode-chunk", str(args.decode_chunk)]
    command += ["--repeats", str(args.repeats)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{stage} {mode} {frames} frames failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--preset", default="cpu-4x8x8-c16")
    parser.add_argument("--size", type=int, default=96, help="frame height and width, pixels")
    # 1 + 4k frames nearest to 17, 34, 68 and 136 (= 17 × 8) for a temporal factor of 4.
    parser.add_argument("--lengths", default="17,33,69,137")
    parser.add_argument("--encode-chunk", type=int, default=8, help="pixel frames per call")
    parser.add_argument("--decode-chunk", type=int, default=2, help="latent frames per call")
    parser.add_argument(
        "--repeats", type=int, default=2, help="measured calls: median peak, best time"
    )
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_measure(args)))
        return

    lengths = [int(n) for n in args.lengths.split(",")]
    start = time.perf_counter()
    result = {
        "preset": args.preset,
        "height": args.size,
        "width": args.size,
        "batch": 1,
        "clip_lengths": lengths,
        "shortest_clip_frames": lengths[0],
        "longest_clip_frames": lengths[-1],
        "encode_chunk_pixel_frames": args.encode_chunk,
        "decode_chunk_latent_frames": args.decode_chunk,
        "peak_measure": (
            "process peak RSS (ru_maxrss, high-water mark reset before each call) minus RSS right "
            "before the call; median of the measured calls after a compiling one"
            if args.device == "cpu"
            else "device peak_bytes_in_use minus bytes_in_use before the first call"
        ),
    }
    print(
        f"{'stage':7s} {'mode':9s} {'frames':>6s} {'peak MiB':>9s} {'max MiB':>8s} {'1st MiB':>8s} "
        f"{'XLA MiB':>8s} {'est MiB':>8s} {'frames/s':>9s}"
    )
    for stage in STAGES:
        for mode in MODES:
            for frames in lengths:
                one = _run_one(args, stage, mode, frames)
                result["device"], result["backend"] = one["device"], one["backend"]
                for key in (
                    "peak_bytes",
                    "peak_bytes_max",
                    "first_call_peak_bytes",
                    "xla_bytes",
                    "estimated_call_bytes",
                    "estimated_peak_bytes",
                    "frames_per_second",
                ):
                    result[f"{stage}_{key}_{mode}_{frames}"] = one[key]
                first = one["first_call_peak_bytes"]
                print(
                    f"{stage:7s} {mode:9s} {frames:6d} {one['peak_bytes'] / 2**20:9.1f} "
                    f"{one['peak_bytes_max'] / 2**20:8.1f} "
                    f"{'-' if first is None else f'{first / 2**20:.1f}':>8s} "
                    f"{one['xla_bytes'] / 2**20:8.1f} {one['estimated_peak_bytes'] / 2**20:8.1f} "
                    f"{one['frames_per_second']:9.1f}",
                    flush=True,
                )
    shortest, longest = lengths[0], lengths[-1]
    for mode in MODES:  # a clip's peak: the larger of its encode and its decode
        for tag, frames in ((str(shortest), shortest), ("longest", longest)):
            for key in ("peak_bytes", "estimated_peak_bytes"):
                result[f"{key}_{mode}_{tag}"] = max(
                    result[f"{stage}_{key}_{mode}_{frames}"] for stage in STAGES
                )
        for stage in STAGES:
            result[f"{stage}_frames_per_second_{mode}_longest"] = result[
                f"{stage}_frames_per_second_{mode}_{longest}"
            ]
    for stage in STAGES:
        result[f"{stage}_speed_ratio_chunked_over_unchunked_longest"] = (
            result[f"{stage}_frames_per_second_chunked_longest"]
            / result[f"{stage}_frames_per_second_unchunked_longest"]
        )
    for mode in MODES:
        growth = result[f"peak_bytes_{mode}_longest"] / result[f"peak_bytes_{mode}_{shortest}"] - 1
        result[f"{mode}_peak_growth_shortest_to_longest"] = growth
    growth = result["chunked_peak_growth_shortest_to_longest"]
    result["chunked_peak_flat_within_25_percent"] = abs(growth) <= 0.25
    result["seconds"] = round(time.perf_counter() - start, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    unchunked = result["unchunked_peak_growth_shortest_to_longest"]
    print(f"peak {shortest} → {longest} frames: chunked {growth:+.1%}, unchunked {unchunked:+.1%}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
