#!/usr/bin/env bash
# Trains the two shipped real-footage VAEs and evaluates them (see NOTES.md).
#
# The shipped weights came from exactly these two training commands, run at the same time on
# one H100 (about 8 minutes each; experiments/vae_real/GPU.md has the set-up for that machine).
# On this 2-core CPU they run too, far slower. Run from the repository root.
set -euo pipefail
PY=${PY:-.venv/bin/python}
RUNS=${RUNS:-experiments/vae_real/runs}

$PY experiments/vae_real/prepare_data.py
for preset in 4x8x8 4x4x4; do
  $PY -m soraj train-vae --config=soraj/configs/vae.py:real-$preset \
    --config.data.folder=experiments/vae_real/data/train \
    --config.total_steps=1400 --config.save_every=700 \
    --workdir="$RUNS/$preset" &
done
wait

for pair in 4x8x8:cpu-4x8x8-c16 4x4x4:cpu-4x4x4-c8; do
  target=experiments/vae_real/checkpoints/${pair#*:}
  rm -rf "$target" && mkdir -p "$target"
  cp -r "$RUNS/${pair%%:*}/export/." "$target/"
  cp "$RUNS/${pair%%:*}/metrics.jsonl" experiments/vae_real/results/train_metrics_${pair#*:}.jsonl
done

$PY experiments/vae_real/evaluate.py \
  --checkpoint experiments/vae_real/checkpoints/cpu-4x8x8-c16 \
  --checkpoint experiments/vae_real/checkpoints/cpu-4x4x4-c8 \
  --checkpoint experiments/shapes/checkpoint/vae \
  --out experiments/vae_real/results/reconstruction.json
