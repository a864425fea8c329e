"""Train the shapes-world evaluator on freshly rendered scenes (CPU, fixed seed, ~10 minutes on one thread).

    python -m idsedit.mini.train_evaluator --out src/idsedit/assets/evaluator.safetensors

Data: ``n_train`` scenes from ``sample_scene`` (0-2 distractors; a fraction ``p_edit`` given one change that
only edits produce, e.g. an object the colour of the floor) rendered at 64x64, plus ``n_val`` held-out plain
scenes from a different seed. Augmentation (train only): horizontal flip (a mirrored scene is a valid scene;
mask and centroid flip with it), Gaussian pixel noise and a light blur, so the evaluator also reads the
slightly noisy/blurred images an edit produces. Losses: cross-entropy on the four class heads, BCE of the
32x32 mask logits against the 2x2-average-pooled true mask, L1 of the soft centroid (pixels / 64) and of
the standardised size.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..shapes import COLORS, DEFAULT_CAMERA, SHAPES, SceneParams, render_many, sample_scene, with_changes
from ..shapes.scene import footprint_radius
from .evaluator import (SIZE_MEAN, SIZE_STD, Evaluator, EvaluatorConfig, EvaluatorNet, save_evaluator,
                        soft_centroid)


@dataclass
class TrainEvaluatorConfig:
    """Training hyper-parameters (defaults are the shipped model's)."""

    seed: int = 0  # seeds scene sampling (train: seed, held-out: seed + 1) and torch
    n_train: int = 20000  # training scenes rendered once
    n_val: int = 2000  # held-out scenes
    steps: int = 1100  # optimiser steps
    batch: int = 64  # images per step
    lr: float = 3e-3  # AdamW peak learning rate (linear warm-up 50 steps, cosine decay to 0)
    weight_decay: float = 1e-4  # AdamW weight decay
    p_edit: float = 0.15  # probability that a training scene gets one off-distribution edit (see edit_like)
    noise_max: float = 0.08  # per-image pixel noise std ~ U[0, noise_max]
    blur_prob: float = 0.3  # probability of a 3x3 binomial blur
    threads: int = 1  # torch CPU threads (the machine is shared)
    world: str = "shapes"  # "shapes": default camera only (v1); "multiview": the mini prior v2's cameras
    default_share: float = 0.25  # multiview: fraction of scenes from the default camera


def edit_like(p: SceneParams, rng: np.random.Generator) -> SceneParams:
    """One random change of the kind edits produce but ``sample_scene`` never does: the main object takes the
    floor's colour, the background takes the floor's colour, or the main object gets a size in [0.45, 1.0] or a
    position in [-0.8, 0.8] x [-1.0, 0.6]."""
    kind = int(rng.integers(4))
    if kind == 0:
        return with_changes(p, color=p.floor_color)
    if kind == 1:
        return with_changes(p, background=p.floor_color)
    if kind == 2:
        q = with_changes(p, size=float(rng.uniform(0.45, 1.0)))
    else:
        q = with_changes(p, position=(float(rng.uniform(-0.8, 0.8)), float(rng.uniform(-1.0, 0.6))))
    clear = all(math.dist(o.position, q.main.position) > footprint_radius(o) + footprint_radius(q.main) + 0.15
                for o in q.objects[1:])
    return q if clear else p  # never push the main object into (or behind) a distractor


BACKGROUND_MIN_PIXELS = 0.04
"""The background class is learnt and scored only on images where at least this fraction of pixels is background
(seen from high up, the floor fills the image)."""

ELEVATION_BUCKETS = (0.0, 15.0, 25.0, 35.0, 45.0, 90.0)
"""Camera elevation bucket edges (degrees) of the held-out report."""


def render_dataset(n: int, seed: int, p_edit: float = 0.0, chunk: int = 64, world: str = "shapes",
                   default_share: float = 0.25):
    """Render n random scenes (a fraction ``p_edit`` passed through :func:`edit_like`) -> dict of uint8
    images (n, 64, 64, 3), bool masks (n, 64, 64), class indices color/shape/floor/background (n,), size (n,)
    float32, centroid (n, 2) float32 (x, y in pixels), camera elevation (n,) and default_view (n,) bool.
    ``world="multiview"`` samples the mini prior v2's scenes (:func:`idsedit.shapes.views.sample_view_scene`)."""
    rng = np.random.default_rng(seed)
    if world == "multiview":
        from ..shapes.views import sample_view_scene

        scenes = [sample_view_scene(rng, default_share) for _ in range(n)]
    elif world == "shapes":
        scenes = [sample_scene(rng) for _ in range(n)]
    else:
        raise ValueError(f"unknown world {world!r}; use 'shapes' or 'multiview'")
    edit_rng = np.random.default_rng([seed, 1])
    scenes = [edit_like(s, edit_rng) if edit_rng.random() < p_edit else s for s in scenes]
    colors, shapes = list(COLORS), list(SHAPES)
    images, masks, bg = [], [], []
    for i in range(0, n, chunk):
        r = render_many(scenes[i:i + chunk], 64)
        images.append((r.rgb * 255 + 0.5).astype(np.uint8))
        masks.append(r.mask)
        bg.append(np.isinf(r.depth).mean((1, 2)))  # fraction of background pixels
    images, masks, bg = np.concatenate(images), np.concatenate(masks), np.concatenate(bg)
    keep = masks.sum((1, 2)) >= 20  # drop the rare edit that hides the main object behind a distractor
    images, masks, bg, scenes = images[keep], masks[keep], bg[keep], [s for s, k in zip(scenes, keep) if k]
    ys, xs = np.mgrid[0:64, 0:64] + 0.5
    area = masks.sum((1, 2))
    centroid = np.stack([(masks * xs).sum((1, 2)) / area, (masks * ys).sum((1, 2)) / area], 1)
    return {
        "image": images, "mask": masks,
        "color": np.array([colors.index(s.main.color) for s in scenes]),
        "shape": np.array([shapes.index(s.main.shape) for s in scenes]),
        "floor": np.array([colors.index(s.floor_color) for s in scenes]),
        "background": np.array([colors.index(s.background) for s in scenes]),
        "size": np.array([s.main.size for s in scenes], dtype=np.float32),
        "centroid": centroid.astype(np.float32),
        "elevation": np.array([s.camera.elevation for s in scenes], dtype=np.float32),
        "default_view": np.array([s.camera == DEFAULT_CAMERA for s in scenes]),
        "background_visible": bg >= BACKGROUND_MIN_PIXELS,
    }


def _batch(data, idx, gen: torch.Generator | None, cfg: TrainEvaluatorConfig):
    """Tensors for indices idx; with a generator, apply the training augmentation."""
    x = torch.from_numpy(data["image"][idx]).permute(0, 3, 1, 2).float() / 255.0  # (B, 3, 64, 64)
    m = torch.from_numpy(data["mask"][idx]).float()[:, None]  # (B, 1, 64, 64)
    cen = torch.from_numpy(data["centroid"][idx]).clone()
    if gen is not None:
        b = x.shape[0]
        flip = torch.rand(b, generator=gen) < 0.5
        x[flip], m[flip] = x[flip].flip(-1), m[flip].flip(-1)
        cen[flip, 0] = 64.0 - cen[flip, 0]
        blur = torch.rand(b, generator=gen) < cfg.blur_prob
        if blur.any():
            k = torch.tensor([1.0, 2.0, 1.0])
            k = (k[:, None] * k[None, :] / 16).expand(3, 1, 3, 3)
            x[blur] = F.conv2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), k, groups=3)
        sigma = torch.rand(b, 1, 1, 1, generator=gen) * cfg.noise_max
        x = (x + sigma * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    y = {k: torch.from_numpy(data[k][idx]).long() for k in ("color", "shape", "floor", "background")}
    vis = data.get("background_visible")
    y["background_visible"] = (torch.from_numpy(vis[idx]).float() if vis is not None
                               else torch.ones(len(idx)))
    y["size"] = (torch.from_numpy(data["size"][idx]) - SIZE_MEAN) / SIZE_STD
    y["mask32"] = F.avg_pool2d(m, 2)
    y["centroid"] = cen
    return x, y


def loss_fn(out, y):
    """Sum of the head losses; returns (total, dict of floats)."""
    parts = {k: F.cross_entropy(out[k], y[k]) for k in ("color", "shape", "floor")}
    w = y.get("background_visible")
    if w is None:
        parts["background"] = F.cross_entropy(out["background"], y["background"])
    else:  # only where the background is visible
        ce = F.cross_entropy(out["background"], y["background"], reduction="none")
        parts["background"] = (w * ce).sum() / w.sum().clamp(min=1.0)
    parts["mask"] = F.binary_cross_entropy_with_logits(out["mask_logits"], y["mask32"])
    cen = soft_centroid(torch.sigmoid(out["mask_logits"]), 64)
    parts["centroid"] = (cen - y["centroid"]).abs().mean() / 4.0  # ~1 at a 4 px error
    parts["size"] = F.smooth_l1_loss(out["size"], y["size"])
    total = sum(parts.values())
    return total, {k: float(v.detach()) for k, v in parts.items()}


def _metrics(p: dict, data: dict, sel) -> dict:
    err = np.linalg.norm(p["centroid"][sel] - data["centroid"][sel], axis=1)
    inter = ((p["mask"][sel] > 0.5) & data["mask"][sel]).sum((1, 2))
    union = ((p["mask"][sel] > 0.5) | data["mask"][sel]).sum((1, 2))
    res = {f"{k}_acc": float((p[k][sel] == data[k][sel]).mean()) for k in ("color", "shape", "floor")}
    bsel = sel & data["background_visible"] if "background_visible" in data else sel
    res["background_acc"] = float((p["background"][bsel] == data["background"][bsel]).mean()) if bsel.any() else None
    res["background_n"] = int(np.sum(bsel))
    res.update(position_err_px=float(err.mean()), position_err_p95_px=float(np.percentile(err, 95)),
               size_mae=float(np.abs(p["size"][sel] - data["size"][sel]).mean()),
               mask_iou=float((inter / union).mean()), n=int(np.sum(sel)))
    return res


def evaluate(ev: Evaluator, data, by_view: bool = False) -> dict:
    """Held-out metrics: accuracies, centroid error (px: mean, p95), size MAE, mask IoU (threshold 0.5), n.
    ``by_view``: also ``by_elevation`` ({"lo-hi": metrics} over ELEVATION_BUCKETS) and ``default_view`` /
    ``other_views`` metrics."""
    x = data["image"].astype(np.float32) / 255.0
    p = ev.predict(x)
    res = _metrics(p, data, np.ones(len(x), dtype=bool))
    if by_view and "elevation" in data:
        el = data["elevation"]
        res["by_elevation"] = {f"{lo:g}-{hi:g}": _metrics(p, data, (el >= lo) & (el < hi))
                               for lo, hi in zip(ELEVATION_BUCKETS, ELEVATION_BUCKETS[1:])
                               if ((el >= lo) & (el < hi)).any()}
        for name, sel in (("default_view", data["default_view"]), ("other_views", ~data["default_view"])):
            if sel.any():
                res[name] = _metrics(p, data, sel)
    return res


def train(cfg: TrainEvaluatorConfig, log=print) -> tuple[Evaluator, dict]:
    """Render the data, train, and return the evaluator with its held-out metrics."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    train_data = render_dataset(cfg.n_train, cfg.seed, cfg.p_edit, world=cfg.world, default_share=cfg.default_share)
    n_train = len(train_data["image"])
    # held out: plain scenes (no edit_like) from another seed, same world
    val_data = render_dataset(cfg.n_val, cfg.seed + 1, world=cfg.world, default_share=cfg.default_share)
    log(f"rendered {cfg.n_train} + {cfg.n_val} scenes in {time.time() - t0:.0f} s")
    ecfg = EvaluatorConfig()
    net = EvaluatorNet(ecfg)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    net.train()
    for step in range(cfg.steps):
        lr = cfg.lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, n_train, (cfg.batch,), generator=gen).numpy()
        x, y = _batch(train_data, idx, gen, cfg)
        loss, parts = loss_fn(net(x), y)
        loss_value = float(loss.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == cfg.steps - 1:
            log(f"step {step:5d} loss {loss_value:.3f} " + " ".join(f"{k} {v:.3f}" for k, v in parts.items())
                + f" ({time.time() - t0:.0f} s)")
    ev = Evaluator(net.eval(), ecfg)
    metrics = evaluate(ev, val_data, by_view=cfg.world == "multiview")
    log("held-out: " + json.dumps({k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}))
    for name, m in metrics.get("by_elevation", {}).items():
        log(f"  elevation {name} deg (n={m['n']}): " + " ".join(
            f"{k} {m[k]:.3f}" if m[k] is not None else f"{k} n/a" for k in
            ("color_acc", "shape_acc", "floor_acc", "background_acc")) + f" (background visible in {m['background_n']})")
    return ev, metrics


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output .safetensors path (a .json is written next to it)")
    defaults = TrainEvaluatorConfig()
    for k, v in asdict(defaults).items():
        ap.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v)
    args = ap.parse_args(argv)
    cfg = TrainEvaluatorConfig(**{k: getattr(args, k) for k in asdict(defaults)})
    ev, metrics = train(cfg)
    path = save_evaluator(ev.net, ev.cfg, args.out, extra={"train_config": asdict(cfg), "held_out": metrics})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
