#!/usr/bin/env bash
# Trains the shipped Shapes checkpoint from scratch on a 2-core CPU (about 12 + 45 minutes)
# and installs it in experiments/shapes/checkpoint. Run from the repository root after
# `make venv`. Retrain with this script whenever a model change makes the checkpoint stale.
set -euo pipefail
RUNS=experiments/shapes/runs
SORAJ=.venv/bin/soraj

$SORAJ train-vae --config=soraj/configs/vae.py:tiny --workdir=$RUNS/vae
$SORAJ train --config=soraj/configs/t2v.py:tiny --config.vae_checkpoint=$RUNS/vae \
  --config.text.max_tokens=32 --workdir=$RUNS/dit  # the shipped checkpoint has 32 tokens

# The export bundle (EMA params in bfloat16, dit/ + vae/) is what ships.
rm -rf experiments/shapes/checkpoint
cp -r $RUNS/dit/export experiments/shapes/checkpoint
du -sh experiments/shapes/checkpoint
