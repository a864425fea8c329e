"""Scoring scene edits against the shapes world's exact ground truth, and the cases of the scene benchmark.

For a shapes-world scene and an edit of its main object (``with_changes(params, color="blue")``), the world
renders the exact edited scene from any camera. Per view, with M = the union of the source's and the edited ground
truth's main-object masks:

    psnr_to_target     PSNR(render of the edited scene, ground-truth edited render)       (whole image)
    ssim_to_target     SSIM(render of the edited scene, ground-truth edited render)       (whole image)
    psnr_outside       PSNR over pixels outside M of (render of the edited scene, source ground truth)
    edit_success       fraction of pixels in M closer (RGB distance) to the target ground truth than to the source's
                       (the object-pixel criterion; a view counts as edited when it exceeds 0.5: ``view_edited``)
    depth_abs_err      mean |depth - ground-truth edited depth| where both have a surface (world units)
    depth_err_outside  the same over pixels outside M only (geometry that the edit should not touch)
    surface_iou        IoU of {opacity >= 0.5} with {ground-truth depth finite}
    eval_reached       (with an evaluator network, :func:`judge_views`) the edited attribute is predicted as the
                       target's; eval_kept: the fraction of the other class attributes predicted unchanged

Scores are means over views. Over scenes, :func:`summarise` gives means with percentile-bootstrap 95% intervals
and :func:`paired` the paired difference of two methods (``idsedit.metrics.bootstrap_ci`` /
``paired_bootstrap_ci``, the helpers of ``idsedit.evaluate.report``); :func:`mean_ci` is the older
normal-approximation interval.

The benchmark's cameras (:func:`eval_cameras`) are not the dataset's: a grid of elevations x azimuths on the
dataset's sphere (distance 5, looking at (0, 0.7, 0), 30 degree field of view), so that elevation 20 and azimuth 0
is exactly the one camera the bundled prior was trained on and edit quality can be binned by view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..metrics import bootstrap_ci, paired_bootstrap_ci, ssim
from ..shapes import SceneParams, render_many
from ..shapes.multiview import orbit_cameras
from ..shapes.raycast import camera_to_world
from ..shapes.scene import CameraParams
from .data import Views
from .render import depth_for_files, render_image
from .store import Scene

EVAL_ELEVATIONS = (20.0, 45.0)
EVAL_AZIMUTHS = (0.0, 45.0, 90.0, 135.0, 180.0, 225.0, 270.0, 315.0)
METRICS = ("edit_success", "view_edited", "psnr_to_target", "ssim_to_target", "psnr_outside", "depth_abs_err",
           "depth_err_outside", "surface_iou", "eval_reached", "eval_kept")
HIGHER_IS_BETTER = {"edit_success": True, "view_edited": True, "psnr_to_target": True, "ssim_to_target": True,
                    "psnr_outside": True, "depth_abs_err": False, "depth_err_outside": False, "surface_iou": True,
                    "eval_reached": True, "eval_kept": True}


@dataclass
class ViewTruth:
    """Ground truth of one camera: source and target renders (H, W, 3), masks (H, W), target (and source) depth
    (H, W), +inf where the ray sees the backdrop."""

    src_rgb: np.ndarray
    trg_rgb: np.ndarray
    mask: np.ndarray
    trg_depth: np.ndarray
    src_depth: np.ndarray | None = None


# --------------------------------------------------------------------------------------------------- cameras
def eval_cameras(elevations=EVAL_ELEVATIONS, azimuths=EVAL_AZIMUTHS, *, distance: float = 5.0,
                 fov: float = 30.0, target=(0.0, 0.7, 0.0)) -> list[CameraParams]:
    """Every (elevation, azimuth) pair, elevation-major, on the multi-view datasets' sphere."""
    return [CameraParams(elevation=float(e), azimuth=float(a), distance=distance, fov=fov,
                         target=tuple(float(v) for v in target)) for e in elevations for a in azimuths]


