"""Multi-view datasets: the Blender / NeRF-synthetic format and nerfstudio's ``transforms.json``, validated.

Accepted layouts (``load_views(path, split)``; ``path`` is a folder or a ``.json`` file):

* Blender: ``transforms_train.json``, ``transforms_val.json``, ``transforms_test.json`` (each: ``camera_angle_x``,
  ``frames`` with ``file_path`` (extension optional, ``.png`` tried) and a 4x4 camera-to-world
  ``transform_matrix``).
* One ``transforms.json`` (Blender keys, or nerfstudio's ``fl_x, fl_y, cx, cy, w, h`` at the top or per frame).
  Its split: nerfstudio's ``train_filenames`` / ``val_filenames`` / ``test_filenames`` when present, else every
  ``holdout_every``-th frame (0, K, 2K, ...) is the test split and the rest train (K = 8 by default).

Camera convention (both formats): OpenGL axes, the camera looks down its -Z axis with +Y up in the image and +X to
the right. Pixel (row i, column j) has centre (u, v) = (j + 0.5, i + 0.5) and looks along
``c2w[:3, :3] @ ((u - cx) / fx, -(v - cy) / fy, -1)`` from ``c2w[:3, 3]``.

RGBA frames are composited over ``background`` (white unless said otherwise) and then behave as RGB. Every problem
is an :class:`~idsedit.errors.IdseditError` naming the file and the cause.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ..errors import IdseditError

SPLITS = ("train", "val", "test")
RIGID_TOL = 1e-3        # |R^T R - I| and |det R - 1| allowed in a camera-to-world rotation
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class Views:
    """Posed images of one split. Tensors are CPU float32.

    images: (N, H, W, 3) in [0, 1] (RGBA already composited over ``background``)
    c2w:    (N, 4, 4) camera-to-world, OpenGL axes
    intrinsics: (N, 4) fx, fy, cx, cy in pixels of THESE images
    """

    images: Tensor
    c2w: Tensor
    intrinsics: Tensor
    names: list[str]
    source: Path                                  # the transforms file the frames came from
    split: str
    frames: list[dict] = field(default_factory=list)   # the raw frame dicts (extra keys: mask_path, depth_path, ...)
    had_alpha: bool = False
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    meta: dict = field(default_factory=dict)      # the file's top-level keys other than frames

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, idx) -> "Views":
        idx = list(idx)
        return replace(self, images=self.images[idx], c2w=self.c2w[idx], intrinsics=self.intrinsics[idx],
                       names=[self.names[i] for i in idx], frames=[self.frames[i] for i in idx])


# --------------------------------------------------------------------------------------------------- files
def _read_json(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as e:
        raise IdseditError(f"{path}: cannot read it ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise IdseditError(f"{path}: not a text file: give a transforms JSON file") from None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise IdseditError(f"{path}: not valid JSON (line {e.lineno}: {e.msg}): fix or regenerate the file") from None
    if not isinstance(meta, dict):
        raise IdseditError(f"{path}: expected a JSON object with 'frames', got a {type(meta).__name__}")
    return meta


def find_transforms(path, split: str) -> tuple[Path, bool]:
    """(transforms file for ``split``, whether it is a single all-splits file) for a folder or a .json file."""
    if split not in SPLITS:
        raise IdseditError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    p = Path(path)
    if not p.exists():
        raise IdseditError(f"{p} does not exist: give a dataset folder with transforms.json or transforms_train.json")
    if p.is_file():
        if p.suffix.lower() != ".json":
            raise IdseditError(f"{p} is not a transforms .json file or a dataset folder")
        single = not p.name.startswith("transforms_")
        if not single:
            other = p.parent / f"transforms_{split}.json"
            return other, False
        return p, True
    per_split = p / f"transforms_{split}.json"
    if per_split.is_file():
        return per_split, False
    if (p / "transforms.json").is_file():
        return p / "transforms.json", True
    if any((p / f"transforms_{s}.json").is_file() for s in SPLITS):
        return per_split, False     # the caller decides whether a missing split is an error
    raise IdseditError(f"{p} is not a multi-view dataset: it has no transforms.json or transforms_train.json")


def _image_path(root: Path, file_path: str, where: str) -> Path:
    """The frame's image: ``file_path`` relative to the transforms file, with an extension added if missing."""
    p = (root / file_path) if not Path(file_path).is_absolute() else Path(file_path)
    if p.is_file():
        return p
    if p.suffix.lower() not in IMAGE_EXTS:
        for ext in IMAGE_EXTS:
            q = p.with_name(p.name + ext)
            if q.is_file():
                return q
    raise IdseditError(f"{where}: image {file_path!r} does not exist (looked in {root})")


