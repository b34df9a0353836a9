"""Plots experiments/scaling/results/scaling.json: the probe's fully-right share and its mean
check score (each with its 95 % bootstrap interval) and the validation loss against training
FLOPs, one line per DiT width.

    .venv/bin/python experiments/scaling/plot.py   # → experiments/scaling/results/scaling.png
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on a CPU host or in CI
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    results = Path("experiments/scaling/results")
    parser.add_argument("--results", type=Path, default=results / "scaling.json")
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="JSON=LABEL",
        help="another evaluate.py output drawn dashed, its lines labelled with LABEL (a "
        "latent layout, say); its validation losses are on its own latents",
    )
    parser.add_argument("--out", type=Path, default=results / "scaling.png")
    args = parser.parse_args()
    figure, (probe, overall, loss) = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
    sources = [(args.results, "", "-")]
    for item in args.compare:
        path, _, label = item.partition("=")
        sources.append((Path(path), f", {label}" if label else "", "--"))
    for path, suffix, style in sources:
        rows = json.loads(path.read_text())["rows"]
        for width in sorted({row["width"] for row in rows}):
            line = sorted((r for r in rows if r["width"] == width), key=lambda r: r["flops"])
            flops = [r["flops"] for r in line]
            label = f"width {width} ({line[0]['params'] / 1e6:.1f} M params){suffix}"
            for axes, key in ((probe, "fully_right"), (overall, "overall")):
                mean = [r[key]["mean"] for r in line]
                low = [r[key]["mean"] - r[key]["ci95"][0] for r in line]
                high = [r[key]["ci95"][1] - r[key]["mean"] for r in line]
                axes.errorbar(
                    flops, mean, yerr=[low, high], marker="o", capsize=3, ls=style, label=label
                )
            loss.plot(flops, [r["validation_loss"] for r in line], "o" + style, label=label)
    probe.set(ylabel="held-out prompts fully right", title="Shapes probe, 95 % bootstrap intervals")
    overall.set(
        ylabel="mean of the probe's checks", title="Every attribute of every object, averaged"
    )
    loss.set(yscale="log", ylabel="validation velocity loss", title="Held-out clips, mean over t")
    for axes in (probe, overall):
        axes.set(ylim=(0, 1))
    for axes in (probe, overall, loss):
        axes.set(xscale="log", xlabel="training FLOPs (standard count)")
        axes.grid(True, which="both", alpha=0.3)
        axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no crowded labels
        axes.legend(loc="lower left" if axes is loss else "upper left", fontsize="small")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
