"""Identity-preserving Distillation Sampling (Kim et al., CVPR 2025), Algorithm 1.

    z_t_src   = sqrt(ab_t) z_src + sqrt(1 - ab_t) eps                          (Eq. 1)
    z_t_src*  = FPR(z_t_src)                                                   (Eqs. 6-7, see idsedit.fpr)
    eps*      = (z_t_src* - sqrt(ab_t) z_src) / sqrt(1 - ab_t)                 (guided noise, Eq. 8)
    z_t_trg*  = sqrt(ab_t) z_trg + sqrt(1 - ab_t) eps*
    grad      = eps^w(z_t_trg*, y_trg) - eps^w(z_t_src*, y_src)                (Eq. 9, one batched call)

With ``with_cut`` the CDS PatchNCE term is added on (z_t_src*, z_t_trg*), with CDS's two calls (the conditional
target branch run once, with grad: idsedit.distill.cds). With N = 0 it is exactly DDS.
Exact FPR runs the UNet's attention backward in bf16 unless ``cfg.fpr_attention_backward == "fp32"`` (idsedit.fpr).
"""

from __future__ import annotations

from .. import diffusion as D
from ..fpr import fixed_point_regularize
from . import DistillOutput, register
from .cds import cut_term, guided_pair_target_once, self_attention_layers
from .dds import delta_score


@register("ids", "identity-preserving distillation: DDS on FPR-corrected latents and guided noise")
def ids(prior, z_src, z_trg, t, noise, cond_src, cond_trg, cfg, sampler=None) -> DistillOutput:
    ab = prior.alpha_bar(t, z_trg.ndim)
    z_t_src = D.add_noise(z_src, noise, ab)
    fpr = fixed_point_regularize(prior, z_src, z_t_src, t, cond_src, guidance=cfg.guidance, iters=cfg.fpr_iters,
                                 lam=cfg.fpr_lambda, mode=cfg.fpr_mode, tol=cfg.fpr_tol,
                                 attention_backward=cfg.fpr_attention_backward)
    eps_star = D.eps_from_x0(fpr.z_t, z_src, ab) if fpr.updates else noise
    info = {"fpr_norms": fpr.norms, "fpr_updates": fpr.updates}
    if not cfg.with_cut:
        z_t_trg = D.add_noise(z_trg.detach(), eps_star, ab)
        grad = delta_score(prior, fpr.z_t, z_t_trg, t, cond_src, cond_trg, cfg.guidance)
        return DistillOutput(grad=grad, info=info)
    layers = self_attention_layers(prior.unet)
    grad, refs, feats = guided_pair_target_once(prior, fpr.z_t, z_trg, eps_star, t, cond_src, cond_trg, cfg.guidance,
                                                layers)
    aux = cut_term(refs, feats, layers, tuple(z_trg.shape[-2:]), cfg, sampler)
    return DistillOutput(grad=grad, aux_loss=aux, info={**info, "cut_loss": float(aux.detach())})
