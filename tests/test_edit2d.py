"""The image edit loop end to end on the tiny random model (64x64 -> 8x8 latents)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from idsedit.distill import DistillConfig
from idsedit.edit2d import EditConfig, edit_image, edit_latents, invert_image
from idsedit.errors import IdseditError


def image(w=64, h=64, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def conds(tiny_prior):
    return tiny_prior.encode_text("a red cube"), tiny_prior.encode_text("a blue cube")


@pytest.mark.parametrize("method", ["sds", "dds", "cds", "pds", "ids"])
def test_same_seed_is_bit_identical_and_other_seed_differs(tiny_prior, conds, method):
    z_src = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cfg = EditConfig(method=method, steps=2, seed=11)
    a = edit_latents(tiny_prior, z_src, *conds, cfg)
    b = edit_latents(tiny_prior, z_src, *conds, cfg)
    c = edit_latents(tiny_prior, z_src, *conds, EditConfig(method=method, steps=2, seed=12))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, z_src)


def test_unet_calls_per_step(tiny_prior):
    img = image()
    counts = {}
    for name, d in [("dds", DistillConfig()), ("ids", DistillConfig()), ("cds", DistillConfig()),
                    ("ids", DistillConfig(fpr_mode="jacobian-free"))]:
        r = edit_image(tiny_prior, img, "a red cube", "a blue cube", EditConfig(method=name, steps=2, distill=d),
                       progress=False)
        counts[(name, d.fpr_mode)] = (r.unet_calls["forward_per_step"], r.unet_calls["samples_per_step"],
                                      r.unet_calls["backward_per_step"])
    assert counts[("dds", "exact")] == (1, 4, 0)
    assert counts[("ids", "exact")] == (4, 3 * 2 + 4, 3)
    assert counts[("ids", "jacobian-free")] == (4, 10, 0)
    assert counts[("cds", "exact")] == (2, 4, 1)   # batch 3 without grad + the conditional target with grad


def test_non_square_image_comes_back_at_input_size(tiny_prior):
    img = image(90, 50)
    r = edit_image(tiny_prior, img, "a red cube", "a blue cube", EditConfig(method="dds", steps=2, frames_every=1),
                   progress=False)
    assert r.image.size == (90, 50) and r.latent.shape[-2:] == (4, 8)  # 64x32 for the model (multiple of 16)
    assert [s for s, _ in r.frames] == [1, 2] and all(f.size == (90, 50) for _, f in r.frames)
    rec = json.loads(json.dumps(r.record()))
    assert rec["config"]["method"] == "dds" and rec["unet_calls"]["forward"] == 2


def test_mask_freezes_the_latent_outside_and_the_pixels_outside(tiny_prior):
    img = image()
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # left half editable
    r = edit_image(tiny_prior, img, "a red cube", "a blue cube", EditConfig(method="dds", steps=3), mask=mask,
                   progress=False)
    assert torch.equal(r.latent[..., 4:], r.source_latent[..., 4:])
    assert not torch.equal(r.latent[..., :4], r.source_latent[..., :4])
    out, src = np.asarray(r.image), np.asarray(img)
    assert np.array_equal(out[:, 40:], src[:, 40:])


def test_invert_reports_reconstruction_psnr(tiny_prior):
    res = invert_image(tiny_prior, image(), "a red cube", "a blue cube", EditConfig(method="ids", steps=2),
                       progress=False)
    assert res.backward.source == "a blue cube" and res.backward.target == "a red cube"
    assert torch.equal(res.backward.source_latent, res.forward.latent)
    assert np.isfinite(res.psnr) and np.isfinite(res.latent_psnr)


def test_bad_settings_fail_with_clear_errors(tiny_prior):
    with pytest.raises(IdseditError, match="unknown method 'idz'.*cds, dds, ids, pds, sds"):
        EditConfig(method="idz")
    with pytest.raises(IdseditError, match="unknown FPR mode"):
        DistillConfig(fpr_mode="fast")
    with pytest.raises(IdseditError, match="empty"):
        edit_image(tiny_prior, image(), "", "a blue cube", EditConfig(steps=1), progress=False)


def test_sd15_equivalent_lr_keeps_the_per_element_step():
    from idsedit.edit2d import sd15_equivalent_lr

    assert sd15_equivalent_lr((64, 64)) == 0.1
    # 2000 / (H W) * lr is the per-element step size: equal for 16x16 and 64x64
    assert 2000 / (16 * 16) * sd15_equivalent_lr((16, 16)) == pytest.approx(2000 / (64 * 64) * 0.1)


def test_mask_of_another_aspect_ratio_warns_once(tiny_prior):
    mask = Image.new("L", (32, 64), 255)                        # 1:2 on a 1:1 image: stretched
    with pytest.warns(UserWarning, match=r"the mask is 32x64 but the image is 64x64") as record:
        edit_image(tiny_prior, image(), "a red cube", "a blue cube", EditConfig(method="dds", steps=1), mask=mask,
                   progress=False)
    assert len([w for w in record if "mask" in str(w.message)]) == 1
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")                          # same ratio at another size: no warning
        edit_image(tiny_prior, image(), "a red cube", "a blue cube", EditConfig(method="dds", steps=1),
                   mask=Image.new("L", (32, 32), 255), progress=False)