def _load_image(path: Path, where: str, background) -> tuple[np.ndarray, bool]:
    """(H, W, 3) float32 in [0, 1], alpha composited over ``background``; and whether it had alpha."""
    try:
        with Image.open(path) as im:
            im.load()
            has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float32) / 65535.0
                arr = np.repeat(arr[..., None], 3, axis=-1)
                return arr, False
            im = im.convert("RGBA" if has_alpha else "RGB")
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise IdseditError(f"{where}: cannot read image {path} ({' '.join(str(e).split()) or type(e).__name__}): "
                           "replace or remove the frame") from None
    if has_alpha:
        a = arr[..., 3:4]
        arr = arr[..., :3] * a + np.asarray(background, np.float32) * (1 - a)
    return np.ascontiguousarray(arr[..., :3]), has_alpha


def check_pose(m, where: str) -> np.ndarray:
    """A 4x4 rigid camera-to-world matrix as float64, or IdseditError saying what is wrong with it."""
    try:
        a = np.asarray(m, dtype=np.float64)
    except (TypeError, ValueError):
        raise IdseditError(f"{where}: transform_matrix is not a 4x4 list of numbers") from None
    if a.shape == (3, 4):
        a = np.vstack([a, [0.0, 0.0, 0.0, 1.0]])
    if a.shape != (4, 4):
        raise IdseditError(f"{where}: transform_matrix has shape {list(a.shape)}, expected 4x4")
    if not np.isfinite(a).all():
        raise IdseditError(f"{where}: transform_matrix has non-finite values (NaN or inf)")
    if np.abs(a[3] - [0.0, 0.0, 0.0, 1.0]).max() > RIGID_TOL:
        raise IdseditError(f"{where}: transform_matrix's last row is {a[3].tolist()}, expected [0, 0, 0, 1]")
    r = a[:3, :3]
    err = np.abs(r.T @ r - np.eye(3)).max()
    if err > RIGID_TOL or abs(np.linalg.det(r) - 1.0) > RIGID_TOL:
        raise IdseditError(f"{where}: transform_matrix is not a rigid camera-to-world pose (its rotation part is "
                           f"not orthonormal with det +1: |R^T R - I| = {err:.3g}); scale or shear is not supported")
    return a


def _number(d: dict, key: str, where: str, positive: bool = True) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (positive and v <= 0):
        raise IdseditError(f"{where}: {key!r} must be a {'positive ' if positive else ''}finite number, got {v!r}")
    return float(v)


def _intrinsics(meta: dict, frame: dict, w: int, h: int, where: str) -> tuple[float, float, float, float]:
    """fx, fy, cx, cy for an image of w x h: nerfstudio keys (per frame, else top level), else camera_angle_x."""
    src = frame if "fl_x" in frame else meta
    if "fl_x" in src:
        fx = _number(src, "fl_x", where)
        fy = _number(src, "fl_y", where) if "fl_y" in src else fx
        sw = src.get("w", meta.get("w", w))
        sh = src.get("h", meta.get("h", h))
        if not isinstance(sw, (int, float)) or not isinstance(sh, (int, float)) or sw <= 0 or sh <= 0:
            raise IdseditError(f"{where}: 'w' and 'h' must be positive numbers")
        cx = _number(src, "cx", where, positive=False) if "cx" in src else sw / 2
        cy = _number(src, "cy", where, positive=False) if "cy" in src else sh / 2
        for k in ("k1", "k2", "k3", "k4", "p1", "p2"):
            if abs(float(src.get(k, 0.0) or 0.0)) > 0:
                raise IdseditError(f"{where}: lens distortion ({k} = {src[k]}) is not supported: undistort the images "
                                   "first (e.g. ns-process-data) and set the coefficients to 0")
        sx, sy = w / sw, h / sh          # intrinsics are given for (sw, sh); the images may be a rescaled copy
        return fx * sx, fy * sy, cx * sx, cy * sy
    if "camera_angle_x" not in meta:
        raise IdseditError(f"{where}: no camera intrinsics: needs 'camera_angle_x' (Blender) or 'fl_x' (nerfstudio)")
    angle = _number(meta, "camera_angle_x", where)
    if angle >= math.pi:
        raise IdseditError(f"{where}: camera_angle_x = {angle} is not an angle below pi radians")
    fx = 0.5 * w / math.tan(0.5 * angle)
    fy = 0.5 * h / math.tan(0.5 * _number(meta, "camera_angle_y", where)) if "camera_angle_y" in meta else fx
    return fx, fy, w / 2, h / 2


