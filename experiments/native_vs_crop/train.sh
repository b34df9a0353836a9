#!/usr/bin/env bash
# Trains the two DiTs of NOTES.md at the same time (one per core of a 2-core CPU, about an
# hour): the same model, steps, seed and tokens per step, on the same wide (32×64) and tall
# (64×32) Shapes clips, 9 frames, with the shipped Shapes VAE.
#   native: each clip at its own size (96 tokens), two per packed row of 192 tokens;
#   crop:   each clip centre-cropped to 32×32 first (48 tokens), four per row.
# Run from the repository root after `make venv`.
set -euo pipefail
RUNS=${RUNS:-experiments/native_vs_crop/runs}
STEPS=${STEPS:-3000}
SORAJ=.venv/bin/soraj
COMMON=(
  --config=soraj/configs/t2v.py:tiny
  --config.vae_checkpoint=experiments/shapes/checkpoint/vae
  --config.data.source=shapes_canvases
  "--config.data.canvases=((32, 64), (64, 32))"
  --config.data.height=32 --config.data.width=64
  --config.data.row_length=192 --config.data.token_budget=96 --config.batch_size=8
  --config.total_steps=$STEPS --config.sample_every=1000000 --config.save_every=500
)
mkdir -p $RUNS
XLA_FLAGS="--xla_force_host_platform_device_count=1" taskset -c 0 $SORAJ train "${COMMON[@]}" \
  --config.data.max_segments=2 --workdir=$RUNS/native > $RUNS/native.log 2>&1 &
XLA_FLAGS="--xla_force_host_platform_device_count=1" taskset -c 1 $SORAJ train "${COMMON[@]}" \
  --config.data.max_segments=4 --config.data.square_crop=True --workdir=$RUNS/crop \
  > $RUNS/crop.log 2>&1 &
wait
tail -n 3 $RUNS/native.log $RUNS/crop.log
