"""The README's prompting-mode table from the probe results: the model trained with the mask
curriculum (results/modes.json), the earlier text-only model sampled the same way
(results/modes_before.json) and the baselines, per mode.

    .venv/bin/python experiments/probes/table.py
"""

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
COLUMNS = (
    ("seam_jump", "seam jump"),
    ("wrap_jump", "wrap jump"),
    ("motion_ratio", "motion ratio"),
    ("direction_cosine", "direction"),
    ("speed_ratio", "speed"),
    ("given_psnr", "given PSNR"),
    ("probe_overall", "probe overall"),
    ("start_offset_pixels", "start offset (px)"),
)


def rows(summary: dict, label: str, methods=None):
    for mode, by_method in summary.items():
        for method, metrics in by_method.items():
            if methods is not None and method not in methods:
                continue
            name = label if method == "model" else method
            yield mode, name, metrics


def main():
    after = json.loads((RESULTS / "modes.json").read_text())["summary"]
    before = json.loads((RESULTS / "modes_before.json").read_text())["summary"]
    table = list(rows(after, "curriculum model"))
    table += list(rows(before, "text-only model", methods={"model"}))
    order = {mode: i for i, mode in enumerate(after)}
    table.sort(key=lambda row: order[row[0]])
    used = [(k, title) for k, title in COLUMNS if any(k in m for _, _, m in table)]
    print("| mode | method | " + " | ".join(title for _, title in used) + " |")
    print("|---|---|" + "---|" * len(used))
    for mode, name, metrics in table:
        cells = [f"{metrics[k]:.2f}" if k in metrics else "" for k, _ in used]
        print(f"| {mode.replace('_', ' ')} | {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
