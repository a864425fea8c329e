"""Scoring a scene edit against the shapes world's exact ground truth.

For a shapes-world dataset (written by :func:`idsedit.shapes.write_multiview`) and an edit of its main object
(``with_changes(params, color="blue")``), the world renders the exact edited scene from every held-out camera.
Per view, with M = the union of the source's and the edited ground truth's main-object masks:

    psnr_to_target   PSNR(render of the edited scene, ground-truth edited render)       (whole image)
    psnr_outside     PSNR over pixels outside M of (render of the edited scene, source ground truth)
    edit_success     fraction of pixels in M closer (RGB distance) to the target ground truth than to the source's
    depth_abs_err    mean |depth - ground-truth edited depth| where both have a surface (world units)
    surface_iou      IoU of {opacity >= 0.5} with {ground-truth depth finite}

Scores are means over views; :func:`mean_ci` gives a mean and a normal-approximation 95% interval over scenes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..shapes import SceneParams, render_many
from ..shapes.multiview import orbit_cameras
from .data import Views
from .render import depth_for_files, render_image
from .store import Scene


@dataclass
class ViewTruth:
    """Ground truth of one camera: source and target renders (H, W, 3), masks (H, W), target depth (H, W)."""

    src_rgb: np.ndarray
    trg_rgb: np.ndarray
    mask: np.ndarray
    trg_depth: np.ndarray


def ground_truth(source: SceneParams, target: SceneParams, views: Views, n_views_total: int, size: int,
                 radius: float = 5.0, elevation=(15.0, 55.0), fov: float = 30.0) -> list[ViewTruth]:
    """Exact renders of source and target from the dataset's cameras (``views.frames`` carry their index in the
    orbit through the file name r_<k>)."""
    cams_all = orbit_cameras(n_views_total, radius=radius, elevation=elevation, fov=fov)
    idx = [int(n.split("_")[-1]) for n in views.names]
    cams = [cams_all[i] for i in idx]
    a = render_many([source] * len(cams), size, cameras=cams)
    b = render_many([target] * len(cams), size, cameras=cams)
    return [ViewTruth(a.rgb[k], b.rgb[k], a.mask[k] | b.mask[k], b.depth[k]) for k in range(len(cams))]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2)) if a.size else 0.0
    return math.inf if mse == 0 else -10 * math.log10(mse)


def score_view(rgb: np.ndarray, depth: np.ndarray, opacity: np.ndarray, truth: ViewTruth) -> dict:
    m = truth.mask
    d_trg = np.linalg.norm(rgb - truth.trg_rgb, axis=-1)
    d_src = np.linalg.norm(rgb - truth.src_rgb, axis=-1)
    both = np.isfinite(depth) & np.isfinite(truth.trg_depth)
    surf, gt_surf = opacity >= 0.5, np.isfinite(truth.trg_depth)
    return {"psnr_to_target": _psnr(rgb, truth.trg_rgb),
            "psnr_outside": _psnr(rgb[~m], truth.src_rgb[~m]),
            "edit_success": float((d_trg[m] < d_src[m]).mean()) if m.any() else math.nan,
            "depth_abs_err": float(np.abs(depth[both] - truth.trg_depth[both]).mean()) if both.any() else math.nan,
            "surface_iou": float((surf & gt_surf).sum() / max((surf | gt_surf).sum(), 1))}


def score_scene(scene: Scene, views: Views, truths: list[ViewTruth]) -> dict:
    """Mean scores of ``scene`` over ``views`` (see the module docstring) and the per-view rows."""
    rows = []
    for i, truth in enumerate(truths):
        out = render_image(scene.field, views.c2w[i], views.intrinsics[i], views.hw, scene.step, near=scene.near)
        rows.append(score_view(out.rgb.numpy(), depth_for_files(out).numpy(), out.opacity.numpy(), truth))
    keys = rows[0].keys()
    return {"mean": {k: float(np.nanmean([r[k] for r in rows])) for k in keys}, "views": rows}


def mean_ci(values) -> tuple[float, float]:
    """(mean, half-width of the normal-approximation 95% interval 1.96 s / sqrt(n)); half-width nan for n < 2."""
    v = np.asarray([x for x in values if np.isfinite(x)], np.float64)
    if v.size == 0:
        return math.nan, math.nan
    if v.size < 2:
        return float(v.mean()), math.nan
    return float(v.mean()), float(1.96 * v.std(ddof=1) / math.sqrt(v.size))
