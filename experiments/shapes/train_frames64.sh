#!/usr/bin/env bash
# The 64×64 Shapes model of issue 14 on a 2-core CPU: the per-frame VAE, a latent cache, and
# the DiT on it. Run from the repository root after `make venv`; it writes
# experiments/shapes/runs/{vae64_<layout>,latents64_<layout>,dit64_<layout>} and installs
# nothing (the shipped checkpoint is still experiments/shapes/train_checkpoint.sh's).
#   experiments/shapes/train_frames64.sh                    # VAE, latent cache, DiT
#   VAE=experiments/shapes/runs/vae64_frames experiments/shapes/train_frames64.sh
# keeps a trained VAE (a `soraj train-vae` workdir) and retrains the latent cache and the DiT.
# FOLD=4 folds 4 latent frames into channels (soraj/models/latent_codec.py): 48 tokens a clip
# instead of 144, the same VAE; the layout is then "fold4", else "frames". DIT=0 stops after
# the cache (what experiments/scaling/ trains on).
# About 95 minutes on 2 cores, alone: VAE 33 minutes, cache 10, DiT 50 (3000 steps).
set -euo pipefail
RUNS=experiments/shapes/runs
SORAJ=.venv/bin/soraj
VAE=${VAE:-}
FOLD=${FOLD:-1}
DIT=${DIT:-1}
if [ "$FOLD" = 1 ]; then LAYOUT=frames; PRESET=tiny64-frames; else LAYOUT=fold$FOLD; PRESET=tiny64-fold; fi

# 1. The per-frame VAE: every 64×64 frame to 16×16×8 latents on its own (no conv across
#    frames, so a moving object leaves no ghost), trained on single frames with the edge loss
#    (experiments/shapes/NOTES.md, issue 14: its round trip is fully right on every held-out
#    clip). The fold is the export's alone: a VAE trained without it is copied and exported
#    again with it (a workdir at its last step runs no step and rewrites its export).
VAE_RUN=$RUNS/vae64_$LAYOUT
if [ -z "$VAE" ]; then
  $SORAJ train-vae --config=soraj/configs/vae.py:tiny64-frames \
    --config.latent_frame_fold="$FOLD" --workdir=$VAE_RUN
elif [ "$(realpath "$VAE")" != "$(realpath -m $VAE_RUN)" ]; then
  rm -rf $VAE_RUN && cp -r "$VAE" $VAE_RUN && rm -rf $VAE_RUN/export
  $SORAJ train-vae --config=soraj/configs/vae.py:tiny64-frames \
    --config.latent_frame_fold="$FOLD" --workdir=$VAE_RUN
fi

# 2. The training split's 20,000 clips (9×64×64) encoded once, with their MiniLM states (32
#    tokens): the DiT then reads latents instead of rendering, encoding and embedding.
CACHE=$RUNS/latents64_$LAYOUT
rm -rf "$CACHE"
$SORAJ cache-latents --vae $VAE_RUN --out $CACHE --num-clips 20000 --frames 9 --height 64 \
  --width 64 --split train --seed 0 --text-states --max-tokens 32

# 3. The DiT with the trainer's defaults (the mask curriculum, adaLN per (sample, t)) in 1×4×4
#    patches (t2v.py:tiny64-frames or tiny64-fold), 16 clips a step (4 rows of 4), the rate
#    decaying to 10 % by the last step.
[ "$DIT" = 1 ] || exit 0
$SORAJ train --config=soraj/configs/t2v.py:$PRESET --config.vae_checkpoint=$VAE_RUN \
  --config.text.max_tokens=32 --config.data.latent_cache=$CACHE --config.batch_size=4 \
  --config.total_steps=3000 --config.optim.decay_steps=2500 --workdir=$RUNS/dit64_$LAYOUT
