"""Batched against one-at-a-time edits in `idsedit eval` (idsedit.evaluate.batching): wall seconds for K cases.

    python bench/eval_batching.py --runs dds,cds,ids,ids-jf,ids+cut --cases 8 --steps 10

One torch thread, the bundled mini prior, no A -> B -> A; prints a markdown table: seconds batched, seconds one
case at a time, the ratio, and the largest difference in PSNR outside the object between the two (float noise).
Decoding and scoring are included, so at few steps the ratio understates the UNet-only gain.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="dds,cds,ids,ids+cut")
    p.add_argument("--cases", type=int, default=8, help="cases per batch (half colour, half shape edits)")
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(1)
    from idsedit.edit2d import EditConfig
    from idsedit.evaluate.cases import make_cases
    from idsedit.evaluate.methods import make_run
    from idsedit.evaluate.runner import CaseContext, run_edits
    from idsedit.mini.evaluator import load_evaluator
    from idsedit.prior import load_prior

    prior, ev = load_prior(None, device="cpu"), load_evaluator()
    half = max(1, args.cases // 2)
    cases = make_cases(["colour", "shape"], half, 0)[: args.cases]
    ctxs = [CaseContext.build(prior, c, "") for c in cases]
    print(f"| run | {len(ctxs)} cases x {args.steps} steps: batched s | one at a time s | ratio | max dPSNR outside (dB) |")
    print("|---|---:|---:|---:|---:|")
    for name in args.runs.split(","):
        run = make_run(name, EditConfig(steps=args.steps))
        t0 = time.perf_counter()
        batched = run_edits(prior, ctxs, run, ev, invert=False)
        tb = time.perf_counter() - t0
        t0 = time.perf_counter()
        alone = [run_edits(prior, [c], run, ev, invert=False)[0] for c in ctxs]
        tu = time.perf_counter() - t0
        d = max(abs(a[0]["psnr_outside"] - b[0]["psnr_outside"]) for a, b in zip(batched, alone))
        print(f"| {name} | {tb:.1f} | {tu:.1f} | {tu / tb:.2f}x | {d:.1e} |", flush=True)


if __name__ == "__main__":
    main()
