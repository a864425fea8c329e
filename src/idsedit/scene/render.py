"""Rays, sampling and volume rendering (functional: the field is passed in).

Rays. Pixel (i, j) of a camera with intrinsics (fx, fy, cx, cy) and camera-to-world ``c2w`` (OpenGL axes) has
origin o = c2w[:3, 3] and unit direction d = normalise(c2w[:3, :3] ((j + 0.5 - cx) / fx, -(i + 0.5 - cy) / fy, -1)),
so the ray parameter t is the distance from the camera centre.

Sampling. Inside the field's box a ray is sampled at t_k = t_near + (k + u) * step (u ~ U[0, 1) per ray while
training, 0.5 otherwise), k = 0, 1, ...; samples in stretches the occupancy grid marks empty are dropped (their
density is ~0, so they change nothing; see :func:`sample_rays`). Each kept sample stands for an interval of
length ``step``.

Volume rendering (Max 1995; NeRF eq. 3), for the kept samples i of one ray:

    alpha_i = 1 - exp(-sigma_i step),   T_i = exp(-sum_{j<i} sigma_j step),   w_i = T_i alpha_i
    opacity = sum_i w_i                 colour = sum_i w_i c_i + (1 - opacity) * background(d)
    depth   = sum_i w_i t_i / opacity   (the expected distance from the camera centre along the ray of the
                                         point where the ray ends, given that it ends inside the field)

``depth`` is +inf where opacity == 0; :func:`depth_for_files` also writes +inf where opacity < 0.5 (a ray that
mostly sees the background has no surface), the shapes world's convention for background pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

WEIGHT_EPS = 1e-4          # samples with a smaller weight get no colour evaluation (they cannot matter)
TRANS_EPS = 1e-4           # samples the ray reaches with less transmittance are dropped (early termination)
NO_SURFACE_OPACITY = 0.5   # depth files: +inf where the opacity is below this


@dataclass
class RenderOutput:
    """Per ray: rgb (R, 3), depth (R,) (+inf where opacity is 0), opacity (R,), and sample statistics."""

    rgb: Tensor
    depth: Tensor
    opacity: Tensor
    n_samples: int = 0
    weights: Tensor | None = None       # (R, K) w_i of the padded samples (0 for padding), render_rays only
    t: Tensor | None = None             # (R, K) their distances t_i


def camera_rays(c2w: Tensor, intrinsics, hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Origins and unit directions of every pixel centre, each (H W, 3), row-major (i, j)."""
    h, w = hw
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    i, j = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    d_cam = torch.stack([(j + 0.5 - cx) / fx, -(i + 0.5 - cy) / fy, -torch.ones_like(i)], -1).view(-1, 3)
    c2w = c2w.to(torch.float32)
    d = d_cam @ c2w[:3, :3].t()
    d = d / d.norm(dim=-1, keepdim=True)
    return c2w[:3, 3].expand_as(d).contiguous(), d


def ray_box(o: Tensor, d: Tensor, lo: Tensor, hi: Tensor, near: float = 0.0) -> tuple[Tensor, Tensor]:
    """Slab test: (t_near, t_far) per ray; t_far <= t_near where the ray misses the box. t_near >= ``near``."""
    inv = 1.0 / torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
    t0, t1 = (lo - o) * inv, (hi - o) * inv
    t_near = torch.minimum(t0, t1).amax(-1).clamp(min=near)
    t_far = torch.maximum(t0, t1).amin(-1)
    return t_near, t_far


def composite(sigma: Tensor, rgb: Tensor, t: Tensor, step: float | Tensor, bg: Tensor) -> RenderOutput:
    """Volume rendering of padded samples: sigma (R, K) (0 for padding), rgb (R, K, 3), t (R, K), bg (R, 3)."""
    tau = sigma * step                                                    # optical thickness of each interval
    alpha = 1 - torch.exp(-tau)
    trans = torch.exp(-torch.cumsum(torch.cat([torch.zeros_like(tau[:, :1]), tau[:, :-1]], 1), 1))   # T_i
    w = trans * alpha                                                     # (R, K)
    opacity = w.sum(1)
    colour = (w[..., None] * rgb).sum(1) + (1 - opacity)[:, None] * bg
    depth = (w * t).sum(1) / opacity.clamp(min=1e-10)
    depth = torch.where(opacity > 0, depth, torch.full_like(depth, math.inf))
    return RenderOutput(colour, depth, opacity, weights=w, t=t)


