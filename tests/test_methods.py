"""Hand-checked properties of the five methods and FPR on the tiny random model."""

from __future__ import annotations

import pytest
import torch

import idsedit.diffusion as D
from idsedit.distill import METHODS, DistillConfig
from idsedit.distill.cds import capture_outputs, cut_loss, patch_nce, self_attention_layers, token_grid
from idsedit.fpr import fixed_point_regularize, residual_norm
from idsedit.rng import Sampler

T = torch.tensor([500])


def rnd(seed, shape=(1, 4, 8, 8)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def conds(tiny_prior):
    return tiny_prior.encode_text("a red cube on a gray floor"), tiny_prior.encode_text("a blue cube on a gray floor")


def run(prior, name, z_src, z_trg, noise, cs, ct, cfg=None, sampler=None):
    return METHODS[name].fn(prior, z_src, z_trg, T, noise, cs, ct, cfg or DistillConfig(),
                            sampler or Sampler(torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("name", ["dds", "pds", "ids"])
def test_identical_prompts_and_latents_give_zero_gradient(tiny_prior, conds, name):
    z = rnd(0)
    out = run(tiny_prior, name, z, z.clone(), rnd(1), conds[0], conds[0])
    # float32 noise only: the two branches sit at different rows of one batched UNet call, and CFG multiplies the
    # difference by 8.5 (IDS: 1.09e-5 on one element on 2026-11-30's set-up); a real gradient is ~1e-1
    assert out.grad.abs().max() < 5e-5


def test_ids_with_zero_iterations_equals_dds(tiny_prior, conds):
    z_src, z_trg, noise = rnd(0), rnd(2), rnd(1)
    dds = run(tiny_prior, "dds", z_src, z_trg, noise, *conds)
    ids0 = run(tiny_prior, "ids", z_src, z_trg, noise, *conds, DistillConfig(fpr_iters=0))
    assert torch.equal(dds.grad, ids0.grad)


def test_sds_is_guided_eps_minus_noise(tiny_prior, conds):
    z_trg, noise = rnd(2), rnd(1)
    out = run(tiny_prior, "sds", rnd(0), z_trg, noise, *conds)
    z_t = D.add_noise(z_trg, noise, tiny_prior.alpha_bar(T))
    u = tiny_prior.model_output(z_t, T, conds[1].embeds[:1])
    c = tiny_prior.model_output(z_t, T, conds[1].embeds[1:])
    torch.testing.assert_close(out.grad, u + 7.5 * (c - u) - noise, rtol=1e-5, atol=1e-5)


def test_pds_matches_hand_computed_posterior_residuals(tiny_prior, conds):
    """The default t_prev = t - 2 with beta_t, alpha_t of the 1000-step schedule at t is the PDS authors'
    convention, which no library implements, so it is spelled out here; the one-step posterior (t_prev = t - 1)
    is checked against diffusers' DDPMScheduler.step in test_method_oracles.py."""
    z_src, z_trg, noise = rnd(0), rnd(2), rnd(1)
    gen_seed = 7
    out = run(tiny_prior, "pds", z_src, z_trg, noise, *conds, sampler=Sampler(torch.Generator().manual_seed(gen_seed)))
    noise_prev = torch.randn(z_src.shape, generator=torch.Generator().manual_seed(gen_seed))
    sched = tiny_prior.pipe.scheduler
    t, tp = 500, 498
    ab, abp, beta, alpha = sched.alphas_cumprod[t], sched.alphas_cumprod[tp], sched.betas[t], sched.alphas[t]
    sigma = ((1 - abp) / (1 - ab) * beta) ** 0.5

    def xi(z, cond):
        z_t = ab**0.5 * z + (1 - ab) ** 0.5 * noise
        u = tiny_prior.model_output(z_t, T, cond.embeds[:1])
        c = tiny_prior.model_output(z_t, T, cond.embeds[1:])
        eps = u + 7.5 * (c - u)
        x0 = (z_t - (1 - ab) ** 0.5 * eps) / ab**0.5
        mu = abp**0.5 * beta / (1 - ab) * x0 + alpha**0.5 * (1 - abp) / (1 - ab) * z_t
        return (abp**0.5 * z + (1 - abp) ** 0.5 * noise_prev - mu) / sigma

    torch.testing.assert_close(out.grad, xi(z_trg, conds[1]) - xi(z_src, conds[0]), rtol=1e-4, atol=1e-4)


def test_fpr_lowers_the_residual_on_every_iteration(tiny_prior, conds):
    z_src = rnd(0)
    z_t = D.add_noise(z_src, rnd(1), tiny_prior.alpha_bar(T))
    res = fixed_point_regularize(tiny_prior, z_src, z_t, T, conds[0], guidance=7.5, iters=6, lam=0.2)
    assert len(res.norms) == 6 and res.updates == 6
    assert all(b < a for a, b in zip(res.norms, res.norms[1:])), res.norms


def test_exact_fpr_gradient_matches_finite_differences(tiny_prior, conds):
    """lambda * dL/dz_t from autograd agrees with a central difference of L along a random direction."""
    z_src = rnd(0).double()
    prior = tiny_prior
    z_t = D.add_noise(z_src, rnd(1).double(), prior.alpha_bar(T).double())
    prior.unet.double()
    cond = type(conds[0])(conds[0].prompt, "", conds[0].embeds.double())
    prior.dtype, old = torch.float64, prior.dtype
    try:
        def L(z):
            (eps,) = prior.eps([z], T, [cond], 7.5)
            return residual_norm(z_src, D.x0_from_eps(z, eps.double(), prior.alpha_bar(T).double()))

        res = fixed_point_regularize(prior, z_src, z_t, T, cond, guidance=7.5, iters=1, lam=1.0)
        g = z_t - res.z_t                                       # = dL/dz_t
        d = rnd(5).double()
        h = 1e-4
        with torch.no_grad():
            fd = (L(z_t + h * d) - L(z_t - h * d)) / (2 * h)
        torch.testing.assert_close((g * d).sum(), fd, rtol=1e-5, atol=1e-6)
    finally:
        prior.unet.float()
        prior.dtype = old


def test_jacobian_free_ids_runs_forward_passes_only(tiny_prior, conds):
    """The step's values are checked against explicit numbers and autograd in test_method_oracles.py."""
    before = tiny_prior.calls.snapshot()["backward"]
    run(tiny_prior, "ids", rnd(0), rnd(2), rnd(1), *conds, DistillConfig(fpr_mode="jacobian-free"))
    assert tiny_prior.calls.snapshot()["backward"] == before  # forward passes only


def test_adaptive_fpr_stops_when_the_residual_stalls(tiny_prior, conds):
    z_src = rnd(0)
    z_t = D.add_noise(z_src, rnd(1), tiny_prior.alpha_bar(T))
    full = fixed_point_regularize(tiny_prior, z_src, z_t, T, conds[0], guidance=7.5, iters=4, lam=1.0, mode="exact")
    # tolerance of 100%: no improvement is ever enough, so it stops after the second residual
    short = fixed_point_regularize(tiny_prior, z_src, z_t, T, conds[0], guidance=7.5, iters=4, lam=1.0,
                                   mode="adaptive", tol=1.0)
    assert len(short.norms) == 2 and short.norms == pytest.approx(full.norms[:2], rel=1e-5)
    assert short.updates == 1  # the second iterate had the lowest residual
    # a negative tolerance never stops early: identical to exact
    never = fixed_point_regularize(tiny_prior, z_src, z_t, T, conds[0], guidance=7.5, iters=4, lam=1.0,
                                   mode="adaptive", tol=-1.0)
    assert never.updates == 4 and torch.allclose(never.z_t, full.z_t)


def test_patch_nce_hand_computed():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    tau = 0.5
    # row 0: pos = q0.k0 = 0.6, negatives: q0.k1 = 0.8 (diag masked to -10)
    l0 = -torch.log(torch.exp(torch.tensor(0.6 / tau)) /
                    (torch.exp(torch.tensor(0.6 / tau)) + torch.exp(torch.tensor(-10 / tau)) +
                     torch.exp(torch.tensor(0.8 / tau))))
    l1 = -torch.log(torch.exp(torch.tensor(0.6 / tau)) /
                    (torch.exp(torch.tensor(0.6 / tau)) + torch.exp(torch.tensor(0.8 / tau)) +
                     torch.exp(torch.tensor(-10 / tau))))
    torch.testing.assert_close(patch_nce(q, k, tau), torch.stack([l0, l1]))


def test_token_grid_non_square():
    assert token_grid(48, (8, 6)) == (8, 6)
    assert token_grid(12, (8, 6)) == (4, 3)
    assert token_grid(4, (7, 5)) == (2, 2)  # ceil halving: 7x5 -> 4x3 -> 2x2


@torch.no_grad()
def test_cds_hooks_capture_what_an_attention_processor_sees(tiny_prior, conds):
    """Forward hooks on attn1 give exactly the attention output an explicit recording processor stores."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    layers = self_attention_layers(tiny_prior.unet)
    assert layers == ["up_blocks.0.attentions.0.transformer_blocks.0.attn1",
                      "up_blocks.0.attentions.1.transformer_blocks.0.attn1"]
    stored = {}

    class Recording(AttnProcessor2_0):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def __call__(self, attn, hidden_states, *a, **k):
            out = super().__call__(attn, hidden_states, *a, **k)
            stored[self.name] = out
            return out

    z = rnd(0)
    modules = dict(tiny_prior.unet.named_modules())
    with capture_outputs(tiny_prior.unet, layers) as feats:
        tiny_prior.eps([z], T, [conds[0]], 7.5)
    old = {n: modules[n].processor for n in layers}
    try:
        for n in layers:
            modules[n].set_processor(Recording(n))
        tiny_prior.eps([z], T, [conds[0]], 7.5)
    finally:
        for n in layers:
            modules[n].set_processor(old[n])
    for n in layers:
        assert torch.equal(feats[n], stored[n])
    assert all(not m._forward_hooks for m in modules.values())  # hooks are removed afterwards


def test_cds_adds_a_differentiable_contrastive_term(tiny_prior, conds):
    z_src = rnd(0)
    z_trg = rnd(2).requires_grad_(True)
    out = run(tiny_prior, "cds", z_src, z_trg, rnd(1), *conds)
    dds = run(tiny_prior, "dds", z_src, z_trg, rnd(1), *conds)
    # CDS runs the conditional target sample in its own (grad) call, not in DDS's batch of 4: equal up to batching
    # rounding (tests/test_cds_split.py: 2e-5 x CFG-amplified, identical in float64)
    assert float((out.grad - dds.grad).norm() / dds.grad.norm()) < 1e-4
    (g,) = torch.autograd.grad(out.aux_loss, z_trg)
    assert out.aux_loss > 0 and g.abs().sum() > 0


def test_cut_loss_is_lowest_for_identical_features():
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(1, 16, 8, generator=gen)
    cfg = DistillConfig()
    same = cut_loss(f, f.clone(), (4, 4), cfg, Sampler(torch.Generator().manual_seed(1)))
    other = cut_loss(f, torch.randn(1, 16, 8, generator=gen), (4, 4), cfg, Sampler(torch.Generator().manual_seed(1)))
    assert same < other


def test_ids_with_cut_adds_the_cut_term(tiny_prior, conds):
    z_trg = rnd(2).requires_grad_(True)
    plain = run(tiny_prior, "ids", rnd(0), z_trg, rnd(1), *conds)
    cut = run(tiny_prior, "ids", rnd(0), z_trg, rnd(1), *conds, DistillConfig(with_cut=True))
    # with_cut runs the conditional target sample in its own (grad) call: equal up to batching rounding
    assert float((plain.grad - cut.grad).norm() / plain.grad.norm()) < 1e-4
    assert plain.aux_loss is None and cut.aux_loss > 0
