"""Posterior Distillation Sampling (Koo, Park & Sung, CVPR 2024).

Match the stochastic latents of the DDPM posterior of source and target (shared eps_t and eps_prev):

    z_t      = sqrt(ab_t) z + sqrt(1 - ab_t) eps_t                          for z in {z_src, z_trg}
    z_prev   = sqrt(ab_prev) z + sqrt(1 - ab_prev) eps_prev                 (t_prev = t - stride)
    mu_phi   = c0 * z0_hat(z_t, eps_phi^w(z_t, y)) + c1 * z_t               (DDPM posterior mean, Eq. 7)
    xi(z, y) = (z_prev - mu_phi) / sigma_t,   sigma_t^2 = (1 - ab_prev)/(1 - ab_t) beta_t
    grad     = xi(z_trg, y_trg) - xi(z_src, y_src)

As in the authors' code, beta_t and alpha_t are the 1000-step schedule's values at t.
"""

from __future__ import annotations

from .. import diffusion as D
from . import DistillOutput, register


def posterior_residual(prior, z, z_t, eps_pred, noise_prev, t, t_prev):
    """xi = (z_prev - mu_phi(z_t, eps_pred)) / sigma_t for a clean latent z (see module docstring)."""
    ab_t, ab_prev = prior.alpha_bar(t, z.ndim), prior.alpha_bar(t_prev, z.ndim)
    beta_t = D.gather(prior.betas, t.long(), z.ndim)
    alpha_t = D.gather(prior.alphas, t.long(), z.ndim)
    z_prev = D.add_noise(z, noise_prev, ab_prev)
    mu = D.ddpm_posterior_mean(z_t, D.x0_from_eps(z_t, eps_pred, ab_t), alpha_t, beta_t, ab_t, ab_prev)
    return (z_prev - mu) / D.ddpm_posterior_std(beta_t, ab_t, ab_prev)


@register("pds", "posterior distillation sampling: match DDPM posterior latents of source and target")
def pds(prior, z_src, z_trg, t, noise, cond_src, cond_trg, cfg, sampler) -> DistillOutput:
    t = D.timesteps_like(t, 1, z_src.device)
    t_prev = (t - cfg.pds_t_stride).clamp(min=0)
    noise_prev = sampler.randn_like(z_src)
    ab = prior.alpha_bar(t, z_trg.ndim)
    z_t_src, z_t_trg = D.add_noise(z_src, noise, ab), D.add_noise(z_trg.detach(), noise, ab)
    eps_src, eps_trg = prior.eps([z_t_src, z_t_trg], t, [cond_src, cond_trg], cfg.guidance)
    xi_src = posterior_residual(prior, z_src, z_t_src, eps_src, noise_prev, t, t_prev)
    xi_trg = posterior_residual(prior, z_trg.detach(), z_t_trg, eps_trg, noise_prev, t, t_prev)
    return DistillOutput(grad=(xi_trg - xi_src).detach())  # non-finite stays non-finite: the loop's guard sees it
