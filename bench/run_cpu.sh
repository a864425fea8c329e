#!/usr/bin/env bash
# The CPU measurements of docs/benchmarks.md (fp32, 512x512 image -> 64x64 latent, random-weight models).
# Each (shape, method, path) runs in its own subprocess; rows are merged into bench/results-cpu.json.
# Usage: bench/run_cpu.sh [part ...]   parts: medium2 medium2p medium1 keepte bf16bwd tiny2 tiny2p tiny1 (default: all, in that order)
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
J=${J:-bench/results-cpu.json}
bench() { echo "+ idsedit bench $*  # load $(cut -d' ' -f1-3 /proc/loadavg)"; "$PY" -m idsedit.bench "$@" --json "$J" --merge; }
parts=${*:-medium2 medium2p medium1 keepte bf16bwd tiny2 tiny2p tiny1}
for part in $parts; do
  case $part in
    # the reference setting: 2 torch threads, fast path
    medium2) bench --shapes medium --methods dds,cds,ids,ids-jf,ids-adaptive,ids+cut,pds --threads 2 --steps 2 --warmup 1 ;;
    # 2 threads whose OpenMP waits sleep instead of spinning: the fair 2-thread setting on a shared machine
    medium2p) bench --shapes medium --methods dds,cds,ids,ids-jf --threads 2 --omp-wait-policy PASSIVE --steps 2 --warmup 1
              bench --shapes medium --methods dds,ids --variants baseline --threads 2 --omp-wait-policy PASSIVE --steps 2 --warmup 1 ;;
    tiny2p)  bench --shapes tiny --baseline --threads 2 --omp-wait-policy PASSIVE --steps 3 --warmup 1 ;;
    # 1 thread: CPU seconds per step are robust to the machine's load; fast vs the straightforward path
    medium1) bench --shapes medium --methods dds,cds,ids,ids-jf --threads 1 --steps 2 --warmup 1
             bench --shapes medium --methods dds,ids --variants baseline --threads 1 --steps 2 --warmup 1 ;;
    # memory attribution: the fast path with the text encoder kept (1 step, timing not meaningful)
    keepte)  bench --shapes medium --methods dds,ids --variants fast-keep-te --threads 1 --steps 1 --warmup 0 ;;
    # prototype of a proposed core change: attention backward in bf16 (exact fp32 forward)
    bf16bwd) bench --shapes medium --methods ids,cds,ids+cut --variants fast-bf16-bwd --threads 1 --steps 2 --warmup 1 ;;
    tiny2)   bench --shapes tiny --baseline --threads 2 --steps 3 --warmup 1 ;;
    tiny1)   bench --shapes tiny --baseline --threads 1 --steps 3 --warmup 1 ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
  esac
done
