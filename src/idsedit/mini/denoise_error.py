"""Held-out denoising error of mini priors by timestep bucket, on the same renders (v1 vs v2).

For each model and each held-out render x (its canonical caption c): z0 = scaling * E(x) (posterior mean),
z_t = sqrt(ab_t) z0 + sqrt(1 - ab_t) eps, z0_hat = (z_t - sqrt(1 - ab_t) eps_theta(z_t, t, c)) / sqrt(ab_t).
Reported per bucket of t (the same t and eps draws for every model):

    latent_err  mean ||z0 - z0_hat||_2 / sqrt(dim)  (latents scaled to unit std by each model's scaling factor:
                                                    the quantity fixed-point regularisation (FPR) corrects)
    eps_mse     mean ||eps - eps_theta||^2 / dim
    pixel_psnr  mean PSNR(D(z0_hat), x) in dB       (comparable across models whatever their latent space)

Usage::

    python -m idsedit.mini.denoise_error --model src/idsedit/assets/mini-sd --model train-state-v2 \\
        --n 128 --json out.json

A ``--model`` is a diffusers folder or a training-state folder (its EMA weights are used). Scenes: ``--views``
multiview (the v2 training distribution, held-out seed) or default (the default camera only).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

T_BUCKETS = (0, 100, 300, 500, 700, 1000)


def load_model(path: str | Path):
    """A StableDiffusionPipeline from a diffusers folder or a training-state folder (EMA weights)."""
    path = Path(path)
    if (path / "model_index.json").exists():
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline.from_pretrained(str(path), local_files_only=True)
    from .export import build_pipeline

    return build_pipeline(path)


def heldout_renders(n: int, views: str = "multiview", seed: int = 424242, size: int = 64):
    """``n`` held-out scenes (a seed no training uses) -> (uint8 images (n, size, size, 3), canonical captions,
    camera elevations)."""
    from idsedit.shapes import caption, render_batch
    from idsedit.shapes.views import sample_scenes

    scenes = sample_scenes(np.random.default_rng(seed), n, views)
    images = np.clip(np.round(render_batch(scenes, size=size) * 255), 0, 255).astype(np.uint8)
    return images, [caption(s) for s in scenes], np.array([s.camera.elevation for s in scenes])


def draws(n: int, per_bucket: int = 2, seed: int = 7, latent_shape=(4, 16, 16)):
    """Fixed (t, eps) draws: ``per_bucket`` timesteps per T_BUCKETS bucket for every scene (uniform inside the
    bucket) and one standard normal eps per (scene, t). Returns t (n, k) int64, eps (n, k, *latent_shape)."""
    rng = np.random.default_rng(seed)
    ts = []
    for lo, hi in zip(T_BUCKETS, T_BUCKETS[1:]):
        ts.append(rng.integers(lo, hi, size=(n, per_bucket)))
    t = np.concatenate(ts, axis=1)
    eps = rng.standard_normal((n, t.shape[1], *latent_shape)).astype(np.float32)
    return t, eps


def denoise_error(pipe, images: np.ndarray, captions: list[str], t: np.ndarray, eps: np.ndarray,
                  batch: int = 64) -> dict:
    """Per-problem arrays (n, k): latent_err, eps_mse, pixel_psnr for the conditional prediction."""
    import torch

    from .data import images_to_tensor, psnr, tensor_to_images

    vae, unet, te, tok = pipe.vae, pipe.unet, pipe.text_encoder, pipe.tokenizer
    sf = vae.config.scaling_factor
    ab_all = pipe.scheduler.alphas_cumprod.float()
    n, k = t.shape
    out = {m: np.zeros((n, k)) for m in ("latent_err", "eps_mse", "pixel_psnr")}
    with torch.no_grad():
        ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        for s in range(0, n, batch):
            sl = slice(s, min(n, s + batch))
            x = images_to_tensor(images[sl])
            z0 = vae.encode(x).latent_dist.mean * sf
            h = te(ids[sl]).last_hidden_state
            for j in range(k):
                tt = torch.from_numpy(t[sl, j])
                e = torch.from_numpy(eps[sl, j])
                ab = ab_all[tt].view(-1, 1, 1, 1)
                z_t = ab.sqrt() * z0 + (1 - ab).sqrt() * e
                e_hat = unet(z_t, tt, h).sample
                z0_hat = (z_t - (1 - ab).sqrt() * e_hat) / ab.sqrt()
                out["latent_err"][sl, j] = (z0_hat - z0).pow(2).mean(dim=(1, 2, 3)).sqrt().numpy()
                out["eps_mse"][sl, j] = (e_hat - e).pow(2).mean(dim=(1, 2, 3)).numpy()
                rec = vae.decode(z0_hat / sf).sample
                out["pixel_psnr"][sl, j] = psnr(images[sl], tensor_to_images(rec))
    return out


def by_bucket(t: np.ndarray, arrays: dict) -> dict:
    """{"lo-hi": {metric: mean}} over T_BUCKETS."""
    res = {}
    for lo, hi in zip(T_BUCKETS, T_BUCKETS[1:]):
        sel = (t >= lo) & (t < hi)
        res[f"{lo}-{hi}"] = {m: float(a[sel].mean()) for m, a in arrays.items()}
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m idsedit.mini.denoise_error", description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", required=True, help="diffusers folder or training-state folder "
                   "(repeat to compare)")
    p.add_argument("--n", type=int, default=128, help="held-out renders")
    p.add_argument("--views", choices=("multiview", "default"), default="multiview")
    p.add_argument("--per-bucket", type=int, default=2, help="timesteps per bucket per render")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    images, captions, elev = heldout_renders(a.n, a.views)
    t, eps = draws(a.n, a.per_bucket)
    result = {"n": a.n, "views": a.views, "per_bucket": a.per_bucket, "models": {}}
    for m in a.model:
        pipe = load_model(m)
        arrays = denoise_error(pipe, images, captions, t, eps)
        result["models"][m] = {"by_t": by_bucket(t, arrays),
                               "mean": {k: float(v.mean()) for k, v in arrays.items()}}
    print(json.dumps(result, indent=2))
    if a.json is not None:
        a.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
