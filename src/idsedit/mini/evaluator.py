"""The shapes-world evaluator: a small CNN that reads a 64x64 image and predicts the main object's colour,
shape, mask (hence centroid and area) and size, plus the floor and background colours; and the edit scores
built on it.

Predictions (``Evaluator.predict``), N images in, arrays out:
    color, shape, floor, background   (N,) int class indices into ``classes[...]`` (COLORS / SHAPES order)
    <name>_prob                       (N, n_classes) softmax probabilities
    mask                              (N, 64, 64) float probability that the pixel is the main object
    centroid                          (N, 2) mask-weighted mean of (x, y) = (column + 0.5, row + 0.5), in pixels
                                      of the input image (so the image spans [0, W] x [0, H])
    area                              (N,) predicted mask area as a fraction of the image
    size                              (N,) the main object's size parameter (SceneParams units)

The weights ship at ``idsedit/assets/evaluator.safetensors`` with ``evaluator.json`` (config + classes);
``python -m idsedit.mini.train_evaluator`` rebuilds them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import IdseditError, ModelLoadError
from ..metrics import psnr, ssim
from ..shapes import COLORS, SHAPES, SceneParams, render, size_word

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_WEIGHTS = ASSET_DIR / "evaluator.safetensors"

POSITION_TOL_PX = 3.0  # centroid distance (pixels at 64x64) under which a position counts as kept / reached
SIZE_TOL = 0.06  # |predicted - true| size parameter under which a size counts as kept / reached
SIZE_MEAN, SIZE_STD = 0.775, 0.1  # standardisation of the size regression target


@dataclass
class EvaluatorConfig:
    """Architecture and class lists of the evaluator (saved as evaluator.json next to the weights)."""

    image_size: int = 64  # input resolution; other sizes are resized to it (area/bilinear)
    widths: tuple[int, int, int] = (32, 64, 96)  # channels at 32x32, 16x16 and 8x8
    hidden: int = 128  # width of the classification MLP
    colors: list[str] = field(default_factory=lambda: list(COLORS))  # colour classes (object, floor, background)
    shapes: list[str] = field(default_factory=lambda: list(SHAPES))  # shape classes

    def to_json(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "EvaluatorConfig":
        d = dict(d)
        d["widths"] = tuple(d["widths"])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def _conv(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _masked_mean(x, m, eps=1e-4):
    """Sum over pixels of x * m / sum of m: (N, C, H, W), (N, 1, H, W) -> (N, C)."""
    return (x * m).sum((2, 3)) / (m.sum((2, 3)) + eps)


class EvaluatorNet(nn.Module):
    """Encoder 64 -> 32 -> 16 -> 8, a U-Net-style decoder to a 32x32 main-object mask, and an MLP over
    [global pool of the 8x8 features, mask-pooled 16x16 decoder features, mask-pooled RGB, pool outside the
    mask] giving colour, shape, floor and background logits and the standardised size."""

    def __init__(self, cfg: EvaluatorConfig):
        super().__init__()
        w1, w2, w3 = cfg.widths
        self.cfg = cfg
        self.enc1 = nn.Sequential(_conv(3, w1, 2), _conv(w1, w1))  # (N, w1, 32, 32)
        self.enc2 = nn.Sequential(_conv(w1, w2, 2), _conv(w2, w2))  # (N, w2, 16, 16)
        self.enc3 = nn.Sequential(_conv(w2, w3, 2), _conv(w3, w3), _conv(w3, w3))  # (N, w3, 8, 8)
        self.dec2 = _conv(w3 + w2, w2)  # (N, w2, 16, 16)
        self.dec1 = _conv(w2 + w1, w1)  # (N, w1, 32, 32)
        self.mask_out = nn.Conv2d(w1, 1, 1)
        n_c, n_s = len(cfg.colors), len(cfg.shapes)
        self.splits = (n_c, n_s, n_c, n_c, 1)  # color, shape, floor, background, size
        self.head = nn.Sequential(nn.Linear(w3 + w2 + 3 + w3 + 3, cfg.hidden), nn.ReLU(inplace=True),
                                  nn.Linear(cfg.hidden, sum(self.splits)))

    def forward(self, x):
        """x: (N, 3, 64, 64) in [0, 1] -> dict of mask_logits (N, 1, 32, 32) and the head outputs."""
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([F.interpolate(e3, scale_factor=2.0, mode="nearest"), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0, mode="nearest"), e1], 1))
        mask_logits = self.mask_out(d1)
        m32 = torch.sigmoid(mask_logits).detach()
        m16, m8 = F.avg_pool2d(m32, 2), F.avg_pool2d(m32, 4)
        rgb32 = F.avg_pool2d(x, 2)
        feats = torch.cat([e3.mean((2, 3)), _masked_mean(d2, m16), _masked_mean(rgb32, m32),
                           _masked_mean(e3, 1 - m8), _masked_mean(rgb32, 1 - m32)], 1)
        color, shape, floor, background, size = self.head(feats).split(self.splits, 1)
        return {"mask_logits": mask_logits, "color": color, "shape": shape, "floor": floor,
                "background": background, "size": size[:, 0]}


def soft_centroid(prob, image_size: int):
    """Centroid (x, y) in pixels of an image of ``image_size``, from a (N, 1, h, w) probability map whose
    cells tile the image: cell j spans [j s, (j + 1) s), s = image_size / w, centre (j + 0.5) s."""
    n, _, h, w = prob.shape
    ys = (torch.arange(h, dtype=prob.dtype, device=prob.device) + 0.5) * (image_size / h)
    xs = (torch.arange(w, dtype=prob.dtype, device=prob.device) + 0.5) * (image_size / w)
    total = prob.sum((1, 2, 3)) + 1e-6
    cx = (prob.sum((1, 2)) * xs).sum(1) / total
    cy = (prob.sum((1, 3)) * ys).sum(1) / total
    return torch.stack([cx, cy], 1)


def to_nchw(images) -> torch.Tensor:
    """(N, 3, H, W) or (N, H, W, 3) (or a single image without N) float in [0, 1] -> (N, 3, H, W) float32."""
    x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images).float()
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or 3 not in (x.shape[1], x.shape[-1]):
        raise IdseditError(f"expected images (N, 3, H, W) or (N, H, W, 3), got shape {tuple(x.shape)}")
    if x.shape[1] != 3:
        x = x.permute(0, 3, 1, 2)
    return x.contiguous()


class Evaluator:
    """A trained :class:`EvaluatorNet` with its config; ``predict`` turns images into attribute predictions."""

    def __init__(self, net: EvaluatorNet, cfg: EvaluatorConfig):
        self.net = net.eval()
        self.cfg = cfg
        self.classes = {"color": list(cfg.colors), "shape": list(cfg.shapes), "floor": list(cfg.colors),
                        "background": list(cfg.colors)}

    @torch.no_grad()
    def predict(self, images, batch_size: int = 256) -> dict[str, np.ndarray]:
        """Predictions for N images in [0, 1] ((N, 3, H, W) or (N, H, W, 3)); see the module docstring."""
        x = to_nchw(images)
        h, w = x.shape[2:]
        s = self.cfg.image_size
        if (h, w) != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        outs = [self.net(x[i:i + batch_size].clamp(0, 1)) for i in range(0, x.shape[0], batch_size)]
        out = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
        prob = torch.sigmoid(out["mask_logits"])
        res = {}
        for k in ("color", "shape", "floor", "background"):
            p = out[k].softmax(1)
            res[k], res[f"{k}_prob"] = p.argmax(1).numpy(), p.numpy()
        cen = soft_centroid(prob, s)
        res["centroid"] = (cen * torch.tensor([w / s, h / s])).numpy()
        res["area"] = prob.mean((1, 2, 3)).numpy()
        res["mask"] = F.interpolate(prob, size=(s, s), mode="bilinear", align_corners=False)[:, 0].numpy()
        res["size"] = (out["size"] * SIZE_STD + SIZE_MEAN).numpy()
        return res

    def names(self, pred: dict, key: str) -> list[str]:
        """Class names of a prediction, e.g. names(pred, "color") -> ["red", ...]."""
        return [self.classes[key][i] for i in pred[key]]


def save_evaluator(net: EvaluatorNet, cfg: EvaluatorConfig, path, extra: dict | None = None) -> Path:
    """Write weights (safetensors, fp32) and ``<stem>.json`` (config, classes, ``extra`` e.g. held-out metrics)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().float() if v.is_floating_point() else v.detach().contiguous()
             for k, v in net.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp))
    tmp.chmod(0o644)
    tmp.replace(path)
    meta = {"config": cfg.to_json(), "classes": {"color": cfg.colors, "shape": cfg.shapes}, **(extra or {})}
    jtmp = path.with_suffix(".json.tmp")
    jtmp.write_text(json.dumps(meta, indent=1))
    jtmp.replace(path.with_suffix(".json"))
    return path


