"""Speed of each attention backend against the dense XLA reference, on packed rows with segment ids.

Each row holds several segments and some tail padding (segment id 0), as a packed batch does.
For every backend the jitted forward and forward+backward (gradients of a weighted sum with
respect to q, k and v) are first checked against the reference (max abs difference ≤ 1e-4),
then timed: median of several runs after a compiling warm-up call, the backends taking turns.
On CPU "cudnn" (jax.nn.dot_product_attention) falls back to XLA and "splash" runs the Pallas
kernel in interpret mode, so CPU ratios say nothing about GPU or TPU speed.

    .venv/bin/python experiments/bench/attention_backends.py     # about 10 s on 2 cores
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from soraj.models.layers import ATTENTION_BACKENDS, attention

RESULTS = Path(__file__).parent / "results" / "attention_backends.json"
REFERENCE = "xla"
TOLERANCE = 1e-4
# (segment id, tokens) runs per row; 0 is padding. Segment edges fall inside 128-token blocks.
ROW_SEGMENTS = (
    ((1, 200), (2, 150), (3, 100), (0, 62)),
    ((1, 300), (2, 90), (3, 90), (0, 32)),
)


# ---- Inputs ----


def packed_segment_ids(length: int) -> np.ndarray:
    """int32 (B, L) segment ids of ROW_SEGMENTS, scaled to rows of `length` tokens."""
    rows = []
    for runs in ROW_SEGMENTS:
        counts = [n * length // 512 for _, n in runs]
        counts[-1] += length - sum(counts)  # padding absorbs the rounding
        rows.append(
            np.concatenate(
                [np.full(n, s, np.int32) for (s, _), n in zip(runs, counts, strict=True)]
            )
        )
    return np.stack(rows)  # (B, L)


def make_inputs(length: int, width: int, num_heads: int, seed: int):
    rng = np.random.default_rng(seed)
    segment_ids = jnp.asarray(packed_segment_ids(length))  # (B, L)
    shape = (segment_ids.shape[0], length, num_heads, width // num_heads)  # (B, L, N, K)
    q, k, v, weights = (jnp.asarray(rng.normal(size=shape), jnp.float32) for _ in range(4))
    return q, k, v, weights, segment_ids


# ---- Functions under test ----


def forward_fn(backend: str, segment_ids):
    def forward(q, k, v):
        return attention(
            q, k, v, q_segment_ids=segment_ids, kv_segment_ids=segment_ids, backend=backend
        )

    return jax.jit(forward)


def forward_backward_fn(backend: str, segment_ids, weights):
    """Loss and its gradients with respect to q, k and v."""

    def loss(q, k, v):
        out = attention(
            q, k, v, q_segment_ids=segment_ids, kv_segment_ids=segment_ids, backend=backend
        )
        return (out * weights).sum()

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


# ---- Measuring ----


def median_seconds(fns: dict, args, repeats: int) -> dict:
    """{name: median seconds per call}; the calls alternate round by round, so load from other
    processes on a shared machine falls on every backend alike."""
    for fn in fns.values():
        jax.block_until_ready(fn(*args))  # compile and warm up
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def max_abs_difference(a, b) -> float:
    leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in leaves)


def check_agrees(backend: str, mode: str, out, reference) -> float:
    """Refuses to time a backend whose result differs from the reference."""
    difference = max_abs_difference(out, reference)
    if not difference <= TOLERANCE:
        raise RuntimeError(
            f"{backend} {mode} differs from the {REFERENCE} reference by {difference:.3g} "
            f"> {TOLERANCE}; not timing a wrong kernel"
        )
    return difference


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=512, help="tokens per packed row (L)")
    parser.add_argument("--width", type=int, default=128, help="model width (D = N·K)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=51)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    if args.width % args.heads:
        raise ValueError(f"--width {args.width} must be a multiple of --heads {args.heads}")

    q, k, v, weights, segment_ids = make_inputs(args.length, args.width, args.heads, seed=0)
    platform = jax.default_backend()
    result = {
        "platform": platform,
        "device": jax.devices()[0].device_kind,
        "batch": int(segment_ids.shape[0]),
        "length": args.length,
        "width": args.width,
        "heads": args.heads,
        "segments": sum(1 for runs in ROW_SEGMENTS for s, _ in runs if s),
        "padding_fraction": float(jnp.mean(segment_ids == 0)),
        "repeats": args.repeats,
        "tolerance": TOLERANCE,
        "reference": REFERENCE,
    }
    if platform == "cpu":
        result["note"] = (
            "CPU run: cudnn (jax.nn.dot_product_attention) falls back to XLA and splash runs "
            "the Pallas kernel in interpret mode, so these ratios say nothing about GPU or TPU "
            "speed."
        )
    backends = [REFERENCE] + [b for b in ATTENTION_BACKENDS if b != REFERENCE]
    makers = {"forward": forward_fn, "forward_backward": forward_backward_fn}
    print(f"{'backend':8s} {'mode':17s} {'ms':>9s} {'÷ xla':>7s} {'max |diff|':>11s}")
    for mode, make in makers.items():
        extra = () if mode == "forward" else (weights,)
        fns = {backend: make(backend, segment_ids, *extra) for backend in backends}
        reference = fns[REFERENCE](q, k, v)
        differences = {
            backend: check_agrees(backend, mode, fn(q, k, v), reference)
            for backend, fn in fns.items()
        }
        seconds = median_seconds(fns, (q, k, v), args.repeats)
        for backend in backends:
            ratio = seconds[backend] / seconds[REFERENCE]
            result[f"{backend}_{mode}_ms"] = round(seconds[backend] * 1e3, 3)
            result[f"{backend}_{mode}_ratio"] = round(ratio, 3)
            result[f"{backend}_{mode}_max_abs_diff"] = differences[backend]
            print(
                f"{backend:8s} {mode:17s} {seconds[backend] * 1e3:9.2f} {ratio:7.2f} "
                f"{differences[backend]:11.2e}"
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
