#!/bin/sh
# End of a training session: stop the run gracefully (checkpoint), export the EMA weights, measure, grid.
cd "$(dirname "$0")/.." || exit 1
PY=${PY:-.venv/bin/python}
touch train-state/STOP
while pgrep -f "idsedit.mini.train --stage" > /dev/null; do sleep 5; done
rm -f train-state/STOP
$PY -m idsedit.mini.train --stage export --state train-state &&
$PY -m idsedit.mini.quality --model src/idsedit/assets/mini-sd --grid docs/mini-samples.png --seeds ${SEEDS:-4} \
    --json src/idsedit/assets/mini-sd/quality.json
