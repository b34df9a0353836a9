"""Where the DiT train step's time goes: a jax.profiler trace of a few steps, summed by the
XLA:CPU thunk that ran (matmuls, which XLA:CPU runs as YNNPACK fusions or dots, and each kind
of elementwise fusion, copy, transpose and broadcast), with the compiled HLO's op counts.

The model and batch are peer.py's (width 384, depth 6, 6 heads, two clips of 5×16×16 latents)
with the trainer's scan, remat and modulation unless given, run in the environment the soraj
command gives itself (soraj/cpu_runtime.py):

    .venv/bin/python experiments/bench/profile_step.py \
        --out experiments/bench/results/profile_step.json     # about 1 minute on 2 cores

It prints the time per step of each kind and the slowest thunks, and writes them as JSON with
the matmul time beside the step time; look a thunk up in the HLO it writes beside the trace
(TRACE_DIR/step.hlo) by name.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import time
from pathlib import Path

from soraj.cpu_runtime import prepare_command_process

prepare_command_process()  # as the soraj command runs; before JAX is imported

import jax  # noqa: E402

from soraj.models.dit import MODULATIONS, REMAT_CHOICES  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from peer import peer_size_step  # noqa: E402

NOT_OPS = ("ThunkExecutor", "$", "PjitFunction", "SlinkyThreadPool")


def thunk_kind(name: str) -> str:
    if name.startswith("ynn_fusion") or name.startswith("xnn_fusion") or name.startswith("dot"):
        return "matmul"
    return re.sub(r"[.\d]+$", "", name)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modulation", choices=MODULATIONS, help="default: the trainer's")
    parser.add_argument("--scan", type=int, choices=(0, 1), help="default: the trainer's")
    parser.add_argument("--remat", choices=REMAT_CHOICES, help="default: the trainer's")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--trace-dir", type=Path, default=Path("/tmp/soraj_profile"))
    parser.add_argument("--out", type=Path, help="write the per-kind times as JSON here")
    args = parser.parse_args()
    changes = {"modulation": args.modulation, "remat": args.remat}
    changes["scan_blocks"] = None if args.scan is None else bool(args.scan)
    changes = {k: v for k, v in changes.items() if v is not None}
    step, state, batch, rng = peer_size_step(**changes)
    compiled = step.lower(state, batch, rng).compile()
    args.trace_dir.mkdir(parents=True, exist_ok=True)
    hlo = compiled.as_text()
    (args.trace_dir / "step.hlo").write_text(hlo)
    for _ in range(2):
        state, metrics = compiled(state, batch, rng)
    jax.block_until_ready(metrics)
    started = time.perf_counter()
    with jax.profiler.trace(str(args.trace_dir)):
        for _ in range(args.steps):
            state, metrics = compiled(state, batch, rng)
            jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - started) / args.steps
    trace = sorted(glob.glob(f"{args.trace_dir}/**/*.trace.json.gz", recursive=True))[-1]
    events = [e for e in json.load(gzip.open(trace))["traceEvents"] if e.get("ph") == "X"]
    per_thunk, calls = collections.Counter(), collections.Counter()
    for event in events:
        if not event["name"].startswith(NOT_OPS):
            per_thunk[event["name"]] += event.get("dur", 0) / 1e3 / args.steps
            calls[event["name"]] += 1
    per_kind = collections.Counter()
    for name, ms in per_thunk.items():
        per_kind[thunk_kind(name)] += ms
    ops = collections.Counter(re.findall(r"= \S+ (\w[\w-]*)\(", hlo))
    print(f"{seconds:.3f} s a step (profiled); thunk time {sum(per_thunk.values()):.0f} ms a step")
    print("HLO ops: " + ", ".join(f"{k} {ops[k]}" for k in ("dot", "transpose", "copy", "fusion")))
    for kind, ms in per_kind.most_common(args.top):
        print(f"{ms:9.1f} ms  {kind}")
    print("slowest thunks (ms a step, calls a step):")
    for name, ms in per_thunk.most_common(args.top):
        print(f"{ms:9.1f} ms {calls[name] // args.steps:4d}×  {name}")
    print(f"trace and step.hlo in {args.trace_dir}")
    if args.out:
        result = {
            "dit_changes": changes,
            "environment": {k: os.environ.get(k, "") for k in ("GLIBC_TUNABLES", "XLA_FLAGS")},
            "profiled_step_seconds": seconds,
            "thunk_ms_per_step": sum(per_thunk.values()),
            "ms_per_step_by_kind": dict(per_kind.most_common()),
            "hlo_ops": {k: ops[k] for k in ("dot", "transpose", "copy", "fusion")},
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
