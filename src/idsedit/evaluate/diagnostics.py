"""The paper's motivating measurement: how far z0_hat(z_t) lands from z_src, against t, before and after FPR.

For a source latent z_src and its caption y_src, at each t of a grid (with one seeded eps per t):

    z_t = sqrt(ab_t) z_src + sqrt(1 - ab_t) eps
    r_k(t) = || z_src - z0_hat(FPR^k(z_t)) ||_2        k = 0 .. N   (FPR^0 = no correction)

computed by :func:`idsedit.fpr.fixed_point_regularize` with N + 1 iterations (its ``norms`` are the residuals
before each update, i.e. after 0 .. N updates).
"""

from __future__ import annotations

import torch

from ..fpr import fixed_point_regularize


def fpr_residual_curve(prior, z_src, cond_src, ts, *, iters: int = 3, lam: float = 1.0, guidance: float = 7.5,
                       mode: str = "exact", seed: int = 0) -> list[list[float]]:
    """[[r_0(t), ..., r_N(t)] for t in ts] (see the module docstring)."""
    gen = torch.Generator().manual_seed(int(seed))
    out = []
    for t in ts:
        eps = torch.randn(z_src.shape, generator=gen, dtype=z_src.dtype).to(z_src.device)
        tt = torch.tensor([int(t)], device=z_src.device)
        ab = prior.alpha_bar(tt, z_src.ndim)
        z_t = ab.sqrt() * z_src + (1 - ab).sqrt() * eps
        res = fixed_point_regularize(prior, z_src, z_t, tt, cond_src, guidance=guidance, iters=iters + 1, lam=lam,
                                     mode=mode)
        out.append([float(n) for n in res.norms])
    return out


def fpr_residual_curves(prior, cases, ts, *, iters: int = 3, lam: float = 1.0, guidance: float = 7.5) -> dict:
    """The residual curves of several cases' sources: {"t", "iters", "lambda", "cases", "norms" (cases x T x N+1)}."""
    from ..edit2d import image_to_tensor
    from .cases import render_image

    norms = []
    for case in cases:
        z = prior.encode(image_to_tensor(render_image(case.source_params, prior.resolution)))
        cond = prior.encode_text(case.source_prompt)
        norms.append(fpr_residual_curve(prior, z, cond, ts, iters=iters, lam=lam, guidance=guidance, seed=case.seed))
    return {"t": [int(t) for t in ts], "iters": iters, "lambda": lam, "cases": [c.name for c in cases],
            "norms": norms}
