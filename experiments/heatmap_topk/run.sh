#!/usr/bin/env bash
# Top-k attention cells vs the planted class cue, on a small synthetic run (CPU, a few minutes).
# Reuses the cohort + store of ../blast_filter_synthetic when present, else makes its own.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python}"
W=work
mkdir -p "$W"
SRC=../blast_filter_synthetic/work
if [ ! -f "$W/features.h5" ]; then
  if [ -f "$SRC/features.h5" ] && [ -f "$SRC/cohort/cells.csv" ]; then
    cp "$SRC/features.h5" "$W/features.h5"          # a copy: never read a store another job writes
    ln -sfn "$(cd "$SRC/cohort" && pwd)" "$W/cohort"
  else
    "$PY" -m mil.synth "$W/cohort" --slides 40 --cells 64 --classes 4 --seed 0
    "$PY" -m mil.extract "$W/cohort/images" "$W/features.h5"
  fi
fi
"$PY" -m mil.fit "$W/features.h5" --labels "$W/cohort/slides.csv" --out "$W/run" \
  --model "${MODEL:-gated-multibranch}" --folds 5 --epochs "${EPOCHS:-60}" --patience 15 \
  --max-cells 0 --batch-size 8 --seed 0 --no-progress
"$PY" -m mil.heatmap "$W/run" --out "$W/heatmaps" --source "$W/cohort/images" --top-k 16 --occlusion
"$PY" topk.py "$W/heatmaps" "$W/cohort" --k 16 --out results.json
