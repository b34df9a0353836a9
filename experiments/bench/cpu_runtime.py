"""What the trainer's block layout and the soraj command's huge pages are worth: the DiT train
step at peer.py's size (width 384, depth 6, two clips of 5×16×16 latents) in fresh processes,
one variant after another in turns over rounds. Per variant: tokens/s over the first
variant's in the same round (median over rounds), and the page faults and kernel (system)
CPU seconds per step, which the machine's other load does not blur the way it blurs time.

  unrolled               the blocks unrolled, no remat, no huge pages: the trainer before
                         issue 12's CPU work
  scan+dots              the trainer's scanned blocks with dots_saveable remat
  scan+dots, huge pages  and glibc's hugetlb tunable (soraj/cpu_runtime.py): what `soraj
                         train` runs

    .venv/bin/python experiments/bench/cpu_runtime.py     # about 5 minutes on 2 cores
"""

import argparse
import json
import os
import statistics
from pathlib import Path

from peer import run_side  # experiments/bench, the script's own folder

from soraj.cpu_runtime import with_huge_pages

HERE = Path(__file__).parent
UNROLLED = {"scan_blocks": False, "remat": "none"}
SCANNED = {"scan_blocks": True, "remat": "dots_saveable"}


def variants(environ: dict) -> dict[str, tuple[dict, dict]]:
    """{name: (DiT changes, environment)}; the first is the reference."""
    plain = {k: v for k, v in environ.items() if k != "GLIBC_TUNABLES"}
    return {
        "unrolled": (UNROLLED, plain),
        "scan+dots": (SCANNED, plain),
        "scan+dots, huge pages": (SCANNED, with_huge_pages(plain)),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "cpu_runtime.json")
    args = parser.parse_args()
    table = variants(dict(os.environ))
    rounds = []
    for round_ in range(args.rounds):
        result = {}
        for name, (dit, environ) in table.items():
            result[name] = run_side("soraj", args.steps, args.warmup, None, environ, dit)
        reference = next(iter(result.values()))["tokens_per_s"]
        for row in result.values():
            row["ratio"] = row["tokens_per_s"] / reference
        rounds.append(result)
        print(
            f"round {round_ + 1}/{args.rounds}: "
            + ", ".join(f"{k} {v['tokens_per_s']:.0f}" for k, v in result.items()),
            flush=True,
        )
    summary = {
        name: {
            key: statistics.median(r[name][key] for r in rounds)
            for key in ("ratio", "tokens_per_s", "page_faults_per_step", "system_seconds_per_step")
        }
        | {"dit_changes": dit, "glibc_tunables": environ.get("GLIBC_TUNABLES", "")}
        for name, (dit, environ) in table.items()
    }
    output = {
        "variants": summary,
        "rounds": rounds,
        "settings": {k: str(v) for k, v in vars(args).items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(output, indent=1))
    for name, row in summary.items():
        print(
            f"{name:24s} {row['tokens_per_s']:6.0f} tokens/s  {row['ratio']:.3f}×  "
            f"{row['page_faults_per_step']:8.0f} faults  "
            f"{row['system_seconds_per_step'] * 1e3:5.0f} ms system a step"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
