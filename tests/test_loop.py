"""The loop seams shared by the 2D and scene loops: loss normalisation, masks, the finiteness guard, learning-rate
rules and the cooperative cancel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from idsedit.distill import METHODS, DistillConfig, DistillOutput, MethodSpec
import idsedit.edit2d as E
import idsedit.loop as L
from idsedit.edit2d import EditConfig, edit_image, invert_image
from idsedit.errors import IdseditError
from idsedit.loop import StepDraw, distill_loss, distill_step
from idsedit.rng import Sampler

T500 = torch.tensor([500])


@pytest.fixture(scope="module")
def conds(tiny_prior):
    return tiny_prior.encode_text("a red cube"), tiny_prior.encode_text("a blue cube")


# ------------------------------------------------------------------------------------------- (a) per-view loss
def test_distill_loss_hand_computed_for_one_view():
    """loss = 2000 * w * sum(z * g) / (1 * H * W): z = [[1, 2], [3, 4]], g = 0.5 everywhere, w = 2 -> 2000 * 2 *
    0.5 * 10 / 4 = 5000, and d loss / dz = 2000 * 2 * 0.5 / 4 = 500 everywhere."""
    z = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], requires_grad=True)
    loss = distill_loss(z, DistillOutput(grad=torch.full((1, 1, 2, 2), 0.5)), weight=2.0)
    loss.backward()
    assert loss.item() == 5000.0
    assert torch.equal(z.grad, torch.full((1, 1, 2, 2), 500.0))


@pytest.mark.parametrize("views", [2, 3, 5])
def test_a_batch_of_views_gives_a_shared_parameter_the_step_of_one_view(views):
    """A field rendered from B cameras into B identical latents gets the same gradient as from one view: the
    loss divides by B*H*W (official for B = 1); without the 1/B the step grows B-fold."""
    g = torch.tensor([[[[0.25, -1.0], [2.0, 0.5]]]])
    param = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], requires_grad=True)
    distill_loss(param.expand(views, -1, -1, -1), DistillOutput(grad=g.expand(views, -1, -1, -1))).backward()
    # hand-computed: 2000 / (2 * 2) * g = 500 * g
    assert torch.allclose(param.grad, torch.tensor([[[[125.0, -500.0], [1000.0, 250.0]]]]))


def test_per_view_normalisation_adds_the_aux_loss_unscaled():
    z = torch.zeros(2, 1, 2, 2, requires_grad=True)
    aux = (z * 3.0).sum()
    loss = distill_loss(z, DistillOutput(grad=torch.ones(2, 1, 2, 2), aux_loss=aux))
    loss.backward()
    assert torch.equal(z.grad, torch.full((2, 1, 2, 2), 2000.0 / 8 + 3.0))


# ------------------------------------------------------------------------------------------- (b) masks
def test_mask_gradient_is_identity_forward_and_masks_backward():
    z = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = L.mask_gradient(z, torch.tensor([1.0, 0.0, 0.5]))
    assert torch.equal(y.detach(), z.detach())
    (y * torch.tensor([4.0, 5.0, 6.0])).sum().backward()
    assert torch.equal(z.grad, torch.tensor([4.0, 0.0, 3.0]))
    assert L.mask_gradient(z, None) is z


def test_distill_step_masks_the_whole_update_of_a_rendered_latent_including_cds_aux(tiny_prior, conds):
    """z_trg computed from a parameter (as a radiance field renders it): with CDS (grad term + PatchNCE aux loss)
    the parameter's gradient is exactly zero where the mask is 0 and not zero where it is 1."""
    z_src = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    param = (z_src / 2).clone().requires_grad_(True)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :, :4] = 1.0
    loss, out = distill_step(tiny_prior, "cds", z_src, param * 2, StepDraw(T500, torch.randn_like(z_src)), *conds,
                             DistillConfig(), Sampler.seeded(0), mask=mask)
    assert out.aux_loss is not None and out.aux_loss.requires_grad
    loss.backward()
    assert torch.count_nonzero(param.grad[..., 4:]) == 0
    assert torch.count_nonzero(param.grad[..., :4]) == param.grad[..., :4].numel()


