"""Multi-view datasets of one scene in the Blender/NeRF ``transforms.json`` format.

Layout written by :func:`write_multiview`::

    out_dir/transforms.json      camera_angle_x, w, h, fl_x, fl_y, cx, cy, scene (SceneParams dict), frames
    out_dir/images/r_000.png     RGB, 8-bit
    out_dir/masks/r_000.png      main-object mask, 8-bit (255 = main object)
    out_dir/depths/r_000.npy     float32 (H, W) distance along each pixel-centre ray, +inf where nothing is hit

Each frame: ``file_path`` (relative, with extension), ``mask_path``, ``depth_path``, ``transform_matrix``
(4x4 camera-to-world, OpenGL/Blender convention: the camera looks down its -Z axis, +Y is up in the image),
plus the ``elevation``/``azimuth`` (degrees) it was taken from. Pixel (row i, column j) looks along
c2w[:3, :3] @ ((j + 0.5 - W/2) / f, -(i + 0.5 - H/2) / f, -1), f = W / (2 tan(camera_angle_x / 2)).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import IdseditError
from .raycast import camera_to_world
from .render import render_many
from .scene import CameraParams, SceneParams


def orbit_cameras(n_views: int, *, radius: float = 5.0, elevation: tuple[float, float] = (15.0, 55.0),
                  fov: float = 30.0, target=(0.0, 0.7, 0.0), turns: float = 1.0) -> list[CameraParams]:
    """n_views cameras on a spiral around ``target``: azimuth_i = 360 turns i / n (degrees), elevation_i
    sweeps ``elevation`` as lo + (hi - lo) (1 - cos(2 pi 3 i / n)) / 2 (three up-down waves per orbit, so
    views cover low and high angles all around)."""
    lo, hi = elevation
    cams = []
    for i in range(n_views):
        el = lo + (hi - lo) * (1.0 - math.cos(2 * math.pi * 3 * i / n_views)) / 2.0
        cams.append(CameraParams(elevation=el, azimuth=360.0 * turns * i / n_views, distance=radius, fov=fov,
                                 target=tuple(float(v) for v in target)))
    return cams


def _save_png_atomic(arr: np.ndarray, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".png")
    os.close(fd)
    Image.fromarray(arr).save(tmp)
    os.replace(tmp, path)


def write_multiview(params: SceneParams, out_dir, *, n_views: int = 24, size: int = 64, radius: float = 5.0,
                    elevation: tuple[float, float] = (15.0, 55.0), fov: float = 30.0) -> Path:
    """Render ``params`` from ``orbit_cameras(n_views, ...)`` and write a NeRF dataset to ``out_dir`` (created;
    existing files of the same names are replaced). Returns the path of ``transforms.json``."""
    if n_views < 1:
        raise IdseditError(f"n_views must be >= 1, got {n_views!r}")
    if not (0.0 < elevation[0] <= elevation[1] < 90.0):
        raise IdseditError(f"elevation range must satisfy 0 < lo <= hi < 90 degrees, got {elevation!r}")
    out = Path(out_dir)
    for sub in ("images", "masks", "depths"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    cams = orbit_cameras(n_views, radius=radius, elevation=elevation, fov=fov)
    r = render_many([params] * n_views, size, cameras=cams)
    frames = []
    for i, cam in enumerate(cams):
        name = f"r_{i:03d}"
        _save_png_atomic((np.clip(r.rgb[i], 0, 1) * 255 + 0.5).astype(np.uint8), out / "images" / f"{name}.png")
        _save_png_atomic(r.mask[i].astype(np.uint8) * 255, out / "masks" / f"{name}.png")
        np.save(out / "depths" / f"{name}.npy", r.depth[i])
        frames.append({"file_path": f"images/{name}.png", "mask_path": f"masks/{name}.png",
                       "depth_path": f"depths/{name}.npy", "elevation": cam.elevation, "azimuth": cam.azimuth,
                       "transform_matrix": camera_to_world(cam).tolist()})
    angle = math.radians(fov)
    focal = 0.5 * size / math.tan(0.5 * angle)
    meta = {"camera_angle_x": angle, "w": size, "h": size, "fl_x": focal, "fl_y": focal, "cx": size / 2,
            "cy": size / 2, "depth_kind": "ray_distance", "scene": replace(params).to_dict(), "frames": frames}
    path = out / "transforms.json"
    fd, tmp = tempfile.mkstemp(dir=out, suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, path)
    return path
