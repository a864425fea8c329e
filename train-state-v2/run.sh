#!/bin/sh
# Mini prior v2 training: resumes whatever stage is next. Idempotent (re-run = continue), one instance at a time.
#
#   sh train-state-v2/run.sh                 # foreground
#   sh train-state-v2/run.sh --background    # detached (setsid nohup); output appended to train-state-v2/train.log
#
# Stop cleanly: `touch train-state-v2/STOP` (checkpoint, then exit within one step), or `kill $(cat train-state-v2/run.pid)`
# only for the python pid printed in train.log. Re-running removes STOP and continues.
# Stages: 0) restore train-state-v2/snapshot/ if it is newer than the live files (fresh clone);
#         1) VAE, cosine lr over 3000 steps (VAE_STEPS) (multi-view scenes, cached under cache/);
#         1b) only with DECODER_STEPS=N (e.g. 1500): decoder-only fine-tune to N steps (warm-up + cosine over
#             config.json's decoder_decay_steps); the latents, hence the UNet, are unaffected, so it can run any time;
#         2) UNet + text encoder until stopped (held-out denoising loss every 500 steps -> heldout.csv).
# The recipe (sizes, world, lr, ...) is fixed in config.json at the first call; the flags below only matter then.
cd "$(dirname "$0")/.." || exit 1
S=train-state-v2
PY=${PY:-.venv/bin/python}
VAE_STEPS=${VAE_STEPS:-3000}
if [ "$1" = "--background" ]; then
  IDSEDIT_TRAIN_BG=1 setsid nohup sh "$S/run.sh" >> "$S/train.log" 2>&1 < /dev/null &
  echo "started in the background; log: $S/train.log"
  exit 0
fi
exec 9> "$S/.lock"
if ! flock -n 9; then
  echo "error: another run.sh is already training $S (it holds $S/.lock); stop it with: touch $S/STOP" >&2
  exit 1
fi
rm -f "$S/STOP"
# The training is meant to have one of the two cores to itself: a higher priority than the interactive work
# (root only; harmless elsewhere; NICE=0 to disable). With the kernel's autogroups (one per session), the nice
# value that counts between sessions is the autogroup's: set it for the detached session only.
renice -n "${NICE:--5}" -p $$ >/dev/null 2>&1 || true
if [ -n "$IDSEDIT_TRAIN_BG" ] && [ -w /proc/$$/autogroup ]; then echo "${NICE:--5}" > /proc/$$/autogroup 2>/dev/null || true; fi
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
echo "$(date -u '+%F %T') run.sh start (pid $$)"
RECIPE="--world multiview --default-share 0.25 --scenes 40000 --val-scenes 256 --captions-per-scene 8 \
  --vae-batch 16 --vae-lr 0.001 --vae-decay-steps 3000 --vae-min-lr-frac 0.05 \
  --unet-batch 32 --unet-lr 0.0005 --warmup-steps 200 --ema-decay 0.999 --heldout-every 500 --heldout-draws 4 \
  --checkpoint-minutes 5 --threads 1"
MODEL='{"vae_channels": [32, 64, 128], "vae_layers_per_block": 1, "unet_channels": [32, 64, 128], "unet_layers_per_block": 2}'
$PY -m idsedit.mini.snapshot restore "$S" || exit 1
$PY -m idsedit.mini.train --stage vae --state "$S" --minutes 100000 --max-steps "$VAE_STEPS" $RECIPE --model-json "$MODEL" || exit 1
VAE_AT=$($PY -c "import json; print(json.load(open('$S/vae.json'))['step'])")
if [ "$VAE_AT" -lt "$VAE_STEPS" ] || [ -e "$S/STOP" ]; then
  echo "$(date -u '+%F %T') stopped during the VAE stage at step $VAE_AT (run again to continue)"
  exit 0
fi
if [ "${DECODER_STEPS:-0}" -gt 0 ]; then  # optional decoder-only fine-tune (latents, hence the UNet, unaffected)
  $PY -m idsedit.mini.train --stage decoder --state "$S" --minutes 100000 --max-steps "$DECODER_STEPS" $RECIPE \
    --model-json "$MODEL" || exit 1
  DEC_AT=$($PY -c "import json; print(json.load(open('$S/vae_decoder.json'))['step'])")
  if [ "$DEC_AT" -lt "$DECODER_STEPS" ] || [ -e "$S/STOP" ]; then
    echo "$(date -u '+%F %T') stopped during the decoder stage at step $DEC_AT (run again to continue)"
    exit 0
  fi
fi
$PY -m idsedit.mini.train --stage unet --state "$S" --minutes "${UNET_MINUTES:-100000}" --max-steps "${UNET_MAX_STEPS:-0}" $RECIPE --model-json "$MODEL"
echo "$(date -u '+%F %T') run.sh end"