def test_cds_edit_with_a_mask_moves_nothing_outside_it(tiny_prior, conds):
    z_src = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1.0
    run = E.run_latents(tiny_prior, z_src, *conds, EditConfig(method="cds", steps=3, lr=0.1), mask=mask)
    outside = mask.expand_as(z_src) == 0
    assert torch.equal(run.latent[outside], z_src[outside])
    assert not torch.equal(run.latent[~outside], z_src[~outside])


# ------------------------------------------------------------------------------------------- (c) finiteness
@pytest.mark.parametrize("aux", [float("inf"), float("nan")])
def test_non_finite_aux_loss_is_refused(tiny_prior, conds, monkeypatch, aux):
    def bad(prior, z_src, z_trg, t, noise, cond_src, cond_trg, cfg, sampler):
        return DistillOutput(grad=torch.zeros_like(z_src), aux_loss=(z_trg * 0).sum() + aux)

    monkeypatch.setitem(METHODS, "bad-aux", MethodSpec("bad-aux", bad, "test"))
    z = torch.zeros(1, 4, 8, 8, requires_grad=True)
    with pytest.raises(IdseditError, match="bad-aux auxiliary loss became non-finite at t=500"):
        distill_step(tiny_prior, "bad-aux", z.detach(), z, StepDraw(T500, torch.zeros_like(z)), *conds,
                     DistillConfig(), Sampler())


def test_non_finite_update_is_refused(tiny_prior, conds, monkeypatch):
    def bad(prior, z_src, z_trg, t, noise, cond_src, cond_trg, cfg, sampler):
        return DistillOutput(grad=torch.full_like(z_src, float("-inf")))

    monkeypatch.setitem(METHODS, "bad-grad", MethodSpec("bad-grad", bad, "test"))
    z = torch.zeros(1, 4, 8, 8, requires_grad=True)
    with pytest.raises(IdseditError, match="bad-grad update became non-finite"):
        distill_step(tiny_prior, "bad-grad", z.detach(), z, StepDraw(T500, torch.zeros_like(z)), *conds,
                     DistillConfig(), Sampler())


# ------------------------------------------------------------------------------------------- (d) lr rules
def test_learning_rate_rule_per_parameterisation(monkeypatch):
    assert L.auto_lr("latents", (64, 64)) == 0.1                # SD 1.5 at 512x512: the official 0.1
    assert L.auto_lr("latents", (16, 16)) == 0.00625            # the mini prior: 0.1 * 256 / 4096
    assert L.auto_lr("latents", (64, 48)) == pytest.approx(0.075)
    monkeypatch.setattr(L, "LR_RULES", dict(L.LR_RULES))
    L.register_lr_rule("field", lambda n_views: 0.01 * n_views)
    assert L.auto_lr("field", n_views=3) == pytest.approx(0.03)
    with pytest.raises(IdseditError, match="no learning-rate rule for 'voxels'"):
        L.auto_lr("voxels")


# ------------------------------------------------------------------------------------------- (e) cancel
def test_run_steps_checks_should_stop_before_every_step():
    done, asked = [], []

    def stop():
        asked.append(len(done))
        return len(done) == 2

    state = L.run_steps(5, done.append, should_stop=stop)
    assert done == [0, 1] and asked == [0, 1, 2] and state.steps_done == 2 and state.cancelled
    state = L.run_steps(3, done.append)
    assert state.steps_done == 3 and not state.cancelled


def _image(seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8))


def _stop_after(n):
    calls = []

    def should_stop():
        calls.append(None)
        return len(calls) > n
    return should_stop


