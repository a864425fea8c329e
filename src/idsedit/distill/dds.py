"""Delta Denoising Score (Hertz et al., ICCV 2023).

    z_t_src = sqrt(ab_t) z_src + sqrt(1 - ab_t) eps,   z_t_trg = sqrt(ab_t) z_trg + sqrt(1 - ab_t) eps   (same t, eps)
    grad    = eps_phi^w(z_t_trg, y_trg, t) - eps_phi^w(z_t_src, y_src, t)         (one batch-4 UNet call)
"""

from __future__ import annotations

from .. import diffusion as D
from . import DistillOutput, register


def delta_score(prior, z_t_src, z_t_trg, t, cond_src, cond_trg, guidance):
    """eps^w(z_t_trg, y_trg) - eps^w(z_t_src, y_src) from one batched CFG call."""
    eps_src, eps_trg = prior.eps([z_t_src, z_t_trg], t, [cond_src, cond_trg], guidance)
    return (eps_trg - eps_src).detach()


@register("dds", "delta denoising score: eps(z_t_trg, y_trg) - eps(z_t_src, y_src), shared t and eps")
def dds(prior, z_src, z_trg, t, noise, cond_src, cond_trg, cfg, sampler=None) -> DistillOutput:
    ab = prior.alpha_bar(t, z_trg.ndim)
    z_t_src = D.add_noise(z_src, noise, ab)
    z_t_trg = D.add_noise(z_trg.detach(), noise, ab)
    return DistillOutput(grad=delta_score(prior, z_t_src, z_t_trg, t, cond_src, cond_trg, cfg.guidance))
