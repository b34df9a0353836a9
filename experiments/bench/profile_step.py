"""Where the DiT train step's time goes: a jax.profiler trace of a few steps, summed by the
XLA:CPU thunk that ran (matmuls, which XLA:CPU runs as YNNPACK fusions or dots, and each kind
of elementwise fusion, copy, transpose and broadcast), with the compiled HLO's op counts.

The model and batch are peer.py's (width 384, depth 6, 6 heads, two clips of 5×16×16 latents),
with the modulation, scan and remat to profile:

    .venv/bin/python experiments/bench/profile_step.py --modulation single --scan \
        --remat dots_saveable --out /tmp/profile        # about 1 minute on 2 cores

It prints the time per step of each kind and the slowest thunks; look a thunk up in the HLO
it writes beside the trace (step.hlo) by name.
"""

import argparse
import collections
import glob
import gzip
import json
import re
import sys
import time
from pathlib import Path

import jax

from soraj.models.dit import MODULATIONS, REMAT_CHOICES

sys.path.insert(0, str(Path(__file__).parent))
from peer import peer_size_step  # noqa: E402

NOT_OPS = ("ThunkExecutor", "$", "PjitFunction", "SlinkyThreadPool")


def thunk_kind(name: str) -> str:
    if name.startswith("ynn_fusion") or name.startswith("xnn_fusion") or name.startswith("dot"):
        return "matmul"
    return re.sub(r"[.\d]+$", "", name)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modulation", choices=MODULATIONS, default="single")
    parser.add_argument("--scan", action="store_true")
    parser.add_argument("--remat", choices=REMAT_CHOICES, default="none")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("/tmp/soraj_profile"))
    args = parser.parse_args()
    step, state, batch, rng = peer_size_step(
        modulation=args.modulation, scan_blocks=args.scan, remat=args.remat
    )
    compiled = step.lower(state, batch, rng).compile()
    args.out.mkdir(parents=True, exist_ok=True)
    hlo = compiled.as_text()
    (args.out / "step.hlo").write_text(hlo)
    for _ in range(2):
        state, metrics = compiled(state, batch, rng)
    jax.block_until_ready(metrics)
    started = time.perf_counter()
    with jax.profiler.trace(str(args.out)):
        for _ in range(args.steps):
            state, metrics = compiled(state, batch, rng)
            jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - started) / args.steps
    trace = sorted(glob.glob(f"{args.out}/**/*.trace.json.gz", recursive=True))[-1]
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
    print(f"trace and step.hlo in {args.out}")


if __name__ == "__main__":
    main()