def load_evaluator(path=None) -> Evaluator:
    """Load the evaluator (default: the bundled ``assets/evaluator.safetensors`` and its JSON)."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        raise ModelLoadError(f"evaluator weights {path} or config {meta_path} not found; build them with "
                             f"`python -m idsedit.mini.train_evaluator --out {path}`")
    cfg = EvaluatorConfig.from_json(json.loads(meta_path.read_text())["config"])
    net = EvaluatorNet(cfg)
    try:
        net.load_state_dict(load_file(str(path)))
    except RuntimeError as e:
        raise ModelLoadError(f"evaluator weights {path} do not match its config {meta_path}: {e}") from e
    return Evaluator(net, cfg)


# ------------------------------------------------------------------------------------------------ scoring
_EVALUATOR: Evaluator | None = None


def _default_evaluator() -> Evaluator:
    global _EVALUATOR
    if _EVALUATOR is None:
        _EVALUATOR = load_evaluator()
    return _EVALUATOR


def true_centroid(mask: np.ndarray) -> np.ndarray:
    """(x, y) = mean of (column + 0.5, row + 0.5) over a (H, W) bool mask (nan, nan if empty)."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return np.array([np.nan, np.nan])
    return np.array([xs.mean() + 0.5, ys.mean() + 0.5])


