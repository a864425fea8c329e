#!/bin/sh
# The shipped recipe, in two resumable stages (re-run this script to resume; each stage stops at its budget).
cd "$(dirname "$0")/.." || exit 1
PY=${PY:-.venv/bin/python}
$PY -m idsedit.mini.train --stage vae --state train-state --minutes ${VAE_MINUTES:-20} --max-steps ${VAE_MAX_STEPS:-0} &&
$PY -m idsedit.mini.train --stage unet --state train-state --minutes ${UNET_MINUTES:-105} --max-steps ${UNET_MAX_STEPS:-0}
