"""Numerics of the methods: PatchNCE in fp32 for half-precision features, exact FPR through a half-precision UNet,
CDS's per-layer normalisation, and non-finite PDS updates reaching the loop's guard."""

from __future__ import annotations

import pytest
import torch

import idsedit.diffusion as D
import idsedit.distill.cds as cds_mod
from idsedit.distill import METHODS, DistillConfig
from idsedit.distill.cds import CUT_REFERENCE_LAYERS, cut_loss, self_attention_layers
from idsedit.errors import IdseditError
from idsedit.fpr import fixed_point_regularize
from idsedit.loop import StepDraw, distill_step
from idsedit.models_from_config import build_prior, shape_config
from idsedit.rng import Sampler

T = torch.tensor([500])


def rnd(seed, shape=(1, 4, 8, 8)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


# ------------------------------------------------------------------------------------------- precision
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_patch_nce_of_half_precision_features_is_computed_in_fp32(dtype):
    """The loss of fp16/bf16 features equals the float64 loss of the same values to fp32 precision (in half
    precision the normalisation, logits / 0.07 and cross-entropy are off by ~1e-3 relative)."""
    gen = torch.Generator().manual_seed(0)
    f = (3 * torch.randn(2, 64, 32, generator=gen)).to(dtype)                 # (B, h*w, C) on an 8x8 grid
    g = (f.float() + torch.randn(2, 64, 32, generator=gen)).to(dtype).requires_grad_(True)
    cfg = DistillConfig(n_patches=48)
    loss = cut_loss(f, g, (8, 8), cfg, Sampler(torch.Generator().manual_seed(1)))
    g64 = g.detach().double().requires_grad_(True)
    ref = cut_loss(f.double(), g64, (8, 8), cfg, Sampler(torch.Generator().manual_seed(1)))
    assert loss.dtype == torch.float32
    assert rel(loss.detach(), ref.detach()) < 1e-6
    (grad,) = torch.autograd.grad(loss, g)
    (grad64,) = torch.autograd.grad(ref, g64)
    assert grad.dtype == dtype and torch.equal(grad, grad64.to(torch.float32).to(dtype))


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_exact_fpr_through_a_half_precision_unet_matches_fp32(dtype):
    """The FPR gradient (z_t - z_t*, one iteration) and z_t* after 3 iterations through an fp16/bf16 UNet agree with
    fp32 as closely as the forward eps does: the backward adds rounding, no underflow or overflow.

    Measured on this tiny model (relative error vs fp32), 8x8 latents: fp16 eps 1.0%, gradient 0.9%, z_t* 0.35%;
    bf16 eps 8.0%, gradient 6.4%, z_t* 2.4%. 32x32: fp16 eps 0.95%, gradient 0.89% (0.88% with a loss scale of
    1024, so no fp16 underflow to undo); bf16 eps 7.7%, gradient 6.2%. 64x64: gradient 0.9% / 6.3%."""
    full, half = build_prior("tiny", dtype="fp32"), build_prior("tiny", dtype=dtype)
    z_src, noise = rnd(0), rnd(1)
    res = {}
    for name, p in (("full", full), ("half", half)):
        c = p.encode_text("a red cube on a gray floor")
        z_t = D.add_noise(z_src, noise, p.alpha_bar(T))
        with torch.no_grad():
            (eps,) = p.eps([z_t], T, [c], 7.5)
        one = fixed_point_regularize(p, z_src, z_t, T, c, guidance=7.5, iters=1, lam=1.0)
        three = fixed_point_regularize(p, z_src, z_t, T, c, guidance=7.5, iters=3, lam=1.0)
        res[name] = (eps, z_t - one.z_t, three.z_t, three.norms)
    eps_err = rel(res["half"][0], res["full"][0])
    assert torch.isfinite(res["half"][1]).all() and res["half"][1].abs().min() > 0
    assert rel(res["half"][1], res["full"][1]) <= 1.5 * eps_err + 1e-3
    assert rel(res["half"][2], res["full"][2]) <= 1.5 * eps_err + 1e-3
    assert res["half"][3] == pytest.approx(res["full"][3], rel=max(eps_err, 1e-3))


# ------------------------------------------------------------------------------------------- CDS layer scaling
def _prior_with_transformer_depth(depth):
    cfg = shape_config("tiny")
    cfg["unet"]["transformer_layers_per_block"] = depth
    return build_prior(cfg)


def test_cut_weight_means_the_same_whatever_the_number_of_layers(monkeypatch):
    """With every layer contributing PatchNCE = 1, the CUT term is cut_weight * 9 on a 2-layer and a 6-layer UNet
    (SD 1.5 has 9 such layers, SDXL 36); with cut_layer_norm=False it is the official cut_weight * n_layers."""
    def unit_loss(f_src, f_trg, hw, cfg, sampler):
        return f_trg.float().sum() * 0 + 1.0            # a per-layer loss of exactly 1, still differentiable

    monkeypatch.setattr(cds_mod, "cut_loss", unit_loss)
    for prior, n in ((build_prior("tiny"), 2), (_prior_with_transformer_depth(3), 6)):
        assert len(self_attention_layers(prior.unet)) == n
        cs, ct = prior.encode_text("a red cube"), prior.encode_text("a blue cube")
        for norm, expected in ((True, 3.0 * CUT_REFERENCE_LAYERS), (False, 3.0 * n)):
            out = METHODS["cds"].fn(prior, rnd(0), rnd(2).requires_grad_(True), T, rnd(1), cs, ct,
                                    DistillConfig(cut_weight=3.0, cut_layer_norm=norm),
                                    Sampler(torch.Generator().manual_seed(0)))
            assert float(out.aux_loss.detach()) == pytest.approx(expected, rel=1e-6)


def test_cut_layer_normalisation_is_9_over_n_on_real_features():
    prior = _prior_with_transformer_depth(3)                # 6 up-block self-attention layers
    cs, ct = prior.encode_text("a red cube"), prior.encode_text("a blue cube")
    aux = {}
    for norm in (True, False):
        out = METHODS["cds"].fn(prior, rnd(0), rnd(2).requires_grad_(True), T, rnd(1), cs, ct,
                                DistillConfig(cut_layer_norm=norm), Sampler(torch.Generator().manual_seed(0)))
        aux[norm] = float(out.aux_loss.detach())
    assert aux[True] == pytest.approx(aux[False] * 9 / 6, rel=1e-6) and aux[False] > 0


# ------------------------------------------------------------------------------------------- PDS guard
class InfiniteTargetPrior:
    """The tiny prior, except that the target branch's guided eps has one +inf element."""

    def __init__(self, prior):
        self._prior = prior

    def __getattr__(self, name):
        return getattr(self._prior, name)

    def eps(self, z_ts, t, conds, guidance):
        out = self._prior.eps(z_ts, t, conds, guidance)
        out[-1] = out[-1].clone()
        out[-1][0, 0, 0, 0] = float("inf")
        return out


def test_pds_keeps_non_finite_updates_non_finite_for_the_guard(tiny_prior):
    prior = InfiniteTargetPrior(tiny_prior)
    cs, ct = tiny_prior.encode_text("a red cube"), tiny_prior.encode_text("a blue cube")
    out = METHODS["pds"].fn(prior, rnd(0), rnd(2), T, rnd(1), cs, ct, DistillConfig(),
                            Sampler(torch.Generator().manual_seed(0)))
    assert not torch.isfinite(out.grad[0, 0, 0, 0])               # not nan_to_num's finite 3.4e38
    assert torch.isfinite(out.grad.flatten()[1:]).all()
    with pytest.raises(IdseditError, match="non-finite"):
        distill_step(prior, "pds", rnd(0), rnd(2).requires_grad_(True), StepDraw(T, rnd(1)), cs, ct, DistillConfig(),
                     Sampler(torch.Generator().manual_seed(0)))
