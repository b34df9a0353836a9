"""How right a recaptioned dataset's dense captions are about its clips: each `caption_dense`
of a `soraj recaption` folder made from the Shapes TFDS dataset, parsed and compared with the
clip's exact caption (soraj/captions/accuracy.py).

  .venv/bin/python experiments/recaption/caption_quality.py \
      --recaptioned experiments/recaption/data/recaptioned \
      --out experiments/recaption/results/caption_quality.json
"""

import argparse
import json
from pathlib import Path

import numpy as np

from soraj.captions.accuracy import caption_accuracy
from soraj.data.shapes import parse_dense_caption
from soraj.data.tfds_shapes import load_shapes_dataset


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recaptioned", default="experiments/recaption/data/recaptioned")
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", default="experiments/recaption/results/caption_quality.json")
    args = parser.parse_args()
    folder = Path(args.recaptioned)
    info = json.loads((folder / "dataset.json").read_text())
    records = [json.loads(line) for line in (folder / "captions.jsonl").read_text().splitlines()]
    records = [r for r in records if r["split"] == args.split]
    clips = load_shapes_dataset(info["input"], args.split)
    truths = [parse_dense_caption(clips[r["index"]]["caption"]) for r in records]
    dense = caption_accuracy([r["caption_dense"] for r in records], truths)
    lengths = {
        field: float(np.mean([len(r[field].split()) for r in records]))
        for field in ("caption_original", "caption_dense", "caption_short")
    }
    result = {"records": len(records), "dense": dense, "mean_words": lengths}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
