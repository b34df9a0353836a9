"""The adaLN layouts on the same budget: run E of the re-captioning experiment
(experiments/recaption/config.py:E, per-token adaLN) against the same run with adaLN-single
(config.py:E-single) and with the DiT paper's per-sample adaLN (config.py:E-per_segment,
exact here because training draws one t per sample): the same clips in the same order,
captions, steps, schedule and seed. Training losses are compared at the logged steps (every
50th; a logged loss is one batch's, so single steps are noisy); the shapes probe scores every
run on the same 200 prompts per set with the same noise (experiments/recaption/evaluate.py).

    .venv/bin/soraj train --config=experiments/recaption/config.py:E-single \\
        --workdir=experiments/recaption/runs/E-single        # and the same for E-per_segment
    .venv/bin/python experiments/recaption/evaluate.py --runs E E-single E-per_segment \\
        --num-prompts 200 --out experiments/recaption/results/modulation.json
    .venv/bin/python experiments/bench/modulation.py      # reads them; writes the table
"""

import argparse
import json
from pathlib import Path

import numpy as np

RESULTS = Path("experiments/recaption/results")
REFERENCE = ("per_token", "E")
OTHERS = {"single": "E-single", "per_segment": "E-per_segment"}


def losses(path: Path) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in map(json.loads, path.read_text().splitlines())}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--from-step", type=int, default=500, help="loss averaged from here on")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "modulation.json"
    )
    args = parser.parse_args()
    runs = dict([REFERENCE]) | OTHERS
    curves = {name: losses(RESULTS / f"{run}_metrics.jsonl") for name, run in runs.items()}
    steps = sorted(s for s in curves["per_token"] if s >= args.from_step)
    probe = json.loads((RESULTS / "modulation.json").read_text())
    result = {"steps_compared": steps, "layouts": {}}
    print(f"loss, steps {steps[0]}-{steps[-1]} ({len(steps)} logged steps)")
    for name, run in runs.items():
        row = {
            "run": run,
            "mean_loss": float(np.mean([curves[name][s] for s in steps])),
            "probe": {
                prompt_set: {key: cell[key]["mean"] for key in ("fully_right", "right")}
                for prompt_set, cell in probe["table"][run].items()
            },
        }
        if name != REFERENCE[0]:
            delta = np.array([curves[name][s] - curves["per_token"][s] for s in steps])
            row["mean_loss_difference_to_per_token"] = float(delta.mean())
            row["steps_lower_than_per_token"] = int((delta < 0).sum())
            prefix = f"{run}-{REFERENCE[1]} "
            row["probe_differences_to_per_token"] = {
                key.removeprefix(prefix): value
                for key, value in probe["paired_differences"].items()
                if key.startswith(prefix)
            }
        result["layouts"][name] = row
        print(f"{name:12s} loss {row['mean_loss']:.4f}")
        for key, value in row.get("probe_differences_to_per_token", {}).items():
            low, high = value["ci95"]
            print(f"  − per_token {key}: {value['mean']:+.3f} [{low:+.3f}, {high:+.3f}]")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
