#!/bin/sh
# Judge a candidate mini prior against the bundled one, on this machine, with the measurements that decide whether it
# ships (docs/mini-prior-v2.md, section 7): the sample grid, per-attribute text-to-image accuracy, the denoising error
# by t bucket, and the first signal (20 seeded colour edits, DDS and IDS, 200 steps) paired with the bundled prior's.
#
#   sh scripts/judge_prior.sh CANDIDATE_FOLDER OUT      # e.g. runs/mini-ft  runs/judge-ft
#
# A candidate folder comes from `idsedit train-mini --stage export --state STATE --out FOLDER --export-fp16`.
# Everything is written under OUT; finished parts are skipped on a rerun (the evals resume). Two processes at a time
# (one torch thread each): about an hour of this 2-core CPU in all. Smaller (a smoke run): N=1 STEPS=2 SEEDS=1
# ATTRIBUTES=2 RENDERS=4 PSNR_SCENES=4 sh scripts/judge_prior.sh ...
set -eu
cd "$(dirname "$0")/.."
M=${1:?usage: sh scripts/judge_prior.sh CANDIDATE_FOLDER OUT}
OUT=${2:?usage: sh scripts/judge_prior.sh CANDIDATE_FOLDER OUT}
PY=${PY:-.venv/bin/python}
BUNDLED=src/idsedit/assets/mini-sd
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1
mkdir -p "$OUT"
N=${N:-20} STEPS=${STEPS:-200} SEEDS=${SEEDS:-4} ATTRIBUTES=${ATTRIBUTES:-64} RENDERS=${RENDERS:-128}
SIGNAL="--preset standard --families colour --n $N --methods no-edit,dds,ids --steps $STEPS --fpr-iters 3 \
  --fpr-lambda 1 --guidance 7.5 --residual-cases 0 --no-invert --quiet"

quality() {  # $1 model, $2 tag: sample grid, attribute accuracy (64 prompts x 4 seeds)
  [ -f "$OUT/quality-$2.json" ] || $PY -m idsedit.mini.quality --model "$1" --grid "$OUT/samples-$2.png" --seeds "$SEEDS" \
    --attributes "$ATTRIBUTES" --psnr-scenes "${PSNR_SCENES:-256}" --threads 1 --json "$OUT/quality-$2.json" > "$OUT/quality-$2.log" 2>&1
}
denoise() {  # $1 views: the denoising error of both priors on the same 128 held-out renders
  [ -f "$OUT/denoise-$1.json" ] || $PY -m idsedit.mini.denoise_error --model "$BUNDLED" --model "$M" --n "$RENDERS" \
    --views "$1" --json "$OUT/denoise-$1.json" > "$OUT/denoise-$1.log" 2>&1
}

both() {  # wait for the two background jobs $P1 and $P2; stop with the logs to read if either failed
  ok=0; wait "$P1" || ok=1; wait "$P2" || ok=1
  [ "$ok" = 0 ] || { echo "error: $1 failed; see the logs in $OUT" >&2; exit 1; }
}

# the first signal of both priors, side by side (same cases, t and noise draws), one process each
$PY -m idsedit eval $SIGNAL --model "$BUNDLED" --out "$OUT/signal-bundled" > "$OUT/signal-bundled.log" 2>&1 &
P1=$!
$PY -m idsedit eval $SIGNAL --model "$M" --out "$OUT/signal-candidate" > "$OUT/signal-candidate.log" 2>&1 &
P2=$!
both "the first-signal evals"
$PY -m idsedit compare "$OUT/signal-bundled" "$OUT/signal-candidate" --json "$OUT/signal-diff.json" \
  > "$OUT/signal-diff.md"

(quality "$BUNDLED" bundled; denoise multiview) &
P1=$!
(quality "$M" candidate; denoise default) &
P2=$!
both "the sample and denoising checks"

echo "first signal, candidate - bundled (paired):"
cat "$OUT/signal-diff.md"
$PY - "$OUT" "$BUNDLED" "$M" <<'EOF'
import json, sys
from pathlib import Path
out, models = Path(sys.argv[1]), dict(zip(("bundled", "candidate"), sys.argv[2:4]))
print("\n| prior | colour | shape | floor | background | all named | eps MSE multiview | eps MSE default |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for tag in ("bundled", "candidate"):
    q = json.loads((out / f"quality-{tag}.json").read_text())["attributes"]
    eps = [json.loads((out / f"denoise-{v}.json").read_text())["models"][models[tag]]["mean"]["eps_mse"]
           for v in ("multiview", "default")]
    pct = [f"{100 * q[k]:.1f}" if q.get(k) is not None else "-"
           for k in ("color_acc", "shape_acc", "floor_acc", "background_acc", "all_named_acc")]
    print(f"| {tag} | " + " | ".join(pct) + f" | {eps[0]:.4f} | {eps[1]:.4f} |")
print(f"\nsample grids: {out}/samples-bundled.png and {out}/samples-candidate.png (look at them)")
EOF
