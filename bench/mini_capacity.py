"""Seconds per training step of candidate mini-prior v2 sizes (1 torch thread), for docs/mini-prior-v2.md.

    OMP_NUM_THREADS=1 .venv/bin/python bench/mini_capacity.py [--steps 6] [--json out.json]

Each candidate: fresh random model, the training step of idsedit.mini.train (VAE: L1 + MSE + KL at batch 16;
UNet + text encoder: min-SNR eps MSE at batch 32, AdamW, clip), 2 warm-up steps, median of ``--steps``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from idsedit.mini.models import MiniModelConfig, build_text_encoder, build_unet, build_vae, count_params

VAE_CANDIDATES = {
    "v1 [32,64,64] x1": dict(vae_channels=(32, 64, 64), vae_layers_per_block=1),
    "[64,128,128] x1": dict(vae_channels=(64, 128, 128), vae_layers_per_block=1),
    "[64,128,128] x2": dict(vae_channels=(64, 128, 128), vae_layers_per_block=2),
    "[32,64,128] x2": dict(vae_channels=(32, 64, 128), vae_layers_per_block=2),
    "[32,64,128] x1": dict(vae_channels=(32, 64, 128), vae_layers_per_block=1),
    "[32,96,128] x1": dict(vae_channels=(32, 96, 128), vae_layers_per_block=1),
}
UNET_CANDIDATES = {
    "v1 [32,64,128] x1": dict(unet_channels=(32, 64, 128), unet_layers_per_block=1),
    "[64,128,128] x1": dict(unet_channels=(64, 128, 128), unet_layers_per_block=1),
    "[48,96,192] x1": dict(unet_channels=(48, 96, 192), unet_layers_per_block=1, norm_groups=16),
    "[64,128,256] x1": dict(unet_channels=(64, 128, 256), unet_layers_per_block=1),
    "[32,64,128] x2": dict(unet_channels=(32, 64, 128), unet_layers_per_block=2),
}


def _time(step, n):
    """(median wall s, median process CPU s) per step; CPU time is what a shared machine's load distorts least."""
    for _ in range(2):
        step()
    wall, cpu = [], []
    for _ in range(n):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def vae_step_fn(cfg: MiniModelConfig, batch: int = 16):
    vae = build_vae(cfg)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-4)
    x = torch.rand(batch, 3, 64, 64) * 2 - 1

    def step():
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        loss = (rec - x).abs().mean() + (rec - x).pow(2).mean() + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(vae.parameters()), 1.0)
        opt.step()

    return vae, step


def unet_step_fn(cfg: MiniModelConfig, batch: int = 32):
    te = build_text_encoder(cfg, 608, 606, 607)
    unet = build_unet(cfg)
    params = list(te.parameters()) + list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)
    z = torch.randn(batch, 4, 16, 16)
    ids = torch.randint(0, 600, (batch, cfg.max_length))
    t = torch.randint(0, 1000, (batch,))

    def step():
        eps = unet(z, t, te(ids).last_hidden_state).sample
        loss = (eps - z).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    return (te, unet), step


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--json", default=None)
    ap.add_argument("--only", choices=("vae", "unet", "both"), default="both")
    ap.add_argument("--names", nargs="*", default=None, help="only these candidate names")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = []
    if a.only in ("vae", "both"):
        for name, kw in VAE_CANDIDATES.items():
            if a.names and name not in a.names:
                continue
            vae, step = vae_step_fn(MiniModelConfig(**kw))
            s, c = _time(step, a.steps)
            rows.append({"net": "vae", "name": name, "params": count_params(vae), "s_per_step": s, "cpu_s_per_step": c,
                         "batch": 16})
            print(json.dumps(rows[-1]), flush=True)
    if a.only in ("unet", "both"):
        for name, kw in UNET_CANDIDATES.items():
            if a.names and name not in a.names:
                continue
            (te, unet), step = unet_step_fn(MiniModelConfig(**kw))
            s, c = _time(step, a.steps)
            rows.append({"net": "unet", "name": name, "params": count_params(unet), "text_params": count_params(te),
                         "s_per_step": s, "cpu_s_per_step": c, "batch": 32})
            print(json.dumps(rows[-1]), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
