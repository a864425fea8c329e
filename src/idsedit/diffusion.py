"""The forward process and its conversions, written once.

Notation (DDPM, 1000-step schedule): ``ab_t`` is alpha-bar at integer timestep ``t``;
``z`` a clean latent, ``eps`` noise, ``z_t`` the noisy latent, ``v`` the v-prediction target.

    z_t  = sqrt(ab_t) z + sqrt(1 - ab_t) eps                     (forward process, scheduler.add_noise)
    z0   = (z_t - sqrt(1 - ab_t) eps) / sqrt(ab_t)               (Tweedie / posterior mean from eps)
    eps  = (z_t - sqrt(ab_t) z) / sqrt(1 - ab_t)                 (noise that maps z to z_t; IDS guided noise)
    v    = sqrt(ab_t) eps - sqrt(1 - ab_t) z                     (Salimans & Ho 2022)
    eps  = sqrt(1 - ab_t) z_t + sqrt(ab_t) v                     (eps from a v-prediction)

All functions take ``ab`` already gathered for the batch (shape broadcastable to the latent, e.g. (B,1,1,1)) so
they stay free of scheduler state; :func:`gather` does the indexing. The arithmetic order follows diffusers'
``add_noise`` and the official IDS code so results agree to float rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor


def gather(alphas_cumprod: Tensor, t: Tensor, ndim: int = 4) -> Tensor:
    """ab_t for each timestep in ``t`` (shape (B,) or (1,)), reshaped to (B, 1, ..., 1) with ``ndim`` dims."""
    ab = alphas_cumprod.to(t.device)[t.long()].flatten()
    return ab.reshape(-1, *([1] * (ndim - 1)))


def add_noise(z: Tensor, eps: Tensor, ab: Tensor) -> Tensor:
    """z_t = sqrt(ab) z + sqrt(1 - ab) eps."""
    ab = ab.to(z.dtype)
    return ab**0.5 * z + (1 - ab) ** 0.5 * eps


def x0_from_eps(z_t: Tensor, eps: Tensor, ab: Tensor) -> Tensor:
    """Posterior mean (Tweedie): z0 = (z_t - sqrt(1 - ab) eps) / sqrt(ab)."""
    return (z_t - (1 - ab) ** 0.5 * eps) / ab**0.5


def eps_from_x0(z_t: Tensor, z0: Tensor, ab: Tensor) -> Tensor:
    """The noise that carries z0 to z_t: eps = (z_t - sqrt(ab) z0) / sqrt(1 - ab)  (IDS Eq. 8, guided noise)."""
    ab = ab.to(z_t.dtype)
    return (z_t - ab**0.5 * z0) / (1 - ab) ** 0.5


def v_from_eps(z_t: Tensor, eps: Tensor, ab: Tensor) -> Tensor:
    """v = sqrt(ab) eps - sqrt(1 - ab) z0, with z0 from (z_t, eps); equals (eps - sqrt(1-ab) z_t) / sqrt(ab)."""
    z0 = x0_from_eps(z_t, eps, ab)
    return ab**0.5 * eps - (1 - ab) ** 0.5 * z0


def eps_from_v(z_t: Tensor, v: Tensor, ab: Tensor) -> Tensor:
    """eps = sqrt(1 - ab) z_t + sqrt(ab) v."""
    return (1 - ab) ** 0.5 * z_t + ab**0.5 * v


def x0_from_v(z_t: Tensor, v: Tensor, ab: Tensor) -> Tensor:
    """z0 = sqrt(ab) z_t - sqrt(1 - ab) v."""
    return ab**0.5 * z_t - (1 - ab) ** 0.5 * v


def cfg(eps_uncond: Tensor, eps_cond: Tensor, guidance: float) -> Tensor:
    """Classifier-free guidance: eps = eps_u + w (eps_c - eps_u)."""
    return eps_uncond + guidance * (eps_cond - eps_uncond)


def ddpm_posterior_mean(z_t: Tensor, z0: Tensor, alpha_t: Tensor, beta_t: Tensor, ab_t: Tensor, ab_prev: Tensor) -> Tensor:
    """Mean of q(z_{t-1} | z_t, z0) (DDPM Eq. 7):

        mu = sqrt(ab_prev) beta_t / (1 - ab_t) z0 + sqrt(alpha_t) (1 - ab_prev) / (1 - ab_t) z_t
    """
    c0 = ab_prev**0.5 * beta_t / (1 - ab_t)
    c1 = alpha_t**0.5 * (1 - ab_prev) / (1 - ab_t)
    return c0 * z0 + c1 * z_t


def ddpm_posterior_std(beta_t: Tensor, ab_t: Tensor, ab_prev: Tensor) -> Tensor:
    """Standard deviation of q(z_{t-1} | z_t, z0): sigma_t = sqrt((1 - ab_prev) / (1 - ab_t) beta_t)."""
    return ((1 - ab_prev) / (1 - ab_t) * beta_t) ** 0.5


def timesteps_like(t: int | Tensor, batch: int, device: torch.device | str = "cpu") -> Tensor:
    """A (batch,) long tensor of timesteps from an int or a (1,)/(B,) tensor."""
    t = torch.as_tensor(t, dtype=torch.long, device=device).flatten()
    return t.expand(batch) if t.numel() == 1 else t
