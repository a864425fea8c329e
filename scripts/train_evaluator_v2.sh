#!/bin/sh
# Retrain the shapes evaluator on the mini prior v2's multi-view distribution (25% default camera, cameras all
# around otherwise), one torch thread. Writes train-state-v2/evaluator/evaluator.{safetensors,json} with the
# held-out report (2000 renders from another seed) overall, by camera elevation, default vs other views.
# ~30-45 min on one loaded core (rendering 32,000 scenes is ~10 of them). Ship it (after checking the numbers) with
#   cp train-state-v2/evaluator/evaluator.safetensors train-state-v2/evaluator/evaluator.json src/idsedit/assets/
cd "$(dirname "$0")/.." || exit 1
mkdir -p train-state-v2/evaluator
OMP_NUM_THREADS=1 exec ${PY:-.venv/bin/python} -m idsedit.mini.train_evaluator --world multiview --default-share 0.25 \
  --n-train ${N_TRAIN:-30000} --n-val 2000 --steps ${STEPS:-2000} --batch 64 --lr 0.003 --threads 1 \
  --out train-state-v2/evaluator/evaluator.safetensors "$@"
