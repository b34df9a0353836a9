#!/usr/bin/env bash
# Trains the experiment's T2V runs named as arguments (default: A B C D E), one after another,
# each into experiments/recaption/runs/<run> with its log beside it. Run from the repository root.
set -euo pipefail
for run in "${@:-A B C D E}"; do
  for name in $run; do
    .venv/bin/soraj train --config=experiments/recaption/config.py:$name \
      --workdir=experiments/recaption/runs/$name > experiments/recaption/runs/$name.log 2>&1
    echo "run $name done: experiments/recaption/runs/$name/export"
  done
done
