"""Image metrics as small pure numpy functions: PSNR and SSIM on [0, 1] images, optionally inside a mask.

Images are (H, W) or (H, W, C) float arrays in [0, 1]; a mask is (H, W) bool selecting the pixels that count.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import IdseditError

SSIM_WINDOW, SSIM_SIGMA = 11, 1.5  # Gaussian window of Wang et al. (2004)
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _pair(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim not in (2, 3):
        raise IdseditError(f"images must have the same (H, W) or (H, W, C) shape, got {a.shape} and {b.shape}")
    return (a[..., None], b[..., None]) if a.ndim == 2 else (a, b)


def _check_mask(mask, shape):
    if mask is None:
        return None
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != shape:
        raise IdseditError(f"mask must be (H, W) = {shape}, got {mask.shape}")
    return mask


def psnr(a, b, mask=None, data_range: float = 1.0) -> float:
    """PSNR = 10 log10(data_range^2 / MSE), MSE over all channels of the (masked) pixels; +inf if equal,
    nan if the mask selects nothing."""
    a, b = _pair(a, b)
    mask = _check_mask(mask, a.shape[:2])
    err = (a - b) ** 2
    if mask is not None:
        if not mask.any():
            return float("nan")
        err = err[mask]
    mse = float(err.mean())
    return float("inf") if mse == 0 else 10.0 * math.log10(data_range ** 2 / mse)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Normalised 1D Gaussian g_i ~ exp(-(i - (size-1)/2)^2 / (2 sigma^2)), sum 1, shape (size,)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-x * x / (2 * sigma * sigma))
    return g / g.sum()


def _filter_valid(x, g):
    """Separable 'valid' correlation of (H, W, C) with g (x) g -> (H - k + 1, W - k + 1, C)."""
    k = g.size
    rows = sum(g[i] * x[i:x.shape[0] - k + 1 + i] for i in range(k))
    return sum(g[j] * rows[:, j:x.shape[1] - k + 1 + j] for j in range(k))


def ssim_map(a, b, data_range: float = 1.0) -> np.ndarray:
    """SSIM of every 11x11 window (Gaussian weights, sigma 1.5, 'valid' positions), averaged over channels:

    SSIM = (2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2)),
    C1 = (0.01 L)^2, C2 = (0.03 L)^2. Returns (H - 10, W - 10); window (i, j) is centred on pixel (i+5, j+5).
    """
    a, b = _pair(a, b)
    if min(a.shape[:2]) < SSIM_WINDOW:
        raise IdseditError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {a.shape[:2]}")
    g = gaussian_window()
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    s_aa = _filter_valid(a * a, g) - mu_a ** 2
    s_bb = _filter_valid(b * b, g) - mu_b ** 2
    s_ab = _filter_valid(a * b, g) - mu_a * mu_b
    s = (2 * mu_a * mu_b + c1) * (2 * s_ab + c2) / ((mu_a ** 2 + mu_b ** 2 + c1) * (s_aa + s_bb + c2))
    return s.mean(axis=-1)


def ssim(a, b, mask=None, data_range: float = 1.0) -> float:
    """Mean SSIM (see :func:`ssim_map`). With a mask, SSIM of the masked region only: ``a``'s pixels outside
    the mask are first replaced by ``b``'s (so they cannot differ), then the map is averaged over the windows
    whose centre pixel is in the mask (nan if none is). Identical images inside the mask give exactly 1."""
    a2, b2 = _pair(a, b)
    mask = _check_mask(mask, a2.shape[:2])
    if mask is None:
        return float(ssim_map(a2, b2, data_range).mean())
    m = ssim_map(np.where(mask[..., None], a2, b2), b2, data_range)
    h = SSIM_WINDOW // 2
    inner = mask[h:mask.shape[0] - h, h:mask.shape[1] - h]
    return float(m[inner].mean()) if inner.any() else float("nan")


# --------------------------------------------------------------------------------------------- statistics
PSNR_CAP = 100.0  # dB: identical images (PSNR = inf) are averaged as this value


def capped_psnr(value: float, cap: float = PSNR_CAP) -> float:
    """min(value, cap): a finite stand-in for the +inf PSNR of identical images (nan stays nan)."""
    return float(min(value, cap)) if value == value else float("nan")


def latent_psnr(z_ref, z, peak: float | None = None) -> float:
    """PSNR between two latents (any shape): 10 log10(peak^2 / mean((z_ref - z)^2)), peak = max |z_ref| unless
    given (latents are not in [0, 1]); capped at PSNR_CAP."""
    a, b = np.asarray(z_ref, dtype=np.float64), np.asarray(z, dtype=np.float64)
    if a.shape != b.shape:
        raise IdseditError(f"latents must have the same shape, got {a.shape} and {b.shape}")
    peak = float(np.abs(a).max()) if peak is None else float(peak)
    mse = float(((a - b) ** 2).mean())
    return PSNR_CAP if mse == 0 else capped_psnr(10.0 * math.log10(peak ** 2 / mse))


def bootstrap_ci(values, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(mean, lo, hi): the sample mean and its percentile-bootstrap confidence interval.

    ``n_boot`` resamples of the n values with replacement (seeded, so reports are reproducible); lo and hi are
    the (1 - level)/2 and (1 + level)/2 quantiles of the resampled means. nan values are dropped first; an empty
    sample gives (nan, nan, nan) and one value gives (v, v, v).
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[~np.isnan(x)]
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    if x.size == 1:
        return float(x[0]), float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(x.mean()), float(lo), float(hi)


def paired_bootstrap_ci(a, b, **kwargs) -> tuple[float, float, float]:
    """(mean, lo, hi) of the paired differences a_i - b_i (cases where either is nan are dropped): the
    bootstrap resamples cases, so what both methods share (the case's difficulty) cancels."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise IdseditError(f"paired samples must have the same length, got {a.shape} and {b.shape}")
    d = a - b
    return bootstrap_ci(d[~np.isnan(d)], **kwargs)


# --------------------------------------------------------------------------------------------- learned metrics
# LPIPS and CLIP score need weights that idsedit cannot download; they run when the weights are on disk and are
# skipped with a one-line reason otherwise. torch and transformers are imported only here, on use.
LPIPS_CHANNELS = (64, 192, 384, 256, 256)   # AlexNet's five ReLU outputs (LPIPS's taps)
LPIPS_SHIFT = (-0.030, -0.088, -0.188)      # LPIPS ScalingLayer: x' = (x - shift) / scale, x in [-1, 1]
LPIPS_SCALE = (0.458, 0.448, 0.450)


def lpips_net():
    """An LPIPS (Zhang et al. 2018, "lin" variant) network with the AlexNet trunk, random weights.

    Weights are a safetensors file with torchvision's ``alexnet.features`` keys (features.0/3/6/8/10.weight and
    .bias) and LPIPS's linear heads as ``lins.<k>.weight`` of shape (1, C_k, 1, 1) (LPIPS's ``lin<k>.model.1``);
    see docs/eval.md for converting the published weights.
    """
    import torch
    from torch import nn

    class LPIPS(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(),
                nn.MaxPool2d(3, 2), nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 256, 3, padding=1),
                nn.ReLU(), nn.Conv2d(256, 256, 3, padding=1), nn.ReLU())
            self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in LPIPS_CHANNELS)
            self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
            self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))
            self.taps = (1, 4, 7, 9, 11)  # indices of the ReLUs whose outputs are compared

        def feats(self, x):
            h, out = (x * 2 - 1 - self.shift) / self.scale, []
            for i, layer in enumerate(self.features):
                h = layer(h)
                if i in self.taps:
                    out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))   # unit length over channels
            return out

        @torch.no_grad()
        def forward(self, x, y):
            """x, y: (N, 3, H, W) in [0, 1] -> (N,) distances: sum_k mean_hw lin_k((f_k(x) - f_k(y))^2)."""
            return sum(lin((a - b) ** 2).mean((1, 2, 3)) for lin, a, b in zip(self.lins, self.feats(x), self.feats(y)))

    return LPIPS().eval()


