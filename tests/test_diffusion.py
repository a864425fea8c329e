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


def test_v_conversions_hand_computed():
    """ab = 0.64 (sqrt 0.8, sqrt(1 - ab) 0.6): z_t = 1, v = 0.5 -> eps = 0.6 * 1 + 0.8 * 0.5 = 1.0 and
    z0 = 0.8 * 1 - 0.6 * 0.5 = 0.5; z0 = 0.5, eps = 1 -> z_t = 0.4 + 0.6 = 1.0 and v = 0.8 * 1 - 0.6 * 0.5 = 0.5."""
    ab = torch.tensor(0.64, dtype=torch.float64)
    one, half = torch.tensor([1.0], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64)
    torch.testing.assert_close(D.eps_from_v(one, half, ab), one, rtol=0, atol=1e-15)
    torch.testing.assert_close(D.x0_from_v(one, half, ab), half, rtol=0, atol=1e-15)
    torch.testing.assert_close(D.v_from_eps(one, one, ab), half, rtol=0, atol=1e-15)


def test_v_conversions_match_diffusers_v_prediction():
    """diffusers' get_velocity gives v for (z0, eps, t); eps_from_v/x0_from_v must recover the eps and z0 that made
    it, and DDPMScheduler.step's v-prediction path must give the same x0 (pred_original_sample)."""
    from diffusers import DDPMScheduler

    s = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                      prediction_type="v_prediction", clip_sample=False)
    z0, eps, t = rnd(0), rnd(1), torch.tensor([700, 700])
    v = s.get_velocity(z0, eps, t)
    z_t = s.add_noise(z0, eps, t)
    ab = D.gather(s.alphas_cumprod.double(), t)
    torch.testing.assert_close(D.eps_from_v(z_t, v, ab), eps, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(D.x0_from_v(z_t, v, ab), z0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(D.v_from_eps(z_t, eps, ab), v, rtol=1e-6, atol=1e-6)
    x0_sched = s.step(v[:1].float(), 700, z_t[:1].float(), generator=torch.Generator().manual_seed(0)).pred_original_sample
    torch.testing.assert_close(D.x0_from_v(z_t[:1].float(), v[:1].float(), ab[:1].float()), x0_sched)


def test_cfg_hand_computed():
    u, c = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.0])
    assert torch.equal(D.cfg(u, c, 7.5), torch.tensor([16.0, 13.0]))     # 1 + 7.5 * 2, -2 + 7.5 * 2
    assert torch.equal(D.cfg(u, c, 1.0), c) and torch.equal(D.cfg(u, c, 0.0), u)


def ddpm_step_mean_and_std(sched, model_output, t, z_t):
    """Mean and std of diffusers' DDPMScheduler.step (fixed_small variance): two seeded steps, noises redrawn."""
    outs, noises = [], []
    for seed in (0, 1):
        outs.append(sched.step(model_output, t, z_t, generator=torch.Generator().manual_seed(seed)).prev_sample)
        noises.append(torch.randn(z_t.shape, generator=torch.Generator().manual_seed(seed), dtype=z_t.dtype))
    dn = noises[0] - noises[1]
    std = ((outs[0] - outs[1]) * dn).sum() / (dn * dn).sum()    # least squares: out = mu + std * noise
    return outs[0] - std * noises[0], std


def test_ddpm_posterior_matches_diffusers_ddpm_step():
    """mu and sigma of q(z_{t-1} | z_t, z0) equal DDPMScheduler.step's pred_prev_sample mean and std (fixed_small,
    1000 steps so t_prev = t - 1), for z0 given directly (prediction "sample") and via eps (Tweedie)."""
    from diffusers import DDPMScheduler

    for prediction in ("sample", "epsilon"):
        s = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                          variance_type="fixed_small", prediction_type=prediction)
        t = 300
        ab_t, ab_p = s.alphas_cumprod[t], s.alphas_cumprod[t - 1]
        z0, zt = rnd(0).float(), rnd(1).float()
        eps = D.eps_from_x0(zt, z0, ab_t)
        mean, std = ddpm_step_mean_and_std(s, z0 if prediction == "sample" else eps, t, zt)
        mu = D.ddpm_posterior_mean(zt, D.x0_from_eps(zt, eps, ab_t) if prediction == "epsilon" else z0,
                                   s.alphas[t], s.betas[t], ab_t, ab_p)
        torch.testing.assert_close(mu, mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(D.ddpm_posterior_std(s.betas[t], ab_t, ab_p), std, rtol=1e-4, atol=1e-7)
