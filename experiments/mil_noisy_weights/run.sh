#!/usr/bin/env bash
# Noisy instance weights for MIL on the default synthetic cohort (see README.md).
#   experiments/mil_noisy_weights/run.sh [WORK_DIR]      (SLIDES=160 for a larger cohort)
# One synth + one extraction + one blast filter, reused by every mode; then 5-fold CV per mode.
# Finished steps are skipped on re-run (extract and fit resume); the table goes into README.md.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
WORK="${1:-$HERE/work}"
SLIDES="${SLIDES:-40}"
PY="${PYTHON:-python}"
THREADS="${THREADS:-1}"
TAG="s${SLIDES}"
mkdir -p "$WORK"
cd "$WORK"
t0=$SECONDS
stamp() { echo "[$((SECONDS - t0)) s] $*"; }

if [ ! -f "cohort_$TAG/slides.csv" ]; then
  stamp "synth: $SLIDES slides x 64 cells, 4 classes, 20% noisy expert cell labels"
  $PY -m mil.synth "cohort_$TAG" --slides "$SLIDES" --seed 0
fi
stamp "extract (default backbone, offline weights)"
$PY -m mil.extract "cohort_$TAG/images" "feats_$TAG.h5" --threads 2 -q
if [ ! -f "blast_$TAG.pt" ]; then
  stamp "blast filter: fit on the noisy expert labels, then predict blast_prob"
  $PY -m mil.blast fit "feats_$TAG.h5" --labels "cohort_$TAG/cell_labels.csv" --out "blast_$TAG.pt" --bootstrap 200
  $PY -m mil.blast predict "feats_$TAG.h5" --filter "blast_$TAG.pt" --overwrite
fi

run() {  # name, then mil.fit options
  local name="$1"; shift
  stamp "fit $name"
  $PY -m mil.fit "feats_$TAG.h5" --labels "cohort_$TAG/slides.csv" --out "runs_$TAG/$name" \
      --folds 5 --seed 0 --threads "$THREADS" --no-progress "$@" | tail -2
}
run gated_none   --model gated --instance-weights none
run gated_filter --model gated --instance-weights filter
run gated_prior  --model gated --instance-weights prior
run mean_none    --model mean  --instance-weights none
stamp "done"

$PY - "$WORK/runs_$TAG" "$HERE/README.md" "$SLIDES" "$((SECONDS - t0))" <<'PYEOF'
import json, re, sys
from pathlib import Path
runs, readme, slides, secs = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
rows = [f"| pooling | instance weights | accuracy (pooled, 95% CI) | accuracy (fold mean +- sd) | macro AUROC (pooled, 95% CI) |",
        "|---|---|---|---|---|"]
for name in ("gated_none", "gated_filter", "gated_prior", "mean_none"):
    m = json.loads((runs / name / "metrics.json").read_text())
    p, ci, ms = m["pooled"], m["pooled"]["ci95"], m["mean_sd"]
    pool, mode = name.split("_")
    rows.append(f"| {pool} | {mode} | {p['accuracy']:.3f} [{ci['accuracy'][0]:.3f}, {ci['accuracy'][1]:.3f}] "
                f"| {ms['accuracy']['mean']:.3f} +- {ms['accuracy']['sd']:.3f} "
                f"| {p['macro_auroc']:.3f} [{ci['macro_auroc'][0]:.3f}, {ci['macro_auroc'][1]:.3f}] |")
block = (f"<!-- results:{slides} -->\n{slides} slides x 64 cells, 4 classes, 5-fold CV "
         f"(script wall time {secs} s)\n\n" + "\n".join(rows) + f"\n<!-- /results:{slides} -->")
text = readme.read_text()
pat = re.compile(rf"<!-- results:{slides} -->.*?<!-- /results:{slides} -->", re.S)
text = pat.sub(block, text) if pat.search(text) else text.rstrip() + "\n\n" + block + "\n"
readme.write_text(text)
print(block)
PYEOF