def camera_tensors(cams: list[CameraParams], size: int) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """(c2w (N, 4, 4), intrinsics (N, 4) = fx, fy, cx, cy, hw) of shapes-world cameras for the field's renderer:
    the same matrices and pinhole as :func:`idsedit.shapes.write_multiview` writes."""
    c2w = torch.tensor(np.stack([camera_to_world(c) for c in cams]), dtype=torch.float32)
    f = [0.5 * size / math.tan(math.radians(c.fov) / 2) for c in cams]
    intr = torch.tensor([[fk, fk, size / 2, size / 2] for fk in f], dtype=torch.float32)
    return c2w, intr, (size, size)


def azimuth_offset(azimuth: float) -> float:
    """Angular distance (degrees, 0..180) of an azimuth from the prior's training azimuth 0."""
    a = abs(float(azimuth)) % 360.0
    return min(a, 360.0 - a)


# --------------------------------------------------------------------------------------------------- truth
def truths_for_cameras(source: SceneParams, target: SceneParams, cams: list[CameraParams],
                       size: int) -> list[ViewTruth]:
    """Exact renders of source and target from ``cams`` (the world's own renderer)."""
    a = render_many([source] * len(cams), size, cameras=cams)
    b = render_many([target] * len(cams), size, cameras=cams)
    return [ViewTruth(a.rgb[k], b.rgb[k], a.mask[k] | b.mask[k], b.depth[k], a.depth[k]) for k in range(len(cams))]


def ground_truth(source: SceneParams, target: SceneParams, views: Views, n_views_total: int, size: int,
                 radius: float = 5.0, elevation=(15.0, 55.0), fov: float = 30.0) -> list[ViewTruth]:
    """Exact renders of source and target from a multi-view dataset's cameras (``views.names`` carry their index
    in the orbit as r_<k>)."""
    cams_all = orbit_cameras(n_views_total, radius=radius, elevation=elevation, fov=fov)
    idx = [int(n.split("_")[-1]) for n in views.names]
    return truths_for_cameras(source, target, [cams_all[i] for i in idx], size)


# --------------------------------------------------------------------------------------------------- scores
def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2)) if a.size else 0.0
    return math.inf if mse == 0 else -10 * math.log10(mse)


def score_view(rgb: np.ndarray, depth: np.ndarray, opacity: np.ndarray, truth: ViewTruth) -> dict:
    """The per-view scores of the module docstring."""
    m = truth.mask
    d_trg = np.linalg.norm(rgb - truth.trg_rgb, axis=-1)
    d_src = np.linalg.norm(rgb - truth.src_rgb, axis=-1)
    both = np.isfinite(depth) & np.isfinite(truth.trg_depth)
    surf, gt_surf = opacity >= 0.5, np.isfinite(truth.trg_depth)
    err = np.abs(np.where(both, depth, 0.0) - np.where(both, truth.trg_depth, 0.0))    # only read where both
    success = float((d_trg[m] < d_src[m]).mean()) if m.any() else math.nan
    out = {"psnr_to_target": _psnr(rgb, truth.trg_rgb),
           "psnr_outside": _psnr(rgb[~m], truth.src_rgb[~m]),
           "edit_success": success,
           "depth_abs_err": float(err[both].mean()) if both.any() else math.nan,
           "surface_iou": float((surf & gt_surf).sum() / max((surf | gt_surf).sum(), 1))}
    if min(rgb.shape[:2]) >= 11:
        out["ssim_to_target"] = ssim(rgb, truth.trg_rgb)
        out["view_edited"] = math.nan if math.isnan(success) else float(success > 0.5)
        out["depth_err_outside"] = float(err[both & ~m].mean()) if (both & ~m).any() else math.nan
    return out


def render_views(scene: Scene, c2w: torch.Tensor, intr: torch.Tensor, hw) -> list:
    """[(rgb (H, W, 3), depth (H, W) with +inf where no surface, opacity (H, W))] as numpy, one per camera."""
    out = []
    for i in range(len(c2w)):
        r = render_image(scene.field, c2w[i], intr[i], hw, scene.step, near=scene.near)
        out.append((r.rgb.numpy(), depth_for_files(r).numpy(), r.opacity.numpy()))
    return out


JUDGED = ("color", "shape", "floor", "background")   # the evaluator's class attributes judged per view


