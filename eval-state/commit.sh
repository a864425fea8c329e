#!/bin/sh
# Commit the finished rows of eval-state/NAME (and the images of the cases the report's grid shows).
cd "$(dirname "$0")/.." || exit 1
N=${1:-standard}
D=eval-state/$N
[ -d "$D" ] || { echo "no $D" >&2; exit 1; }
PY=${PY:-.venv/bin/python}
IMGS=$($PY - "$D" <<'PYEOF'
import json, sys
from pathlib import Path
from idsedit.evaluate.cli import _grid_cases
from idsedit.evaluate.cases import make_cases
d = Path(sys.argv[1])
s = json.loads((d / "run.json").read_text())["settings"]
cases = make_cases(s["families"], s["per_family"], s["case_seed"], s.get("view", "default"))
names = {c.name for c in _grid_cases(cases, s["grid_cases"])}
print(" ".join(str(p) for p in sorted((d / "images").glob("*.png")) if p.name.split(".")[0] in names))
PYEOF
)
n=$(cat "$D"/rows*.jsonl 2>/dev/null | wc -l)
git add -f "$D"/rows*.jsonl "$D"/run.json $IMGS eval-state/README.md eval-state/commit.sh
git commit -q -m "eval-state/$N: $n finished edits (resumable by the next session)" -- "$D" eval-state/README.md eval-state/commit.sh && git log --oneline -1
