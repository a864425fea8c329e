"""Rendering entry points: one scene (:func:`render`) or many at once (:func:`render_batch`, :func:`render_many`).

All scenes of a chunk are traced together as one set of rays (each ray knows its scene index), so numpy's
per-call overhead is paid once per chunk, not once per image. Every per-ray computation is element-wise, so
a scene renders bit-identically alone or inside a batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..errors import IdseditError
from .raycast import BACKGROUND_ID, FLOOR_ID, SceneTable, pixel_rays, shade_rays
from .scene import CameraParams, SceneParams

SUBSAMPLE_OFFSETS = ((-0.25, -0.25), (0.25, -0.25), (-0.25, 0.25), (0.25, 0.25))
"""Extra sample positions (pixel units, relative to the centre) cast in anti-aliased (edge) pixels."""


@dataclass
class Render:
    """One rendered view (or a stack of them, with a leading N axis, from :func:`render_many`).

    rgb:        (H, W, 3) float32 in [0, 1]; edge pixels average 5 samples (centre + SUBSAMPLE_OFFSETS)
    mask:       (H, W) bool, True where the pixel-centre ray hits THE main object (objects[0]) first
    depth:      (H, W) float32 distance along the pixel-centre ray (world units, NOT z-depth) to the first hit
                (object or floor); +inf exactly where the ray hits nothing (background)
    object_ids: (H, W) int64, i where objects[i] is the first hit of the centre ray, -1 for floor/background
    coverage:   (H, W) float32, fraction of the pixel's samples that hit the main object; coverage > 0 marks
                every pixel whose colour the main object's albedo can influence (mask implies coverage > 0)
    """

    rgb: np.ndarray
    mask: np.ndarray
    depth: np.ndarray
    object_ids: np.ndarray
    coverage: np.ndarray


def _check_size(size) -> int:
    if not isinstance(size, (int, np.integer)) or size < 4:
        raise IdseditError(f"render size must be an integer >= 4, got {size!r}")
    return int(size)


@lru_cache(maxsize=32)
def _rays(cam: CameraParams, size: int):
    """Cached (eye (3,), centre dirs (3, P), sub-sample dirs (3, P, 4)) for a camera and image size."""
    eye, d0 = pixel_rays(cam, size)
    _, d1 = pixel_rays(cam, size, SUBSAMPLE_OFFSETS)
    return eye, d0, d1.reshape(3, size * size, len(SUBSAMPLE_OFFSETS))


def _render_chunk(scenes: list[SceneParams], cams: list[CameraParams], size: int):
    """Trace B scenes together -> rgb (B, H, W, 3), mask, depth, object_ids, coverage (see :class:`Render`)."""
    B, P, S = len(scenes), size * size, len(SUBSAMPLE_OFFSETS)
    table = SceneTable(scenes)
    rays = [_rays(c, size) for c in cams]
    o = np.concatenate([np.repeat(r[0][:, None], P, axis=1) for r in rays], axis=1)  # (3, B P)
    d = np.concatenate([r[1] for r in rays], axis=1)
    img = np.repeat(np.arange(B), P)
    rgb, hit_id, depth, lit = shade_rays(o, d, img, table)

    # 1. edge pixels: (hit id, lit) differs from a 4-neighbour
    key = (hit_id * 2 + lit).reshape(B, size, size)
    edge = np.zeros((B, size, size), dtype=bool)
    diff_v = key[:, 1:, :] != key[:, :-1, :]
    diff_h = key[:, :, 1:] != key[:, :, :-1]
    edge[:, 1:, :] |= diff_v
    edge[:, :-1, :] |= diff_v
    edge[:, :, 1:] |= diff_h
    edge[:, :, :-1] |= diff_h
    e = np.nonzero(edge.ravel())[0]  # flat ray indices (b P + pixel)

    # 2. four more samples in edge pixels, averaged with the centre sample
    rgb_sum = rgb.copy()
    main_count = (hit_id == 0).astype(np.float64)
    if e.size:
        eb, ep = e // P, e % P
        eyes = np.stack([r[0] for r in rays])  # (B, 3)
        sub = np.empty((3, e.size, S))
        for b in np.unique(eb):
            sel = eb == b
            sub[:, sel, :] = rays[b][2][:, ep[sel], :]
        d_e = sub.reshape(3, e.size * S)
        o_e = np.repeat(eyes[eb].T, S, axis=1)
        rgb_e, id_e, _, _ = shade_rays(o_e, d_e, np.repeat(eb, S), table)
        rgb_sum[e] += rgb_e.reshape(e.size, S, 3).sum(axis=1)
        main_count[e] += (id_e == 0).reshape(e.size, S).sum(axis=1)
    n_samples = np.where(edge.ravel(), 1.0 + S, 1.0)
    rgb_out = (rgb_sum / n_samples[:, None]).reshape(B, size, size, 3).astype(np.float32)
    coverage = (main_count / n_samples).reshape(B, size, size).astype(np.float32)
    ids = hit_id.reshape(B, size, size)
    return (rgb_out, ids == 0, depth.reshape(B, size, size).astype(np.float32),
            np.where(ids >= 0, ids, -1).astype(np.int64), coverage)


def render_many(params_list, size: int = 64, *, cameras=None, chunk: int = 32) -> Render:
    """Render N scenes; returns a :class:`Render` whose arrays have a leading N axis.

    cameras: None (each scene's own ``camera``), one CameraParams for all, or a list of N of them.
    chunk:   scenes traced together (memory ~ chunk * size^2 * 2 KB).
    """
    size = _check_size(size)
    params_list = list(params_list)
    if not params_list:
        raise IdseditError("render_many needs at least one scene")
    for p in params_list:
        if not isinstance(p, SceneParams):
            raise IdseditError(f"expected SceneParams, got {type(p).__name__}; build one with sample_scene() "
                               "or SceneParams.from_dict()")
    if cameras is None:
        cams = [p.camera for p in params_list]
    elif isinstance(cameras, CameraParams):
        cams = [cameras] * len(params_list)
    else:
        cams = list(cameras)
        if len(cams) != len(params_list):
            raise IdseditError(f"got {len(cams)} cameras for {len(params_list)} scenes; pass one per scene")
    parts = [_render_chunk(params_list[i:i + chunk], cams[i:i + chunk], size)
             for i in range(0, len(params_list), chunk)]
    return Render(*(np.concatenate([p[k] for p in parts]) for k in range(5)))


def render(params: SceneParams, size: int = 64, *, camera: CameraParams | None = None) -> Render:
    """Render one scene at size x size from ``camera`` (default: ``params.camera``). See :class:`Render`."""
    r = render_many([params], size, cameras=camera)
    return Render(r.rgb[0], r.mask[0], r.depth[0], r.object_ids[0], r.coverage[0])


def render_batch(params_list, size: int = 64, *, chunk: int = 32) -> np.ndarray:
    """RGB of N scenes from their own cameras, (N, size, size, 3) float32 in [0, 1] (the training fast path)."""
    return render_many(params_list, size, chunk=chunk).rgb


__all__ = ["Render", "render", "render_batch", "render_many", "BACKGROUND_ID", "FLOOR_ID"]
