#!/bin/sh
# Snapshot the mini prior v2 training for the next session (a fresh clone has none of the ignored live files).
# Stops nothing: copies the newest COMPLETE checkpoint (all files of a stage tagged with the same step) into
# train-state-v2/snapshot/ (weights only: VAE fp32, UNet/text live + EMA fp16; no AdamW moments unless MOMENTS=1),
# then prints the git lines to commit it. Run from anywhere:  sh train-state-v2/snapshot.sh
cd "$(dirname "$0")/.." || exit 1
S=train-state-v2
PY=${PY:-.venv/bin/python}
OMP_NUM_THREADS=1 $PY -m idsedit.mini.snapshot make "$S" --live "${LIVE:-fp16}" --ema "${EMA:-fp16}" ${MOMENTS:+--moments} || exit 1
du -sh "$S/snapshot"
ls -l "$S/snapshot"
STEPS=$($PY -c "import json; d=json.load(open('$S/snapshot/SNAPSHOT.json')); print(', '.join(f'{k} step {v[\"step\"]}' for k, v in d['stages'].items()))")
echo
echo "# to commit (binary snapshot, replaces the previous one):"
echo "git add $S/snapshot $S/config.json $S/tokenizer $S/run.sh $S/snapshot.sh $S/SNAPSHOT.md $S/.gitignore && git commit -m \"train-state-v2 snapshot: $STEPS\" -- $S/snapshot $S/config.json $S/tokenizer $S/run.sh $S/snapshot.sh $S/SNAPSHOT.md $S/.gitignore"