def distortion_loss(w: Tensor, t: Tensor, step: float) -> Tensor:
    """Mip-NeRF 360's distortion loss of padded samples (R, K) (sorted along each ray; padding has w = 0), mean
    over rays, in world units: sum_ij w_i w_j |t_i - t_j| + (1/3) sum_i w_i^2 step, computed in O(K) as
    2 sum_i w_i (t_i W_{<i} - (w t)_{<i}) with exclusive prefix sums. Small when each ray's weight sits in one
    short stretch (a surface), large for fog spread along the ray."""
    wt = w * t
    w_before = torch.cumsum(w, 1) - w
    wt_before = torch.cumsum(wt, 1) - wt
    inter = 2 * (w * (t * w_before - wt_before)).sum(1)
    intra = (w * w).sum(1) * step / 3
    return (inter + intra).mean()


def sample_rays(field, o: Tensor, d: Tensor, step: float, jitter: Tensor | None = None, near: float = 0.0,
                max_steps: int = 8192) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Occupancy-filtered samples packed per ray.

    Two levels: the ray is first cut into segments of ``S = max(1, floor(cell / step))`` samples, ``cell`` the
    smallest edge of the field's coarse occupancy grid (:meth:`TensoRF.coarse_occupancy`: blocks of fine cells,
    dilated by one block, so a segment tested at its midpoint cannot lose an occupied sample); the kept segments
    are expanded into their S samples t_k = t_near + (k + u) step, and each sample is kept when it lies in an
    occupied cell of the fine occupancy grid.

    Returns (ray index (M,), slot in the ray (M,), t (M,), points (M, 3)) of the M kept samples, slots counted
    from 0 in order along each ray.
    """
    R = o.shape[0]
    t_near, t_far = ray_box(o, d, field.lo, field.hi, near)
    hit = t_far > t_near
    n = int(((t_far - t_near).clamp(min=0) / step).ceil().max().item()) if bool(hit.any()) else 0
    n = min(n, max_steps)
    e = torch.zeros(0, dtype=torch.long)
    if n == 0:
        return e, e, torch.zeros(0), torch.zeros(0, 3)
    two_level = hasattr(field, "coarse_occupancy")
    S = max(1, int(field.coarse_occupancy()[1] / step)) if two_level else 1
    n_seg = -(-n // S)
    u = jitter[:, None] if jitter is not None else torch.full((R, 1), 0.5)
    seg_len = S * step
    t_mid = t_near[:, None] + (torch.arange(n_seg, dtype=torch.float32)[None, :] + 0.5) * seg_len   # (R, n_seg)
    seg_ok = (t_mid - 0.5 * seg_len) < t_far[:, None]
    ray_s, k_s = seg_ok.nonzero(as_tuple=True)
    if two_level:
        tm = t_mid[ray_s, k_s]
        occ = field.occupied_coarse(o[ray_s] + tm[:, None] * d[ray_s])
        ray_s, k_s = ray_s[occ], k_s[occ]
    # expand kept segments into their S samples
    ray = ray_s.repeat_interleave(S)
    k = (k_s[:, None] * S + torch.arange(S)[None, :]).reshape(-1)
    tk = t_near[ray] + (k.to(torch.float32) + u[ray, 0]) * step
    valid = tk < t_far[ray]
    ray, tk = ray[valid], tk[valid]
    pts = o[ray] + tk[:, None] * d[ray]
    keep = field.occupied(pts)
    ray, tk, pts = ray[keep], tk[keep], pts[keep]
    return ray, _repack(ray, R), tk, pts


def _transmittance(sigma: Tensor, step: float | Tensor) -> tuple[Tensor, Tensor]:
    """(T_i, alpha_i) of padded per-ray samples sigma (R, K)."""
    tau = sigma * step
    trans = torch.exp(-torch.cumsum(torch.cat([torch.zeros_like(tau[:, :1]), tau[:, :-1]], 1), 1))
    return trans, 1 - torch.exp(-tau)


def _repack(ray: Tensor, R: int) -> Tensor:
    """Slots 0, 1, ... of each ray's samples, for ``ray`` sorted."""
    counts = torch.bincount(ray, minlength=R)
    start = torch.cumsum(counts, 0) - counts
    return torch.arange(ray.shape[0]) - start[ray]


