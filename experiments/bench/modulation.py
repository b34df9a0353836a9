"""adaLN-single against the per-token adaLN it replaced, on the same budget: run E of the
re-captioning experiment (experiments/recaption/config.py:E, per-token adaLN) and the same run
with adaLN-single (config.py:E-single): the same clips in the same order, captions, steps,
schedule and seed. Training losses are compared at the logged steps (every 50th; a logged
loss is one batch's, so single steps are noisy); the shapes probe scores both on the same 200
prompts per set with the same noise (experiments/recaption/evaluate.py).

    .venv/bin/soraj train --config=experiments/recaption/config.py:E-single \\
        --workdir=experiments/recaption/runs/E-single
    .venv/bin/python experiments/recaption/evaluate.py --runs E E-single --num-prompts 200 \\
        --out experiments/recaption/results/modulation.json
    .venv/bin/python experiments/bench/modulation.py      # reads the two; writes the table
"""

import argparse
import json
from pathlib import Path

import numpy as np

RESULTS = Path("experiments/recaption/results")
RUNS = {"per_token": "E", "single": "E-single"}


def losses(path: Path) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in map(json.loads, path.read_text().splitlines())}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--from-step", type=int, default=500, help="loss averaged from here on")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "modulation.json"
    )
    args = parser.parse_args()
    curves = {name: losses(RESULTS / f"{run}_metrics.jsonl") for name, run in RUNS.items()}
    steps = sorted(s for s in curves["single"] if s in curves["per_token"] and s >= args.from_step)
    paired = np.array([curves["single"][s] - curves["per_token"][s] for s in steps])
    probe = json.loads((RESULTS / "modulation.json").read_text())
    result = {
        "steps_compared": steps,
        "mean_loss": {name: float(np.mean([c[s] for s in steps])) for name, c in curves.items()},
        "mean_loss_difference_single_minus_per_token": float(paired.mean()),
        "steps_single_lower": int((paired < 0).sum()),
        "probe": {
            name: {
                prompt_set: {key: row[key]["mean"] for key in ("fully_right", "right")}
                for prompt_set, row in probe["table"][run].items()
            }
            for name, run in RUNS.items()
        },
        "probe_differences_single_minus_per_token": {
            key.removeprefix("E-single-E "): value
            for key, value in probe["paired_differences"].items()
            if key.startswith("E-single-E ")
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"loss, steps {steps[0]}-{steps[-1]} ({len(steps)} logged steps):")
    for name, value in result["mean_loss"].items():
        print(f"  {name:10s} {value:.4f}")
    lower = f"single lower at {(paired < 0).sum()} of {len(steps)}"
    print(f"  single − per_token at the same steps: {paired.mean():+.4f} ({lower})")
    for key, value in result["probe_differences_single_minus_per_token"].items():
        low, high = value["ci95"]
        print(f"probe single − per_token {key}: {value['mean']:+.3f} [{low:+.3f}, {high:+.3f}]")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