def _split_frames(meta: dict, frames: list, split: str, holdout_every: int, source: Path) -> list[int]:
    """Indices of the frames of ``split`` in a single transforms.json."""
    key = f"{split}_filenames"
    if any(f"{s}_filenames" in meta for s in SPLITS):
        names = set(meta.get(key, []) or [])
        if split == "val" and not names:
            names = set(meta.get("test_filenames", []) or [])
        norm = {str(Path(n)) for n in names} | {str(Path(n).with_suffix("")) for n in names}
        return [i for i, f in enumerate(frames)
                if str(Path(str(f.get("file_path", "")))) in norm
                or str(Path(str(f.get("file_path", ""))).with_suffix("")) in norm]
    if holdout_every < 2:
        if split == "train":
            return list(range(len(frames)))
        return []
    test = [i for i in range(len(frames)) if i % holdout_every == 0]
    if split == "train":
        return [i for i in range(len(frames)) if i % holdout_every != 0]
    return test


def load_views(path, split: str = "train", *, size: int | tuple[int, int] | None = None,
               background=(1.0, 1.0, 1.0), holdout_every: int = 8, max_frames: int | None = None) -> Views:
    """Read and validate one split of a dataset (see the module docstring).

    size: resize every image to this (H, W) (an int: longer side; intrinsics are scaled to match); None keeps
          the data's resolution. All frames of a split must share one size.
    """
    source, single = find_transforms(path, split)
    if not source.is_file():
        raise IdseditError(f"{source} does not exist: this dataset has no {split} split")
    meta = _read_json(source)
    frames = meta.get("frames")
    if not isinstance(frames, list):
        raise IdseditError(f"{source}: no 'frames' list: not a Blender/nerfstudio transforms file")
    if single:
        frames = [frames[i] for i in _split_frames(meta, frames, split, holdout_every, source)]
    if max_frames is not None:
        frames = frames[:max_frames]
    if not frames:
        raise IdseditError(f"{source}: the {split} split has no frames")
    images, poses, intr, names, raw = [], [], [], [], []
    had_alpha = False
    first_hw = None
    for k, f in enumerate(frames):
        where = f"{source} frame {k}"
        if not isinstance(f, dict) or "file_path" not in f or "transform_matrix" not in f:
            raise IdseditError(f"{where}: a frame needs 'file_path' and 'transform_matrix'")
        img_path = _image_path(source.parent, str(f["file_path"]), where)
        arr, alpha = _load_image(img_path, where, background)
        had_alpha |= alpha
        h, w = arr.shape[:2]
        if first_hw is None:
            first_hw = (h, w, img_path)
        elif (h, w) != first_hw[:2]:
            raise IdseditError(f"{where}: image {img_path.name} is {w}x{h} but {first_hw[2].name} is "
                               f"{first_hw[1]}x{first_hw[0]}: all frames of a split must have one size")
        poses.append(check_pose(f["transform_matrix"], where))
        fx, fy, cx, cy = _intrinsics(meta, f, w, h, where)
        if size is not None:
            th, tw = _target_hw(size, h, w)
            if (th, tw) != (h, w):
                arr = np.asarray(Image.fromarray((arr * 255 + 0.5).astype(np.uint8)).resize(
                    (tw, th), Image.Resampling.BOX if tw < w else Image.Resampling.BICUBIC), np.float32) / 255.0
                fx, cx, fy, cy = fx * tw / w, cx * tw / w, fy * th / h, cy * th / h
        images.append(arr)
        intr.append((fx, fy, cx, cy))
        names.append(Path(str(f["file_path"])).stem if Path(str(f["file_path"])).suffix.lower() in IMAGE_EXTS
                     else Path(str(f["file_path"])).name)
        raw.append(f)
    top = {k: v for k, v in meta.items() if k != "frames"}
    return Views(torch.from_numpy(np.stack(images)), torch.tensor(np.stack(poses), dtype=torch.float32),
                 torch.tensor(intr, dtype=torch.float32), names, source, split, raw, had_alpha,
                 tuple(float(b) for b in background), top)