def test_cancelled_edit_returns_the_partial_result(tiny_prior):
    cfg = EditConfig(method="dds", steps=5, seed=3)
    partial = edit_image(tiny_prior, _image(), "a red cube", "a blue cube", cfg, progress=False,
                         should_stop=_stop_after(2))
    two = edit_image(tiny_prior, _image(), "a red cube", "a blue cube", EditConfig(method="dds", steps=2, seed=3),
                     progress=False)
    assert partial.cancelled and partial.steps_done == 2
    assert torch.equal(partial.latent, two.latent)            # exactly the first two steps of the same draws
    assert partial.unet_calls["forward"] == 2 and partial.unet_calls["forward_per_step"] == 1
    assert partial.record()["cancelled"] is True and partial.record()["steps_done"] == 2
    full = edit_image(tiny_prior, _image(), "a red cube", "a blue cube", cfg, progress=False,
                      should_stop=lambda: False)
    assert not full.cancelled and full.steps_done == 5


def test_cancelled_inversion(tiny_prior):
    cfg = EditConfig(method="dds", steps=2)
    first = invert_image(tiny_prior, _image(), "a red cube", "a blue cube", cfg, progress=False,
                         should_stop=_stop_after(1))
    assert first.cancelled and first.backward is None and first.forward.steps_done == 1 and np.isnan(first.psnr)
    second = invert_image(tiny_prior, _image(), "a red cube", "a blue cube", cfg, progress=False,
                          should_stop=_stop_after(3))
    assert second.cancelled and second.forward.steps_done == 2 and second.backward.steps_done == 1
    assert np.isfinite(second.psnr)


def test_lr_schedules_and_timestep_annealing_by_hand():
    import math

    from idsedit.loop import lr_factor, t_upper

    assert [lr_factor(i, 4) for i in range(4)] == [1.0, 1.0, 1.0, 1.0]
    assert [lr_factor(i, 4, "linear") for i in range(4)] == [1.0, 0.75, 0.5, 0.25]
    assert lr_factor(2, 4, "cosine") == pytest.approx(0.5) and lr_factor(1, 4, "cosine") == pytest.approx(
        0.5 * (1 + math.cos(math.pi / 4)))
    with pytest.raises(IdseditError, match="schedule"):
        lr_factor(0, 4, "step")
    assert [t_upper(i, 5, 949) for i in range(5)] == [949] * 5
    assert [t_upper(i, 5, 949, 349) for i in range(5)] == [949, 799, 649, 499, 349]
    assert t_upper(0, 1, 949, 349) == 949


def test_annealed_edit_draws_t_below_the_falling_bound_and_schedules_scale_the_step(tiny_prior):
    import dataclasses

    from idsedit.edit2d import EditConfig, run_latents
    from idsedit.loop import t_upper

    g = torch.Generator().manual_seed(0)
    z_src = torch.randn(1, 4, 8, 8, generator=g)
    cond = tiny_prior.encode_text("a red cube"), tiny_prior.encode_text("a blue cube")
    cfg = EditConfig(method="dds", steps=6, t_anneal_to=200)
    ts = []
    run_latents(tiny_prior, z_src, *cond, cfg, callback=lambda i, z, d, out: ts.append((i, int(d.t))))
    assert all(50 <= t < t_upper(i, 6, cfg.t_max, 200) for i, t in ts) and len(ts) == 6
    # one step: a linear or cosine schedule starts at the full lr, so step 0 is the constant schedule's
    one = dataclasses.replace(cfg, steps=1, t_anneal_to=None)
    a = run_latents(tiny_prior, z_src, *cond, one).latent
    for sched in ("linear", "cosine"):
        b = run_latents(tiny_prior, z_src, *cond, dataclasses.replace(one, lr_schedule=sched)).latent
        torch.testing.assert_close(a, b)
    # two steps: the second step of the linear schedule is half as long as the constant one's
    two = dataclasses.replace(one, steps=2)
    c, lin = (run_latents(tiny_prior, z_src, *cond, dataclasses.replace(two, lr_schedule=s)).latent
              for s in ("constant", "linear"))
    assert float((lin - a).norm()) < float((c - a).norm())
    with pytest.raises(IdseditError, match="t-anneal-to"):
        EditConfig(t_anneal_to=20)
    with pytest.raises(IdseditError, match="lr-schedule"):
        EditConfig(lr_schedule="step")
