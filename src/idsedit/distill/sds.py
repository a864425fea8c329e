"""Score Distillation Sampling (Poole et al., DreamFusion 2022).

    z_t  = sqrt(ab_t) z_trg + sqrt(1 - ab_t) eps
    grad = eps_phi^w(z_t, y_trg, t) - eps                                          (SDS, no weighting w(t))
"""

from __future__ import annotations

from .. import diffusion as D
from . import DistillOutput, register


@register("sds", "score distillation sampling: eps(z_t_trg, y_trg) - eps")
def sds(prior, z_src, z_trg, t, noise, cond_src, cond_trg, cfg, sampler=None) -> DistillOutput:
    ab = prior.alpha_bar(t, z_trg.ndim)
    z_t_trg = D.add_noise(z_trg.detach(), noise, ab)
    (eps_trg,) = prior.eps([z_t_trg], t, [cond_trg], cfg.guidance)
    return DistillOutput(grad=(eps_trg - noise).detach())
