"""Rendering a scene to files: frames of a cameras file, orbit videos, side-by-side comparisons.

    render_cameras(scene, "cams.json", "out/")     # out/<name>.png (RGB) + out/<name>.depth.npy (float32 H x W)
    render_orbit(scene, 48, "out/")                # out/orbit.gif/.mp4 (colour) + out/orbit_depth.gif/.mp4

Depth files hold the expected distance from the camera centre along each pixel's ray (world units), +inf where
the ray's opacity is below 0.5 (no surface); depth videos map [near, far] percentiles to a colour ramp (near =
bright). Every file is written to a temporary name first and renamed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import IdseditError
from .data import Views, load_cameras
from .render import depth_for_files, render_image
from .store import Scene, atomic_write_bytes


# --------------------------------------------------------------------------------------------------- cameras
def look_at_centre(c2w) -> np.ndarray:
    """The point nearest (least squares) to every camera's optical axis (the -Z axis of each c2w)."""
    m = np.asarray(c2w, np.float64)
    a, b = np.zeros((3, 3)), np.zeros(3)
    for c in m:
        o, d = c[:3, 3], -c[:3, 2]
        p = np.eye(3) - np.outer(d, d)
        a += p
        b += p @ o
    return np.linalg.lstsq(a, b, rcond=None)[0]


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """4x4 camera-to-world (OpenGL: looks down -Z, +Y up) at ``eye`` looking at ``target``."""
    fwd = target - eye
    fwd = fwd / np.linalg.norm(fwd)
    right = np.cross(fwd, up)
    if np.linalg.norm(right) < 1e-9:
        right = np.cross(fwd, np.array([1.0, 0.0, 0.0]))
    right /= np.linalg.norm(right)
    cam_up = np.cross(right, fwd)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, cam_up, -fwd, eye
    return m


def orbit_poses(c2w_train, n: int) -> np.ndarray:
    """n camera-to-world poses on a circle around the training cameras' look-at centre, at their median distance
    and elevation (about their mean up vector), azimuth 0..360 degrees from the first training camera."""
    m = np.asarray(c2w_train, np.float64)
    centre = look_at_centre(m)
    up = m[:, :3, 1].mean(0)
    up /= np.linalg.norm(up)
    offs = m[:, :3, 3] - centre
    dist = float(np.median(np.linalg.norm(offs, axis=1)))
    height = float(np.median(offs @ up))
    ring = math.sqrt(max(dist * dist - height * height, 1e-12))
    x0 = offs[0] - (offs[0] @ up) * up
    x0 = x0 / max(np.linalg.norm(x0), 1e-12)
    y0 = np.cross(up, x0)
    poses = []
    for k in range(n):
        a = 2 * math.pi * k / n
        eye = centre + up * height + ring * (math.cos(a) * x0 + math.sin(a) * y0)
        poses.append(look_at(eye, centre, up))
    return np.stack(poses)


# --------------------------------------------------------------------------------------------------- images
def to_uint8(rgb: torch.Tensor) -> np.ndarray:
    return (rgb.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)


def depth_colour(depth: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """A depth map -> (H, W, 3) uint8: near = bright yellow, far = dark purple, +inf = black."""
    finite = np.isfinite(depth)
    u = np.clip((np.where(finite, depth, hi) - lo) / max(hi - lo, 1e-9), 0, 1)
    v = 1 - u
    rgb = np.stack([0.1 + 0.9 * v ** 0.8, 0.05 + 0.85 * v ** 1.6, 0.35 * (1 - v) + 0.15 * v], -1)
    return (np.where(finite[..., None], rgb, 0.0) * 255 + 0.5).astype(np.uint8)


def _save_png(arr: np.ndarray, path: Path) -> None:
    def w(tmp):
        Image.fromarray(arr).save(tmp, format="PNG")

    atomic_write_bytes(path, w)


def _save_npy(arr: np.ndarray, path: Path) -> None:
    def w(tmp):
        with open(tmp, "wb") as f:
            np.save(f, arr)

    atomic_write_bytes(path, w)


@dataclass
class Frames:
    """Rendered frames: rgb (N, H, W, 3) uint8, depth (N, H, W) float32 (+inf: no surface), names."""

    rgb: np.ndarray
    depth: np.ndarray
    names: list = field(default_factory=list)


def render_views(scene: Scene, c2w, intrinsics, hw, names=None, progress: bool = False) -> Frames:
    rgbs, depths = [], []
    it = range(len(c2w))
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="render", unit="view", leave=False)
    for i in it:
        out = render_image(scene.field, torch.as_tensor(c2w[i], dtype=torch.float32), intrinsics[i], hw, scene.step,
                           near=scene.near)
        rgbs.append(to_uint8(out.rgb))
        depths.append(depth_for_files(out).numpy().astype(np.float32))
    return Frames(np.stack(rgbs), np.stack(depths), list(names or [f"{i:04d}" for i in range(len(c2w))]))