def changed_attributes(source: SceneParams, target: SceneParams) -> list[str]:
    """Scene attributes that differ: among color, shape, size, position, rotation, floor, background."""
    a, b = source.main, target.main
    pairs = {"color": (a.color, b.color), "shape": (a.shape, b.shape), "size": (a.size, b.size),
             "position": (a.position, b.position), "rotation": (a.rotation, b.rotation),
             "floor": (source.floor_color, target.floor_color), "background": (source.background, target.background)}
    return [k for k, (u, v) in pairs.items() if u != v]


def _dilate(mask: np.ndarray, r: int = 1) -> np.ndarray:
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= np.roll(np.roll(mask, dy, 0), dx, 1)
    return out


def _as_hwc(img) -> np.ndarray:
    x = to_nchw(img)
    if x.shape[0] != 1:
        raise IdseditError(f"score_edit takes one image at a time, got a batch of {x.shape[0]}")
    return x[0].permute(1, 2, 0).numpy().astype(np.float64)


def score_edit(source_img, edited_img, *, source_params: SceneParams, target_params: SceneParams,
               source_mask=None, evaluator: Evaluator | None = None) -> dict:
    """Score one edit of a shapes scene (images (H, W, 3) or (3, H, W) in [0, 1]).

    reached[attr]  for every attribute that differs between source and target params: the evaluator's
                   prediction on the edited image equals the target's (colour/shape/floor/background class;
                   position: centroid within POSITION_TOL_PX (scaled to H) of the target render's mask
                   centroid; size: |size - target size| < SIZE_TOL). Rotation changes are not judged.
    kept[attr]     for every other attribute: the prediction equals its (unchanged) true value, with the same
                   tests; the reference centroid is the target render's (position unchanged, but a shape or
                   size edit moves the mask centroid).
    target_reached / identity_kept: all of reached / all of kept; kept_fraction: mean of kept.
    psnr_target, ssim_target:   edited vs the ground truth ``render(target_params)`` at the same size.
    psnr_outside, ssim_outside: edited vs source outside the main object, i.e. outside the union of
                   ``source_mask`` (default: the source render's coverage > 0) and the ground-truth target's
                   coverage, dilated by one pixel.
    pred:          the evaluator's predictions on the edited image (class names, centroid, size).
    """
    ev = evaluator if evaluator is not None else _default_evaluator()
    src, edt = _as_hwc(source_img), _as_hwc(edited_img)
    if src.shape != edt.shape:
        raise IdseditError(f"source and edited images differ in shape: {src.shape} vs {edt.shape}")
    H = src.shape[0]
    if src.shape[1] != H:
        raise IdseditError(f"shapes-world images are square, got {src.shape[:2]}")
    tgt_render = render(target_params, H)
    if source_mask is None:
        source_mask = render(source_params, H).coverage > 0
    source_mask = np.asarray(source_mask, dtype=bool)
    if source_mask.shape != (H, H):
        raise IdseditError(f"source_mask must be {(H, H)}, got {source_mask.shape}")
    pred = ev.predict(edt[None])
    names = {k: ev.names(pred, k)[0] for k in ("color", "shape", "floor", "background")}
    centroid, size = pred["centroid"][0], float(pred["size"][0])
    tol = POSITION_TOL_PX * H / ev.cfg.image_size

    def truth(p: SceneParams, mask: np.ndarray) -> dict:
        return {"color": p.main.color, "shape": p.main.shape, "floor": p.floor_color, "background": p.background,
                "size": p.main.size, "position": true_centroid(mask)}

    def agrees(attr: str, value) -> bool:
        if attr == "position":
            return bool(np.linalg.norm(centroid - value) <= tol)
        if attr == "size":
            return abs(size - value) < SIZE_TOL
        return names[attr] == value

    # every attribute is judged against the ground-truth target: for an unchanged attribute its value is the
    # source's, and its reference centroid is the target render's (a new shape moves the mask centroid)
    t_true = truth(target_params, tgt_render.mask)
    changed = [a for a in changed_attributes(source_params, target_params) if a != "rotation"]
    reached = {a: agrees(a, t_true[a]) for a in changed}
    kept = {a: agrees(a, t_true[a]) for a in ("color", "shape", "size", "position", "floor", "background")
            if a not in changed}
    outside = ~_dilate(source_mask | (tgt_render.coverage > 0))
    return {
        "changed": changed, "reached": reached, "kept": kept,
        "target_reached": all(reached.values()) if reached else True,
        "identity_kept": all(kept.values()) if kept else True,
        "kept_fraction": float(np.mean(list(kept.values()))) if kept else 1.0,
        "psnr_target": psnr(edt, tgt_render.rgb), "ssim_target": ssim(edt, tgt_render.rgb),
        "psnr_outside": psnr(edt, src, mask=outside), "ssim_outside": ssim(edt, src, mask=outside),
        "pred": {**names, "centroid": centroid.tolist(), "size": size, "size_word": size_word(size)},
    }
