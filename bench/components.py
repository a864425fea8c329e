"""UNet components on a model shape, per attention kernel / memory format / dtype (the reference JSON's
"medium_components": one batch-4 CFG forward, and one FPR iteration = batch-2 forward + backward).

    .venv/bin/python bench/components.py --shape medium --threads 1 --variants explicit,sdpa,sdpa-cl,sdpa-bf16
    .venv/bin/python bench/components.py --variants sdpa --parts fpr --repeat 1 --profile   # where the time goes

Prints wall and CPU seconds (median of --repeat after one warm-up) with os.getloadavg(); with one thread the CPU
seconds are the work itself, robust to other processes on the machine. Each variant runs in this process (memory
is not measured here: see `idsedit bench`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time

import torch

from idsedit import bench
from idsedit.fpr import fpr_step_exact, fpr_step_jacobian_free
from idsedit.models_from_config import build_prior
import idsedit.diffusion as D


def timed(fn, repeat):
    fn()
    wall, cpu = [], []
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def configure(prior, variant: str):
    """explicit | sdpa | sdpa-cl (channels_last UNet) | sdpa-bf16 (bf16 UNet weights and activations)."""
    bench.set_attention(prior.unet, "explicit" if variant == "explicit" else "sdpa")
    prior.unet.to(memory_format=torch.channels_last if variant.endswith("-cl") else torch.contiguous_format)
    dtype = torch.bfloat16 if "bf16" in variant else torch.float32
    prior.unet.to(dtype)
    prior.dtype = dtype


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="medium")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", default="explicit,sdpa,sdpa-cl,sdpa-bf16")
    ap.add_argument("--parts", default="fwd4,fpr,fpr-jf")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--profile", action="store_true", help="also print torch.profiler's top ops of each part")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    prior = build_prior(args.shape)
    cs, ct = prior.encode_text(bench.SRC_PROMPT), prior.encode_text(bench.TRG_PROMPT)
    prior.release_text_encoders()
    g = torch.Generator().manual_seed(0)
    z_src = torch.randn(1, 4, 64, 64, generator=g)
    z_trg = z_src + 0.3 * torch.randn(1, 4, 64, 64, generator=g)
    t = torch.tensor([500])
    ab = prior.alpha_bar(t)
    eps = torch.randn(1, 4, 64, 64, generator=g)
    z_t_src, z_t_trg = D.add_noise(z_src, eps, ab), D.add_noise(z_trg, eps, ab)
    rows = []
    for variant in args.variants.split(","):
        configure(prior, variant)
        c_s, c_t = (dataclasses.replace(c, embeds=c.embeds.to(prior.dtype)) for c in (cs, ct))
        parts = {
            "fwd4": lambda: torch.no_grad()(prior.eps)([z_t_src, z_t_trg], t, [c_s, c_t], 7.5),
            "fpr": lambda: fpr_step_exact(prior, z_src, z_t_src, t, c_s, 7.5, 1.0),
            "fpr-jf": lambda: fpr_step_jacobian_free(prior, z_src, z_t_src, t, c_s, 7.5, 1.0),
        }
        for part in args.parts.split(","):
            load = bench.load_average()
            wall, cpu = timed(parts[part], args.repeat)
            if args.profile:
                from torch.profiler import ProfilerActivity, profile

                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    parts[part]()
                print(f"# {variant} {part}")
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8, max_name_column_width=60))
            row = {"shape": args.shape, "variant": variant, "part": part, "threads": args.threads,
                   "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "load_before": load,
                   "load_after": bench.load_average()}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": bench.machine_info(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
