"""Before/after of the two speed-ups that are now the defaults (judged quality-neutral by ``idsedit eval``, then
applied: docs/eval.md "Two speed-ups, measured and applied"; docs/benchmarks.md).

cds: CDS ran the conditional TARGET branch twice, once without grad inside the batch-4 CFG call (for the DDS
term) and once with grad for the PatchNCE features. Now (idsedit.distill.cds) a batch-3 call without grad
[uncond src, uncond trg, cond src] and one batch-1 call WITH grad [cond trg] serve both: 4 samples per step instead
of 5, 6 instead of 7 UNet forward-equivalents. "before" is ``cds_two_calls``, the reference path kept in cds.py.

ids: exact FPR's UNet attention backward in bf16 (idsedit.attention: the fp32 forward unchanged, bit-identical).
"before" is ``DistillConfig(fpr_attention_backward="fp32")``.

    .venv/bin/python bench/prototypes.py --shape medium --threads 1 --steps 2 --warmup 1 --repeats 2 \
        --out bench/speedups-medium-1thread.json

Per variant: wall and CPU seconds per step (median over every measured step of every repeat; variants alternate,
before/after/before/after, so a change of machine load hits both; ``--warmup`` steps only in the first repeat), UNet forward-equivalents per step (samples +
2 x backward samples, idsedit eval's count), and the relative difference of one update against "before" on the
same draw (float rounding for cds, bf16 rounding for ids).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from contextlib import contextmanager

import torch

from idsedit import bench
from idsedit.distill import METHODS, DistillConfig, MethodSpec
from idsedit.distill.cds import cds_two_calls


@contextmanager
def cds_function(fn):
    """Register ``fn`` as the "cds" method inside the block (the loop looks methods up by name)."""
    core = METHODS["cds"]
    METHODS["cds"] = MethodSpec("cds", fn, core.summary)
    try:
        yield
    finally:
        METHODS["cds"] = core


VARIANTS = {
    "cds": {"before: two calls (batch 4 + batch 1)": (cds_two_calls, {}),
            "after: target branch once (default)": (None, {})},
    "ids": {"before: fp32 attention backward": (None, {"fpr_attention_backward": "fp32"}),
            "after: bf16 attention backward (default)": (None, {})},
}


def time_steps(prior, method, fn, distill, z_src, conds, steps, warmup):
    """Wall/CPU seconds of each step after ``warmup`` steps, and UNet work per step (idsedit eval's counter)."""
    from idsedit.edit2d import edit_latents
    from idsedit.evaluate.runner import count_unet
    from idsedit.variants import variant_config

    cfg = variant_config(method, steps=warmup + steps, seed=0)
    cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, **distill))
    marks = []
    on_step = lambda *_: marks.append((time.perf_counter(), time.process_time()))
    with cds_function(fn or METHODS["cds"].fn), count_unet(prior.unet) as cost:
        marks.append((time.perf_counter(), time.process_time()))
        edit_latents(prior, z_src, *conds, cfg, callback=on_step)
    n = warmup + steps
    wall = [b[0] - a[0] for a, b in zip(marks[warmup:-1], marks[warmup + 1:])]
    cpu = [b[1] - a[1] for a, b in zip(marks[warmup:-1], marks[warmup + 1:])]
    return wall, cpu, {"fe_per_step": cost.forward_equivalents / n, "samples_per_step": cost.samples / n,
                       "backward_samples_per_step": cost.backward_samples / n, "forward_calls_per_step": cost.forward / n}


def update(prior, method, fn, distill, z_src, conds):
    """d loss / d z_trg of one loop step on a fixed draw (t = 500)."""
    from idsedit.loop import StepDraw, distill_step
    from idsedit.rng import Sampler

    g = torch.Generator().manual_seed(1)
    draw = StepDraw(torch.tensor([500]), torch.randn(z_src.shape, generator=g))
    z = (z_src + 0.1 * torch.randn(z_src.shape, generator=g)).requires_grad_(True)
    with cds_function(fn or METHODS["cds"].fn):
        loss, _ = distill_step(prior, method, z_src, z, draw, *conds, DistillConfig(**distill), Sampler.seeded(0))
        loss.backward()
    return z.grad


def compare(prior, method, z_src, conds, steps, warmup, repeats):
    rows = {name: {"s_steps": [], "cpu_s_steps": []} for name in VARIANTS[method]}
    for r in range(repeats):
        for name, (fn, distill) in VARIANTS[method].items():
            load = bench.load_average()
            wall, cpu, work = time_steps(prior, method, fn, distill, z_src, conds, steps, warmup if r == 0 else 0)
            rows[name]["s_steps"] += [round(w, 3) for w in wall]
            rows[name]["cpu_s_steps"] += [round(c, 3) for c in cpu]
            rows[name].setdefault("load_1min_before_each_repeat", []).append(load)
            rows[name].update(work)
    grads = {name: update(prior, method, fn, distill, z_src, conds) for name, (fn, distill) in VARIANTS[method].items()}
    before = next(iter(grads.values()))
    for name, row in rows.items():
        row["s_per_step"] = statistics.median(row["s_steps"])
        row["cpu_s_per_step"] = statistics.median(row["cpu_s_steps"])
        row["update_rel_diff_to_before"] = float((grads[name] - before).norm() / before.norm())
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--which", default="both", choices=["cds", "ids", "both"])
    ap.add_argument("--shape", default="medium")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from idsedit.attention import bf16_backward_supported
    from idsedit.edit2d import image_to_tensor
    from idsedit.models_from_config import build_prior

    prior = build_prior(args.shape)
    z_src = prior.encode(image_to_tensor(bench.make_image(args.image_size)))
    conds = prior.encode_text(bench.SRC_PROMPT), prior.encode_text(bench.TRG_PROMPT)
    prior.release_text_encoders()
    result = {"shape": args.shape, "threads": args.threads, "steps": args.steps, "warmup": args.warmup,
              "repeats": args.repeats, "torch": torch.__version__, "bf16_backward_supported":
              bf16_backward_supported(prior.unet), "load_before": bench.load_average(), "methods": {}}
    for method in (["cds", "ids"] if args.which == "both" else [args.which]):
        result["methods"][method] = compare(prior, method, z_src, conds, args.steps, args.warmup, args.repeats)
    result["load_after"] = bench.load_average()
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out + ".tmp", "w") as f:
            f.write(text + "\n")
        os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()
