#!/usr/bin/env bash
# The shapes-probe numbers of experiments/shapes/NOTES.md and README: the shipped checkpoint
# and the demo's quick checkpoint on 50 prompts whose colour-shape pairs were held out from
# training, and on 50 prompts of the training distribution. Run from the repository root.
# QUICK: the quick checkpoint's folder (made by `soraj demo --train-quick-checkpoint --out out/quick`).
set -euo pipefail
QUICK=${QUICK:-out/quick/quick_checkpoint/dit/export}
RESULTS=experiments/shapes/results
SORAJ=.venv/bin/soraj
for split in heldout train; do
  $SORAJ evaluate --checkpoint experiments/shapes/checkpoint --split $split --num-prompts 50 \
    --out $RESULTS/shipped_$split.json
  if [ -d "$QUICK" ]; then
    $SORAJ evaluate --checkpoint "$QUICK" --split $split --num-prompts 50 \
      --out $RESULTS/quick_$split.json
  fi
done
.venv/bin/python experiments/shapes/probe_ceiling.py --vae experiments/shapes/checkpoint/vae \
  > $RESULTS/probe_ceiling.json
cat $RESULTS/probe_ceiling.json
