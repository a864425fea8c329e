"""Closed-form checks of the forward process and its conversions."""

import torch

import idsedit.diffusion as D

AB = torch.tensor([0.3]).view(1, 1, 1, 1)


def rnd(seed):
    return torch.randn(2, 4, 5, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_add_noise_matches_hand_formula_and_diffusers():
    from diffusers import DDPMScheduler

    z, eps = rnd(0).float(), rnd(1).float()
    s = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    t = torch.tensor([500, 500])
    ab = D.gather(s.alphas_cumprod, t)
    assert torch.equal(D.add_noise(z, eps, ab), s.add_noise(z, eps, t))
    torch.testing.assert_close(D.add_noise(z, eps, AB), 0.3**0.5 * z + 0.7**0.5 * eps)


def test_guided_noise_inverts_forward_noising():
    """eps* from (z_t, z) recovers the eps that made z_t, and x0 from (z_t, eps) recovers z."""
    z, eps, ab = rnd(0), rnd(1), AB.double()
    z_t = D.add_noise(z, eps, ab)
    torch.testing.assert_close(D.eps_from_x0(z_t, z, ab), eps, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(D.x0_from_eps(z_t, eps, ab), z, rtol=1e-12, atol=1e-12)


def test_v_conversions_round_trip():
    z, eps, ab = rnd(0), rnd(1), AB.double()
    z_t = D.add_noise(z, eps, ab)
    v = D.v_from_eps(z_t, eps, ab)
    torch.testing.assert_close(v, ab**0.5 * eps - (1 - ab) ** 0.5 * z)
    torch.testing.assert_close(D.eps_from_v(z_t, v, ab), eps)
    torch.testing.assert_close(D.x0_from_v(z_t, v, ab), z)


def test_cfg_endpoints():
    u, c = rnd(0), rnd(1)
    torch.testing.assert_close(D.cfg(u, c, 1.0), c)
    assert torch.equal(D.cfg(u, c, 0.0), u)
    torch.testing.assert_close(D.cfg(u, c, 7.5), u + 7.5 * (c - u))


def test_ddpm_posterior_matches_closed_form_at_one_step():
    """For t_prev = t - 1 the posterior mean/std equal DDPM's beta-tilde formulas from the scheduler."""
    from diffusers import DDPMScheduler

    s = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    t = 300
    ab_t, ab_p = s.alphas_cumprod[t], s.alphas_cumprod[t - 1]
    beta, alpha = s.betas[t], s.alphas[t]
    z0, zt = rnd(0).float(), rnd(1).float()
    mu = D.ddpm_posterior_mean(zt, z0, alpha, beta, ab_t, ab_p)
    expected = (ab_p**0.5 * beta / (1 - ab_t)) * z0 + (alpha**0.5 * (1 - ab_p) / (1 - ab_t)) * zt
    torch.testing.assert_close(mu, expected)
    var = D.ddpm_posterior_std(beta, ab_t, ab_p) ** 2
    torch.testing.assert_close(var, s._get_variance(t), rtol=1e-4, atol=1e-8)  # scheduler: 1 - ab_t / ab_prev in fp32