def load_lpips(path):
    """The LPIPS network with weights from ``path`` (safetensors), or (None, reason) when it cannot be used."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        return None, f"LPIPS skipped: no weights at {path} (see docs/eval.md)"
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    net = lpips_net()
    try:
        state = load_file(str(path))
        missing = [k for k in net.state_dict() if k not in state and k not in ("shift", "scale")]
        if missing:
            return None, f"LPIPS skipped: {path} lacks {missing[0]} (and {len(missing) - 1} more)"
        net.load_state_dict(state, strict=False)
    except (SafetensorError, RuntimeError, OSError) as e:
        return None, f"LPIPS skipped: {path} is not an LPIPS safetensors file ({' '.join(str(e).split())[:100]})"
    return net, None


def lpips_distance(net, a, b) -> float:
    """LPIPS between two (H, W, 3) images in [0, 1] (lower = more alike; 0 for identical images)."""
    import torch

    x = torch.as_tensor(np.asarray(a, np.float32)).permute(2, 0, 1)[None]
    y = torch.as_tensor(np.asarray(b, np.float32)).permute(2, 0, 1)[None]
    return float(net(x, y)[0])


def load_clip(name_or_path):
    """(model, tokenizer, image processor) of a CLIP model that is on disk (a folder, or a hub id already in the
    local cache), or (None, reason)."""
    try:
        from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

        kw = {"local_files_only": True}
        return (CLIPModel.from_pretrained(name_or_path, **kw).eval(), CLIPTokenizer.from_pretrained(name_or_path, **kw),
                CLIPImageProcessor.from_pretrained(name_or_path, **kw)), None
    except (OSError, ValueError, ImportError) as e:
        return None, f"CLIP score skipped: {name_or_path} is not available locally ({' '.join(str(e).split())[:120]})"


def clip_score(clip, image, text: str) -> float:
    """CLIP score (Hessel et al. 2021, torchmetrics' definition): 100 * max(cos(E_image(x), E_text(t)), 0)."""
    import torch

    model, tokenizer, processor = clip
    with torch.no_grad():
        pix = processor(images=image, return_tensors="pt")["pixel_values"]
        ids = tokenizer([text], padding=True, return_tensors="pt")
        img = model.get_image_features(pixel_values=pix)
        txt = model.get_text_features(input_ids=ids["input_ids"], attention_mask=ids.get("attention_mask"))
        img, txt = (getattr(v, "pooler_output", v) for v in (img, txt))
        cos = torch.nn.functional.cosine_similarity(img, txt).item()
    return 100.0 * max(cos, 0.0)


__all__ = ["psnr", "ssim", "ssim_map", "gaussian_window", "capped_psnr", "latent_psnr", "bootstrap_ci",
           "paired_bootstrap_ci", "PSNR_CAP", "lpips_net", "load_lpips", "lpips_distance", "load_clip", "clip_score"]