def render_rays(field, o: Tensor, d: Tensor, step: float, *, jitter: Tensor | None = None, near: float = 0.0,
                weight_eps: float = WEIGHT_EPS, trans_eps: float = TRANS_EPS) -> RenderOutput:
    """Render rays (R, 3) through ``field`` (a TensoRF-like module: lo, hi, occupied, density, colour, background).

    A first pass without gradient finds the samples that matter: those the ray still reaches (T_i > trans_eps;
    samples behind an opaque surface are dropped, "early ray termination") and, among them, those whose weight
    exceeds ``weight_eps`` (the only ones whose colour is evaluated). The second pass evaluates density (and
    colour) of those samples with gradients.
    """
    R = o.shape[0]
    ray, slot, tk, pts = sample_rays(field, o, d, step, jitter, near)
    bg = field.background(d)
    if ray.numel() == 0:
        z = torch.zeros(R, device=o.device)
        return RenderOutput(bg, torch.full((R,), math.inf), z, 0)
    with torch.no_grad():
        K = int(slot.max()) + 1
        sig0 = torch.zeros(R, K).index_put((ray, slot), field.density(pts))
        trans, alpha = _transmittance(sig0, step)
        reach = trans[ray, slot] > trans_eps
        shade = ((trans * alpha)[ray, slot] > weight_eps)[reach]
    n_samples = int(ray.numel())
    ray, tk, pts = ray[reach], tk[reach], pts[reach]
    slot = _repack(ray, R)
    K = int(slot.max()) + 1 if slot.numel() else 1
    sig = field.density(pts)
    sigma = torch.zeros(R, K, dtype=sig.dtype).index_put((ray, slot), sig)
    t = torch.zeros(R, K).index_put((ray, slot), tk)
    rgb = torch.zeros(R, K, 3, dtype=sig.dtype)
    if bool(shade.any()):
        c = field.colour(pts[shade], d[ray[shade]])
        rgb = rgb.index_put((ray[shade], slot[shade]), c)
    out = composite(sigma, rgb, t, step, bg)
    out.n_samples = n_samples
    return out


def render_image(field, c2w: Tensor, intrinsics, hw: tuple[int, int], step: float, *, chunk: int = 8192,
                 near: float = 0.0) -> RenderOutput:
    """A whole image (no gradients): rgb (H, W, 3), depth (H, W), opacity (H, W)."""
    o, d = camera_rays(c2w, intrinsics, hw)
    parts = []
    with torch.no_grad():
        for s in range(0, o.shape[0], chunk):
            parts.append(render_rays(field, o[s:s + chunk], d[s:s + chunk], step, near=near))
    h, w = hw
    return RenderOutput(torch.cat([p.rgb for p in parts]).view(h, w, 3), torch.cat([p.depth for p in parts]).view(h, w),
                        torch.cat([p.opacity for p in parts]).view(h, w), sum(p.n_samples for p in parts))


def render_image_grad(field, c2w: Tensor, intrinsics, hw: tuple[int, int], step: float, *, near: float = 0.0,
                      jitter: Tensor | None = None, weight_eps: float = WEIGHT_EPS,
                      trans_eps: float = TRANS_EPS) -> RenderOutput:
    """A whole image WITH gradients (the edit loop): rgb (H, W, 3), depth (H, W), opacity (H, W)."""
    o, d = camera_rays(c2w, intrinsics, hw)
    out = render_rays(field, o, d, step, near=near, jitter=jitter, weight_eps=weight_eps, trans_eps=trans_eps)
    h, w = hw
    return RenderOutput(out.rgb.view(h, w, 3), out.depth.view(h, w), out.opacity.view(h, w), out.n_samples)


def depth_for_files(out: RenderOutput, min_opacity: float = NO_SURFACE_OPACITY) -> Tensor:
    """Depth with +inf where opacity < min_opacity (no surface), float32."""
    return torch.where(out.opacity >= min_opacity, out.depth, torch.full_like(out.depth, math.inf)).float()