def _target_hw(size, h: int, w: int) -> tuple[int, int]:
    if isinstance(size, int):
        s = size / max(h, w)
        return max(1, round(h * s)), max(1, round(w * s))
    return int(size[0]), int(size[1])


def has_split(path, split: str, holdout_every: int = 8) -> bool:
    """Whether ``split`` exists (and is non-empty by its file's rules) without loading images."""
    try:
        source, single = find_transforms(path, split)
    except IdseditError:
        return False
    if not source.is_file():
        return False
    if not single:
        return True
    meta = _read_json(source)
    frames = meta.get("frames") or []
    return bool(_split_frames(meta, frames, split, holdout_every, source))


def load_cameras(path, *, size: int | tuple[int, int] | None = None) -> Views:
    """Cameras only (no images needed) from a transforms file, e.g. for ``scene render --cameras``.

    ``images`` is an empty (N, H, W, 0) tensor. Image size: the file's ``w``/``h``, else the first frame's image,
    else ``size`` (required then)."""
    source = Path(path)
    if source.is_dir():
        source, _ = find_transforms(source, "test") if (source / "transforms_test.json").is_file() \
            else find_transforms(source, "train")
    if not source.is_file():
        raise IdseditError(f"{source} does not exist: give a transforms .json file")
    meta = _read_json(source)
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise IdseditError(f"{source}: no frames: a cameras file needs a non-empty 'frames' list")
    poses, intr, names = [], [], []
    for k, f in enumerate(frames):
        where = f"{source} frame {k}"
        if not isinstance(f, dict) or "transform_matrix" not in f:
            raise IdseditError(f"{where}: a frame needs 'transform_matrix'")
        poses.append(check_pose(f["transform_matrix"], where))
        w, h = f.get("w", meta.get("w")), f.get("h", meta.get("h"))
        if w is None or h is None:
            try:
                with Image.open(_image_path(source.parent, str(f["file_path"]), where)) as im:
                    w, h = im.size
            except (IdseditError, KeyError, OSError):
                if size is None:
                    raise IdseditError(f"{where}: no image size: add 'w' and 'h' to the file or pass --size") \
                        from None
                h, w = _target_hw(size, 1, 1) if not isinstance(size, int) else (size, size)
        w, h = int(w), int(h)
        fx, fy, cx, cy = _intrinsics(meta, f, w, h, where)
        if size is not None:
            th, tw = _target_hw(size, h, w)
            fx, cx, fy, cy = fx * tw / w, cx * tw / w, fy * th / h, cy * th / h
            w, h = tw, th
        if k and (h, w) != hw:
            raise IdseditError(f"{where}: size {w}x{h} differs from frame 0's {hw[1]}x{hw[0]}")
        hw = (h, w)
        intr.append((fx, fy, cx, cy))
        fp = str(f.get("file_path", f"frame_{k:04d}"))
        names.append(Path(fp).stem if Path(fp).suffix.lower() in IMAGE_EXTS else Path(fp).name)
    if len(set(names)) != len(names):
        names = [f"{i:04d}_{n}" for i, n in enumerate(names)]
    return Views(torch.zeros((len(frames), hw[0], hw[1], 0)), torch.tensor(np.stack(poses), dtype=torch.float32),
                 torch.tensor(intr, dtype=torch.float32), names, source, "cameras", list(frames), False,
                 (1.0, 1.0, 1.0), {k: v for k, v in meta.items() if k != "frames"})


# --------------------------------------------------------------------------------------------------- geometry
def project(points: np.ndarray, c2w: np.ndarray, intrinsics) -> tuple[np.ndarray, np.ndarray]:
    """World points (N, 3) -> pixel coordinates (N, 2) as (u, v) = (column, row) in continuous pixels (pixel
    (i, j) spans [j, j+1) x [i, i+1)), and their distance in front of the camera along -Z (N,).

    Inverse of the ray convention: p_cam = R^T (p - o); u = cx + fx x / (-z); v = cy - fy y / (-z).
    """
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    c2w = np.asarray(c2w, np.float64)
    pc = (np.asarray(points, np.float64) - c2w[:3, 3]) @ c2w[:3, :3]
    zf = -pc[:, 2]
    return np.stack([cx + fx * pc[:, 0] / zf, cy - fy * pc[:, 1] / zf], axis=1), zf
