#!/usr/bin/env bash
# Issue 26's recipe search, stage 1 (docs/main_job/recipe.md): each candidate of configs/base.py (the old main job) trained 2,000 steps (same seed, same data order)
# and measured on 1,000 samples per sampler with the project's MNIST classifier.
# usage: bash docs/main_job/proxy.sh <name> [--config.<field>=<value> ...]
set -euo pipefail
name=$1; shift
workdir=runs/recipe/$name
steps=${STEPS:-2000}
start=$(date +%s)
python -m experiments.train --config configs/base.py --workdir "$workdir" \
  --config.train.num_steps="$steps" --config.train.sample_every="$steps" \
  --config.train.checkpoint_every="$steps" "$@"
end=$(date +%s)
echo "{\"name\": \"$name\", \"train_seconds\": $((end - start)), \"args\": \"$*\"}" > "$workdir/wallclock.json"
python -m experiments.evaluate --workdir "$workdir" --samplers "${SAMPLERS:-ddim:50,euler_ancestral:50}" \
  --num 1000 --nll_examples 0