def judge_views(evaluator, images: list, source: SceneParams, target: SceneParams,
                background_visible: list | None = None) -> list[dict]:
    """The shapes-world evaluator network's verdict on each rendered view (H, W, 3) of an edit source -> target:
    ``eval_reached`` = 1 when every changed class attribute (of colour, shape, floor, background) is predicted as
    the target's, ``eval_kept`` = the fraction of the unchanged ones predicted as their (kept) value, and
    ``eval_<attribute>`` = 1/0 per judged attribute. The background is judged only on the views where
    ``background_visible`` says the truth shows some of it (from elevation 45 the backdrop is out of the frame, and
    no evaluator can read its colour); position, size and rotation are not judged per view (their reference
    depends on the camera). Unjudged values are nan."""
    from ..mini.evaluator import changed_attributes

    truth = {"color": target.main.color, "shape": target.main.shape, "floor": target.floor_color,
             "background": target.background}
    changed = [a for a in changed_attributes(source, target) if a in JUDGED]
    pred = evaluator.predict(np.stack([np.clip(np.asarray(x, np.float32), 0, 1) for x in images]))
    names = {k: evaluator.names(pred, k) for k in JUDGED}
    out = []
    for i in range(len(images)):
        judged = [a for a in JUDGED if a != "background" or background_visible is None or background_visible[i]]
        ok = {a: names[a][i] == truth[a] for a in judged}
        reach = [ok[a] for a in changed if a in ok]
        kept = [ok[a] for a in judged if a not in changed]
        row = {"eval_reached": float(all(reach)) if reach else math.nan,
               "eval_kept": float(np.mean(kept)) if kept else math.nan}
        row.update({f"eval_{a}": float(ok[a]) if a in ok else math.nan for a in JUDGED})
        out.append(row)
    return out


def score_renders(renders: list, truths: list[ViewTruth], *, evaluator=None, source: SceneParams | None = None,
                  target: SceneParams | None = None) -> dict:
    """{"mean": {metric: mean over views}, "views": [per-view scores]} of renders from :func:`render_views`; with
    an ``evaluator`` (and the edit's ``source`` and ``target`` params) also :func:`judge_views`'s scores."""
    rows = [score_view(rgb, depth, op, t) for (rgb, depth, op), t in zip(renders, truths)]
    if evaluator is not None:
        bg = [bool((~np.isfinite(t.trg_depth)).any()
                   or (t.src_depth is not None and (~np.isfinite(t.src_depth)).any())) for t in truths]
        for r, j in zip(rows, judge_views(evaluator, [rgb for rgb, _, _ in renders], source, target, bg)):
            r.update(j)
    return {"mean": {k: _nanmean([r[k] for r in rows]) for k in rows[0]}, "views": rows}


