#!/usr/bin/env bash
# GPU benchmark: a 200-step exact-IDS edit of a 512x512 image (64x64 latent) with REAL-SIZE Stable Diffusion 1.5
# random weights (UNet 859.5M, VAE 83.7M, text encoder 123.1M parameters), in fp16 and in bf16, on CUDA.
# Reports s/step (median of the 200 measured steps), s/edit (the 200 steps + VAE encode/decode, measured) and
# torch.cuda.max_memory_allocated during the edit loop; rows go to bench/results-gpu.json.
#
#   bench/gpu_sd15.sh                 # exact IDS, fp16 then bf16
#   ALL=1 bench/gpu_sd15.sh           # also dds, cds, ids-jf, ids+cut (20 measured steps each)
#   DEVICE=cuda:1 bench/gpu_sd15.sh
#
# Needs a CUDA build of torch plus diffusers/transformers (the project's dependencies); no download (random weights,
# the tokenizer of tests/fixtures/parity/model/tokenizer). Random weights may overflow in fp16: such a case is
# reported as an error row ("non-finite"), not a crash.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-python}
DEVICE=${DEVICE:-cuda}
J=${J:-bench/results-gpu.json}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - <<'PYEOF' || { echo "gpu_sd15.sh: no CUDA device visible to torch" >&2; exit 2; }
import torch, sys
sys.exit(0 if torch.cuda.is_available() else 1)
PYEOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
for dt in fp16 bf16; do
  "$PY" -m idsedit.bench --shapes sd15 --methods ids --device "$DEVICE" --dtype "$dt" \
      --steps 200 --warmup 3 --threads 8 --timeout 1500 --json "$J" --merge
done
if [ "${ALL:-0}" = 1 ]; then
  for dt in fp16 bf16; do
    "$PY" -m idsedit.bench --shapes sd15 --methods dds,cds,ids-jf,ids+cut --device "$DEVICE" --dtype "$dt" \
        --steps 20 --warmup 3 --threads 8 --timeout 900 --json "$J" --merge
  done
fi
