#!/usr/bin/env bash
# Trains the shipped Shapes checkpoint on a 2-core CPU and installs it in
# experiments/shapes/checkpoint. Run from the repository root after `make venv`. Retrain with
# this script whenever a model change makes the checkpoint stale.
#   VAE=experiments/shapes/checkpoint/vae experiments/shapes/train_checkpoint.sh
# keeps the shipped VAE and retrains only the DiT (8000 steps, about 110 minutes; the shipped
# DiT was made this way); without VAE the VAE is trained first (about 12 more minutes).
set -euo pipefail
RUNS=experiments/shapes/runs
SORAJ=.venv/bin/soraj
VAE=${VAE:-}

if [ -z "$VAE" ]; then
  $SORAJ train-vae --config=soraj/configs/vae.py:tiny --workdir=$RUNS/vae
  VAE=$RUNS/vae
fi
# The DiT with the trainer's defaults: the mask curriculum of the prompting modes and adaLN
# per (sample, t); 32 text tokens, as the shipped checkpoint has; 8000 steps, since 40 % of
# the samples are plain text to video (at 5000 the shapes probe was 0.05 below the text-only
# model's). The learning rate is constant after warm-up, so a run stopped at 5000 and resumed
# to 8000 is the same run.
$SORAJ train --config=soraj/configs/t2v.py:tiny --config.vae_checkpoint=$VAE \
  --config.text.max_tokens=32 --config.total_steps=8000 --workdir=$RUNS/dit_masks

# The export bundle (EMA params in bfloat16, dit/ + the vae/ it trained with) is what ships;
# the checkpoint folder's captioner/ (experiments/captioner) stays as it is.
for part in dit vae; do
  rm -rf experiments/shapes/checkpoint/$part
  cp -r $RUNS/dit_masks/export/$part experiments/shapes/checkpoint/$part
done
du -sh experiments/shapes/checkpoint/*
