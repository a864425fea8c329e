"""CDS and IDS+CUT run the conditional target branch once, with grad (batch 3 without grad + batch 1 with grad),
instead of the official batch-4 CFG call plus a separate batch-1 feature pass. Same loss and gradient:

- float64 tiny model: new and reference paths agree to ~1e-13 relative (measured 6e-14): only the order of
  floating-point operations differs (which batch a sample's forward runs in);
- float32: they differ by ~2e-5 relative on the update, exactly the amount by which the DDS update itself changes
  when its four CFG samples run in another batching (2.3e-5 measured on the same draw, below): batching noise
  amplified by CFG 7.5 and the difference of two predictions, not a change of the method. The PatchNCE term (no
  CFG) agrees to 1e-7. The official parity tests (tests/test_parity.py, 1e-4) still pass.
"""

from __future__ import annotations

import pytest
import torch

import idsedit.diffusion as D
from conftest import TINY_MODEL
from idsedit.distill import METHODS, DistillConfig, MethodSpec
from idsedit.distill.cds import (contrastive_loss, cds_two_calls, guided_pair_with_features, self_attention_layers,
                                 unconditional)
from idsedit.distill import DistillOutput
from idsedit.fpr import fixed_point_regularize
from idsedit.loop import StepDraw, distill_step
from idsedit.rng import Sampler

SRC = "a red square, a green triangle and a blue circle"
TRG = "a red square, a green triangle and a blue circle made of neon lights"
T = torch.tensor([500])


def rel(a, b):
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


@pytest.fixture(scope="module")
def prior64():
    from idsedit.prior import load_prior

    return load_prior(str(TINY_MODEL), device="cpu", dtype=torch.float64)


def ids_cut_two_calls(prior, z_src, z_trg, t, noise, cond_src, cond_trg, cfg, sampler) -> DistillOutput:
    """IDS+CUT as it ran before: FPR, then the batch-4 CFG call and a separate batch-1 feature pass."""
    ab = prior.alpha_bar(t, z_trg.ndim)
    fpr = fixed_point_regularize(prior, z_src, D.add_noise(z_src, noise, ab), t, cond_src, guidance=cfg.guidance,
                                 iters=cfg.fpr_iters, attention_backward=cfg.fpr_attention_backward)
    eps_star = D.eps_from_x0(fpr.z_t, z_src, ab)
    layers = self_attention_layers(prior.unet)
    grad, refs = guided_pair_with_features(prior, fpr.z_t, D.add_noise(z_trg.detach(), eps_star, ab), t, cond_src,
                                           cond_trg, cfg.guidance, layers)
    aux = contrastive_loss(prior, z_trg, eps_star, t, cond_trg, refs, layers, cfg, sampler)
    return DistillOutput(grad=grad, aux_loss=aux)


def step(prior, method, fn, cfg, dtype):
    """(loss, grad, aux, dloss/dz_trg) of one loop step with ``fn`` registered as ``method``, on a fixed draw."""
    g = torch.Generator().manual_seed(0)
    z_src = torch.randn(1, 4, 8, 8, generator=g).to(dtype)
    z_trg = (z_src + 0.3 * torch.randn(1, 4, 8, 8, generator=g).to(dtype)).requires_grad_(True)
    noise = torch.randn(1, 4, 8, 8, generator=g).to(dtype)
    conds = prior.encode_text(SRC), prior.encode_text(TRG)
    core = METHODS[method]
    METHODS[method] = MethodSpec(method, fn, core.summary)
    try:
        loss, out = distill_step(prior, method, z_src, z_trg, StepDraw(T, noise), *conds, cfg, Sampler.seeded(3))
        loss.backward()
    finally:
        METHODS[method] = core
    return loss.detach(), out.grad, out.aux_loss.detach(), z_trg.grad


CASES = [("cds", cds_two_calls, {}),
         ("ids", ids_cut_two_calls, {"with_cut": True, "fpr_iters": 2, "fpr_attention_backward": "fp32"})]