def render_cameras(scene: Scene, cameras, out_dir, *, size=None, progress: bool = True) -> Frames:
    """Render every frame of a transforms file; write ``<name>.png`` and ``<name>.depth.npy`` to ``out_dir``."""
    cams: Views = load_cameras(cameras, size=size)
    frames = render_views(scene, cams.c2w.numpy(), cams.intrinsics.numpy(), cams.hw, cams.names, progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for rgb, depth, name in zip(frames.rgb, frames.depth, frames.names):
        _save_png(rgb, out / f"{name}.png")
        _save_npy(depth, out / f"{name}.depth.npy")
    return frames


def orbit_cameras_of(scene: Scene, n: int, size: int | None = None):
    """(c2w (n, 4, 4), intrinsics (n, 4), hw): an orbit around the scene's training cameras, with the first
    training camera's intrinsics (scaled to ``size`` on the longer side when given)."""
    path = scene.data.get("path")
    if not path or not Path(path).exists():
        raise IdseditError(f"the scene's dataset {path!r} is not available, so its orbit is unknown: pass --cameras")
    cams = load_cameras(path)
    hw = cams.hw
    intr = cams.intrinsics[0].clone()
    if size is not None:
        s = size / max(hw)
        new = (max(1, round(hw[0] * s)), max(1, round(hw[1] * s)))
        intr = intr * torch.tensor([new[1] / hw[1], new[0] / hw[0], new[1] / hw[1], new[0] / hw[0]])
        hw = new
    elif scene.data.get("size"):
        new = tuple(scene.data["size"])
        intr = intr * torch.tensor([new[1] / hw[1], new[0] / hw[0], new[1] / hw[1], new[0] / hw[0]])
        hw = new
    return orbit_poses(cams.c2w.numpy(), n), intr[None].expand(n, 4).numpy(), hw


def depth_range(*depth_stacks) -> tuple[float, float]:
    d = np.concatenate([x[np.isfinite(x)].ravel() for x in depth_stacks])
    if d.size == 0:
        return 0.0, 1.0
    return float(np.percentile(d, 1)), float(np.percentile(d, 99))


def write_video(frames: list[np.ndarray], path: Path, fps: int = 12) -> None:
    """GIF (looping) or MP4 (H.264 via imageio-ffmpeg) by the suffix of ``path``."""
    path = Path(path)
    if path.suffix == ".gif":
        def w(tmp):
            Image.fromarray(frames[0]).save(tmp, format="GIF", save_all=True, loop=0, duration=int(1000 / fps),
                                            append_images=[Image.fromarray(f) for f in frames[1:]])
    else:
        h, wd = frames[0].shape[:2]
        pad = [(0, (-h) % 2), (0, (-wd) % 2), (0, 0)]          # H.264 needs even sizes
        frames = [np.pad(f, pad, mode="edge") for f in frames]

        def w(tmp):
            _mp4(frames, tmp, fps)

    atomic_write_bytes(path, w)


def _mp4(frames: list[np.ndarray], path: str, fps: int) -> None:
    import imageio_ffmpeg

    h, w = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(path, (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                         macro_block_size=1, output_params=["-f", "mp4"], quality=8)
    writer.send(None)
    for f in frames:
        writer.send(np.ascontiguousarray(f))
    writer.close()


def side_by_side(*images: np.ndarray, gap: int = 2) -> np.ndarray:
    h = max(i.shape[0] for i in images)
    parts = []
    for k, im in enumerate(images):
        if k:
            parts.append(np.full((h, gap, 3), 255, np.uint8))
        parts.append(np.pad(im, [(0, h - im.shape[0]), (0, 0), (0, 0)]))
    return np.concatenate(parts, 1)


def render_orbit(scene: Scene, n: int, out_dir, *, compare: Scene | None = None, size: int | None = None,
                 fps: int = 12, upscale: int = 1, progress: bool = True) -> dict:
    """Orbit videos: ``orbit.gif``/``orbit.mp4`` (colour) and ``orbit_depth.gif``/``.mp4``; with ``compare``
    each frame is ``compare | scene`` (e.g. source | edited), colour and depth alike. Returns the paths."""
    c2w, intr, hw = orbit_cameras_of(compare if compare is not None else scene, n, size)
    a = render_views(scene, c2w, intr, hw, progress=progress)
    b = render_views(compare, c2w, intr, hw, progress=progress) if compare is not None else None
    lo, hi = depth_range(a.depth, *([b.depth] if b is not None else []))
    colour, depth = [], []
    for k in range(n):
        ca, da = a.rgb[k], depth_colour(a.depth[k], lo, hi)
        if b is not None:
            ca, da = side_by_side(b.rgb[k], ca), side_by_side(depth_colour(b.depth[k], lo, hi), da)
        if upscale > 1:
            ca = np.asarray(Image.fromarray(ca).resize((ca.shape[1] * upscale, ca.shape[0] * upscale), Image.NEAREST))
            da = np.asarray(Image.fromarray(da).resize((da.shape[1] * upscale, da.shape[0] * upscale), Image.NEAREST))
        colour.append(ca)
        depth.append(da)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for stem, frames in (("orbit", colour), ("orbit_depth", depth)):
        for ext in (".gif", ".mp4"):
            write_video(frames, out / f"{stem}{ext}", fps)
            paths[f"{stem}{ext}"] = str(out / f"{stem}{ext}")
    _save_png(side_by_side(colour[0], depth[0]), out / "orbit_first.png")
    paths["orbit_first.png"] = str(out / "orbit_first.png")
    return paths
