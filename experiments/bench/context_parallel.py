"""Speed of the context-parallel strategies (soraj/models/context_attention.py) against
all-gather at equal work, on 8 fake CPU devices: self-attention forward + backward (gradients of
a weighted sum with respect to q, k and v) of one row of L tokens split over context = 8.

Two rows: one segment over the whole row (every query sees every key: no ring hop can be
skipped), and a packed row of segments of 1/16 of it (most ring hops hold no shared segment
and are skipped). Each strategy's result is first checked against all-gather's (max abs
difference ≤ 1e-4); then the strategies take turns, median of several runs after a
compiling call. The 8 devices share this machine's cores, so the numbers measure how much
work and memory traffic each strategy adds, not interconnect speed.

    .venv/bin/python experiments/bench/context_parallel.py    # about 2 minutes on 2 cores
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from soraj import sharding  # noqa: E402
from soraj.models.context_attention import CONTEXT_STRATEGIES  # noqa: E402
from soraj.models.layers import attention  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "context_parallel.json"
TOLERANCE = 1e-4


def step_fn(strategy: str, mesh, weights):
    def loss(q, k, v, ids):
        with (
            jax.sharding.use_abstract_mesh(mesh.abstract_mesh),
            nn.logical_axis_rules(sharding.DIT_RULES),
        ):
            out = attention(
                q, k, v, q_segment_ids=ids, kv_segment_ids=ids, context_parallel=strategy
            )
        return jnp.sum(out * weights)

    tokens = sharding.tokens_sharding(mesh)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)), in_shardings=(tokens,) * 4)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if jax.device_count() < 8:
        raise SystemExit(f"needs 8 devices, sees {jax.device_count()}: set XLA_FLAGS")
    mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=1, context=8)))
    length = args.tokens
    rng = np.random.default_rng(0)
    q, k, v, weights = (
        jnp.asarray(rng.normal(size=(1, length, args.heads, args.head_dim)), jnp.float32)
        for _ in range(4)
    )
    rows = {
        "one segment": np.ones((1, length), np.int32),
        "16 segments": np.repeat(np.arange(1, 17, dtype=np.int32), length // 16)[None],
    }
    results = {"settings": vars(args) | {"out": str(args.out)}, "cases": {}}
    for name, ids in rows.items():
        steps = {s: step_fn(s, mesh, weights) for s in CONTEXT_STRATEGIES}
        outputs = {s: step(q, k, v, ids) for s, step in steps.items()}  # compiles
        (ref_loss, ref_grads) = outputs["all_gather"]
        for strategy, (loss, grads) in outputs.items():
            diff = max(float(jnp.abs(g - r).max()) for g, r in zip(grads, ref_grads, strict=True))
            assert abs(float(loss - ref_loss)) <= TOLERANCE * max(1, abs(float(ref_loss)))
            assert diff <= TOLERANCE, f"{name} {strategy}: gradients differ by {diff}"
        times = {s: [] for s in steps}
        for _ in range(args.repeats):
            for strategy, step in steps.items():
                start = time.perf_counter()
                jax.block_until_ready(step(q, k, v, ids))
                times[strategy].append(time.perf_counter() - start)
        medians = {s: statistics.median(t) for s, t in times.items()}
        results["cases"][name] = {
            s: {"seconds": medians[s], "vs_all_gather": medians["all_gather"] / medians[s]}
            for s in steps
        }
        line = ", ".join(
            f"{s} {medians[s] * 1e3:.0f} ms ({medians['all_gather'] / medians[s]:.2f}×)"
            for s in steps
        )
        print(f"{name}, {length} tokens over 8 devices: {line}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