def _nanmean(values) -> float:
    """Mean of the non-nan values; nan (without a warning) when there are none."""
    v = np.asarray(values, np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else math.nan


def score_scene(scene: Scene, views: Views, truths: list[ViewTruth]) -> dict:
    """Mean scores of ``scene`` over the cameras of ``views`` (see the module docstring) and the per-view rows."""
    return score_renders(render_views(scene, views.c2w, views.intrinsics, views.hw), truths)


def mean_ci(values) -> tuple[float, float]:
    """(mean, half-width of the normal-approximation 95% interval 1.96 s / sqrt(n)); half-width nan for n < 2."""
    v = np.asarray([x for x in values if np.isfinite(x)], np.float64)
    if v.size == 0:
        return math.nan, math.nan
    if v.size < 2:
        return float(v.mean()), math.nan
    return float(v.mean()), float(1.96 * v.std(ddof=1) / math.sqrt(v.size))


# --------------------------------------------------------------------------------------------------- cases
@dataclass
class SceneCase:
    """One benchmark scene and its edits: ``edits[family] = (target params, source prompt, target prompt)``."""

    index: int
    params: SceneParams
    edits: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"scene{self.index}"


def scene_cases(n: int, seed: int = 0, families=("colour", "shape")) -> list[SceneCase]:
    """Scene i is the source scene of ``idsedit eval``'s colour case i under run seed ``seed`` (its colour edit is
    that case's); the other families' edits are drawn by :func:`idsedit.evaluate.cases.family_change` from the
    generator seeded with (case seed, family index), so one fitted scene serves every family."""
    from ..evaluate.cases import FAMILIES, _TEMPLATES, family_change, make_case
    from ..shapes import caption, with_changes

    out = []
    for i in range(n):
        c = make_case("colour", seed, i)
        case = SceneCase(i, c.source_params)
        for fam in families:
            if fam == "colour":
                q = c.target_params
            else:
                rng = np.random.default_rng([c.seed, FAMILIES.index(fam)])
                q = with_changes(c.source_params, **family_change(fam, c.source_params, rng))
            t = _TEMPLATES[fam]
            case.edits[fam] = (q, caption(c.source_params, template=t), caption(q, template=t))
        out.append(case)
    return out


# --------------------------------------------------------------------------------------------------- statistics
def _vals(rows, key):
    return [float(r.get(key, math.nan)) if r.get(key) is not None else math.nan for r in rows]


def summarise(rows: list[dict], metrics=METRICS, *, n_boot: int = 2000, seed: int = 0) -> dict:
    """{(family, label): {"n": scenes, metric: (mean, lo, hi)}}: the mean over scenes with its bootstrap 95% CI."""
    out = {}
    for key in dict.fromkeys((r["family"], r["label"]) for r in rows):
        rs = [r for r in rows if (r["family"], r["label"]) == key]
        out[key] = {"n": len(rs), **{m: bootstrap_ci(_vals(rs, m), n_boot=n_boot, seed=seed) for m in metrics}}
    return out


def paired(rows: list[dict], label: str, baseline: str, family: str, metrics=METRICS, *, n_boot: int = 2000,
           seed: int = 0) -> dict:
    """{"n": scenes, metric: (mean, lo, hi)} of label - baseline on the scenes of ``family`` both ran."""
    by = {(r["scene"], r["label"]): r for r in rows if r["family"] == family}
    scenes = sorted(s for (s, lab) in by if lab == baseline and (s, label) in by)
    out = {"n": len(scenes)}
    for m in metrics:
        a = [float(by[(s, label)].get(m, math.nan)) for s in scenes]
        b = [float(by[(s, baseline)].get(m, math.nan)) for s in scenes]
        out[m] = paired_bootstrap_ci(a, b, n_boot=n_boot, seed=seed) if scenes else (math.nan,) * 3
    return out


def by_view(rows: list[dict], metrics=("edit_success", "psnr_outside"), *, reference: str = "source",
            n_boot: int = 2000, seed: int = 0) -> dict:
    """Per (family, label, elevation, azimuth offset from 0): metric -> (mean, lo, hi) over scenes of the
    per-scene mean over the views in that bin, and ``<metric>_vs_<reference>`` the paired difference to the
    ``reference`` row (the unedited source scene) on the same scene and bin."""
    def bins(r):
        acc = {}
        for v in r["views"]:
            acc.setdefault((v["elevation"], azimuth_offset(v["azimuth"])), []).append(v)
        return {k: {m: _nanmean([x.get(m, math.nan) for x in vs]) for m in metrics} for k, vs in acc.items()}

    ref = {(r["family"], r["scene"]): bins(r) for r in rows if r["label"] == reference}
    out = {}
    for fam, label in dict.fromkeys((r["family"], r["label"]) for r in rows):
        rs = [r for r in rows if r["family"] == fam and r["label"] == label]
        per = [(r["scene"], bins(r)) for r in rs]
        for b in sorted({k for _, bb in per for k in bb}):
            cell = {"n": sum(1 for _, bb in per if b in bb)}
            for m in metrics:
                vals = [bb[b][m] for _, bb in per if b in bb]
                cell[m] = bootstrap_ci(vals, n_boot=n_boot, seed=seed)
                pairs = [(bb[b][m], ref[(fam, s)][b][m]) for s, bb in per if b in bb and b in ref.get((fam, s), {})]
                if pairs and label != reference:
                    cell[f"{m}_vs_{reference}"] = paired_bootstrap_ci(*map(list, zip(*pairs)), n_boot=n_boot,
                                                                       seed=seed)
            out[(fam, label, b[0], b[1])] = cell
    return out
