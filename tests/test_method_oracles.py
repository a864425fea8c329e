"""Methods checked against independent oracles (not the formulas restated): diffusers' DDPMScheduler.step for PDS's
posterior, explicit float64 numbers and autograd for the Jacobian-free FPR step."""

from __future__ import annotations

import pytest
import torch

from idsedit.distill import METHODS, DistillConfig
from idsedit.fpr import fixed_point_regularize, fpr_step_jacobian_free
from idsedit.rng import Sampler

T = torch.tensor([500])


def rnd(seed, shape=(1, 4, 8, 8)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def conds(tiny_prior):
    return tiny_prior.encode_text("a red cube on a gray floor"), tiny_prior.encode_text("a blue cube on a gray floor")


# ------------------------------------------------------------------------------------------------------ PDS
def _ddpm_step_mean_std(sched, eps, t, z_t):
    """Mean and std of DDPMScheduler.step(eps, t, z_t): two seeded steps with the noise redrawn and removed."""
    outs, noises = [], []
    for seed in (0, 1):
        outs.append(sched.step(eps, t, z_t, generator=torch.Generator().manual_seed(seed)).prev_sample)
        noises.append(torch.randn(z_t.shape, generator=torch.Generator().manual_seed(seed)))
    dn = noises[0] - noises[1]
    std = ((outs[0] - outs[1]) * dn).sum() / (dn * dn).sum()
    return outs[0] - std * noises[0], std


def test_pds_residuals_match_diffusers_ddpm_step(tiny_prior, conds):
    """PDS with t_prev = t - 1: xi(z, y) = (z_prev - mu) / sigma where mu, sigma are the mean and std of diffusers'
    DDPMScheduler.step (fixed_small variance, no clipping) on the guided eps the prior predicts."""
    from diffusers import DDPMScheduler

    z_src, z_trg, noise = rnd(0), rnd(2), rnd(1)
    cfg = DistillConfig(pds_t_stride=1)
    out = METHODS["pds"].fn(tiny_prior, z_src, z_trg, T, noise, *conds, cfg, Sampler(torch.Generator().manual_seed(7)))
    noise_prev = torch.randn(z_src.shape, generator=torch.Generator().manual_seed(7))  # the sampler's first draw
    sched = DDPMScheduler.from_config(tiny_prior.pipe.scheduler.config, clip_sample=False, thresholding=False,
                                      variance_type="fixed_small", prediction_type="epsilon")
    t = 500

    def xi(z, cond):
        z_t = sched.add_noise(z, noise, T)
        (eps,) = tiny_prior.eps([z_t], T, [cond], 7.5)
        mean, std = _ddpm_step_mean_std(sched, eps, t, z_t)
        return (sched.add_noise(z, noise_prev, torch.tensor([t - 1])) - mean) / std

    torch.testing.assert_close(out.grad, xi(z_trg, conds[1]) - xi(z_src, conds[0]), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------------ FPR
class ConstantEpsPrior:
    """A stand-in prior whose guided eps is a fixed tensor and whose alpha-bar is 0.64 (sqrt 0.8, sqrt(1-ab) 0.6)."""

    def __init__(self, eps):
        self.eps_value = eps

    def alpha_bar(self, t, ndim=4):
        return torch.full((1,) + (1,) * (ndim - 1), 0.64, dtype=torch.float64)

    def eps(self, z_ts, t, conds, guidance):
        return [self.eps_value.expand_as(z_ts[0])]


def test_jacobian_free_step_explicit_numbers():
    """z_t = [1, 2], eps = [0.5, 0.5], ab = 0.64: z0_hat = (z_t - 0.6 eps) / 0.8 = [0.875, 2.125]; with
    z_src = [0.575, 2.525] the residual r = z_src - z0_hat = [-0.3, 0.4], L = 0.5; dL/dz_t (eps held fixed) =
    -r / (L * 0.8) = [0.75, -1.0]; lambda = 0.5 -> z_t' = [1 - 0.375, 2 + 0.5] = [0.625, 2.5]."""
    prior = ConstantEpsPrior(torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    z_t = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    z_src = torch.tensor([[0.575, 2.525]], dtype=torch.float64)
    z_next, norm = fpr_step_jacobian_free(prior, z_src, z_t, T, None, 7.5, 0.5)
    torch.testing.assert_close(norm, torch.tensor(0.5, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(z_next, torch.tensor([[0.625, 2.5]], dtype=torch.float64), rtol=0, atol=1e-12)


def test_jacobian_free_fpr_equals_autograd_with_eps_held_fixed(tiny_prior, conds):
    """Three Jacobian-free iterations on the tiny model equal, step by step in float64, gradient descent on
    L(z) = ||z_src - (z - sqrt(1-ab) eps) / sqrt(ab)|| by autograd with eps = the prior's guided eps at the current
    iterate, detached (what "Jacobian-free" means)."""
    z_src = rnd(0)
    ab = tiny_prior.alpha_bar(T)
    z_t = (ab**0.5 * z_src + (1 - ab) ** 0.5 * rnd(1))
    res = fixed_point_regularize(tiny_prior, z_src, z_t, T, conds[0], guidance=7.5, iters=3, lam=0.5,
                                 mode="jacobian-free")
    z, ab64, norms = z_t.double(), ab.double(), []
    for _ in range(3):
        with torch.no_grad():
            (eps,) = tiny_prior.eps([z.float()], T, [conds[0]], 7.5)
        zz = z.clone().requires_grad_(True)
        loss = torch.linalg.vector_norm(z_src.double() - (zz - (1 - ab64) ** 0.5 * eps.double()) / ab64**0.5)
        (g,) = torch.autograd.grad(loss, zz)
        norms.append(float(loss.detach()))
        z = (z - 0.5 * g).detach()
    assert res.norms == pytest.approx(norms, rel=1e-5)
    torch.testing.assert_close(res.z_t.double(), z, rtol=1e-4, atol=1e-5)
