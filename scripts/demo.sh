#!/usr/bin/env bash
# Set up (if needed) and run the main job: a real edit with the bundled mini prior ("a red cube" -> "a blue cube",
# IDS and DDS side by side, scored against the ground-truth render). Extra flags go to `idsedit demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/idsedit demo "$@"