@pytest.mark.parametrize("guidance", [7.5, 1.0])
@pytest.mark.parametrize("method, reference, extra", CASES, ids=["cds", "ids+cut"])
def test_target_branch_once_equals_the_two_call_path_in_float64(prior64, method, reference, extra, guidance):
    cfg = DistillConfig(guidance=guidance, **extra)      # cut_layer_norm on: the 9 / n_layers scale is in both
    new = step(prior64, method, METHODS[method].fn, cfg, torch.float64)
    old = step(prior64, method, reference, cfg, torch.float64)
    assert float(new[2]) != 0.0                          # the PatchNCE term is there
    for a, b in zip(new, old):
        assert rel(a, b) < 1e-11


@pytest.mark.parametrize("method, reference, extra", CASES, ids=["cds", "ids+cut"])
def test_target_branch_once_equals_the_two_call_path_in_float32(tiny_prior, method, reference, extra):
    cfg = DistillConfig(**extra)
    new = step(tiny_prior, method, METHODS[method].fn, cfg, torch.float32)
    old = step(tiny_prior, method, reference, cfg, torch.float32)
    loss, grad, aux, zgrad = (rel(a, b) for a, b in zip(new, old))
    assert aux < 1e-6                                    # PatchNCE: fp32 rounding only
    assert grad < 1e-4 and zgrad < 1e-4 and loss < 1e-4  # the DDS term: batching noise x CFG, see below


def test_float32_difference_is_the_dds_batching_noise(tiny_prior):
    """The DDS update of ONE batch-4 call vs the same four samples in four batch-1 calls differs by the same ~2e-5
    as the new vs the reference CDS path: it is float rounding of the batching, not the split."""
    cs, ct = tiny_prior.encode_text(SRC), tiny_prior.encode_text(TRG)
    g = torch.Generator().manual_seed(0)
    z_src = torch.randn(1, 4, 8, 8, generator=g)
    z_trg = z_src + 0.3 * torch.randn(1, 4, 8, 8, generator=g)
    noise = torch.randn(1, 4, 8, 8, generator=g)
    ab = tiny_prior.alpha_bar(T)
    a, b = D.add_noise(z_src, noise, ab), D.add_noise(z_trg, noise, ab)
    with torch.no_grad():
        e_src, e_trg = tiny_prior.eps([a, b], T, [cs, ct], 7.5)
        one = lambda z, c: tiny_prior.eps([z], T, [c], 1.0)[0]
        apart = D.cfg(one(b, unconditional(ct)), one(b, ct), 7.5) - D.cfg(one(a, unconditional(cs)), one(a, cs), 7.5)
    noise_floor = rel(apart, e_trg - e_src)
    new = step(tiny_prior, "cds", METHODS["cds"].fn, DistillConfig(), torch.float32)
    old = step(tiny_prior, "cds", cds_two_calls, DistillConfig(), torch.float32)
    assert 0 < noise_floor < 1e-4
    assert rel(new[1], old[1]) < 3 * noise_floor


def test_unconditional_cond_gives_the_unconditional_prediction(tiny_prior):
    cs = tiny_prior.encode_text(SRC)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        raw = tiny_prior.model_output(z[:1], T, cs.embeds[:1])
        (u,) = tiny_prior.eps([z[:1]], T, [unconditional(cs)], 1.0)
    assert torch.equal(u, raw)
    assert unconditional(cs).pooled is None and torch.equal(unconditional(cs).embeds[1], cs.embeds[0])


@pytest.mark.parametrize("method, extra, samples", [("cds", {}, 4), ("ids", {"with_cut": True, "fpr_iters": 1}, 4 + 2)])
def test_one_step_pushes_the_conditional_target_through_once(tiny_prior, method, extra, samples):
    """CDS: 2 calls, 4 samples (was 5), 1 backward; IDS+CUT adds FPR's batch-2 forward + backward per iteration."""
    conds = tiny_prior.encode_text(SRC), tiny_prior.encode_text(TRG)
    z_src = torch.zeros(1, 4, 8, 8)
    z = z_src.clone().requires_grad_(True)
    with tiny_prior.counting() as calls:
        loss, _ = distill_step(tiny_prior, method, z_src, z, StepDraw(T, torch.ones(1, 4, 8, 8)), *conds,
                               DistillConfig(**extra), Sampler.seeded(0))
        loss.backward()
    fpr_calls = extra.get("fpr_iters", 0)
    assert (calls.forward, calls.samples) == (2 + fpr_calls, samples)
    assert calls.backward == 1 + fpr_calls
