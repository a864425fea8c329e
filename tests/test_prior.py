"""Prior: batched CFG, eps/v conversions, SDXL extras, counters, prompt checks, model-folder validation."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from diffusers import DDPMScheduler

import idsedit.diffusion as D
from idsedit.errors import IdseditError, ModelLoadError
from idsedit.prior import check_model_folder, load_prior
from tiny_models import tiny_sdxl_prior, v_prediction_prior

T = torch.tensor([420])


def latents(seed, shape=(1, 4, 8, 8)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_batched_cfg_equals_separate_calls(tiny_prior):
    cs, ct = tiny_prior.encode_text("a red cube"), tiny_prior.encode_text("a blue cube")
    za, zb = latents(0), latents(1)
    batched = tiny_prior.eps([za, zb], T, [cs, ct], 7.5)
    for z, c, e in zip((za, zb), (cs, ct), batched):
        u = tiny_prior.model_output(z, T, c.embeds[:1])
        k = tiny_prior.model_output(z, T, c.embeds[1:])
        # batched vs separate matmuls differ by float32 rounding, which CFG scales by 8.5 (2 elements of 256 at
        # 1.3e-5 on 2026-11-30's set-up)
        torch.testing.assert_close(e, u + 7.5 * (k - u), rtol=1e-4, atol=5e-5)


@torch.no_grad()
def test_guidance_one_runs_only_the_conditional_half(tiny_prior):
    c = tiny_prior.encode_text("a red cube")
    before = tiny_prior.calls.snapshot()
    (e,) = tiny_prior.eps([latents(0)], T, [c], 1.0)
    after = tiny_prior.calls.snapshot()
    assert after["samples"] - before["samples"] == 1
    torch.testing.assert_close(e, tiny_prior.model_output(latents(0), T, c.embeds[1:]))


def test_counts_forward_samples_and_backward(tiny_prior):
    c = tiny_prior.encode_text("a red cube")
    before = tiny_prior.calls.snapshot()
    z = latents(0).requires_grad_(True)
    (e,) = tiny_prior.eps([z], T, [c], 7.5)
    e.sum().backward()
    after = tiny_prior.calls.snapshot()
    assert (after["forward"] - before["forward"], after["samples"] - before["samples"],
            after["backward"] - before["backward"]) == (1, 2, 1)


def test_text_encoding_is_cached(tiny_prior):
    assert tiny_prior.encode_text("a green cone") is tiny_prior.encode_text("a green cone")


@torch.no_grad()
def test_v_prediction_and_epsilon_paths_agree(tiny_prior):
    """A v-prediction model's guided eps, checked with diffusers' DDPMScheduler as the oracle: the scheduler's x0 from
    the guided v equals Tweedie's x0 from eps, and its get_velocity(x0, eps, t) gives back the guided v."""
    vp = v_prediction_prior(tiny_prior)
    sched = DDPMScheduler.from_config(vp.pipe.scheduler.config, clip_sample=False, thresholding=False)
    c = vp.encode_text("a red cube")
    z_t = latents(3)
    ab = vp.alpha_bar(T)
    raw_u = vp.model_output(z_t, T, c.embeds[:1])
    raw_c = vp.model_output(z_t, T, c.embeds[1:])
    (eps,) = vp.eps([z_t], T, [c], 7.5)
    v = raw_u + 7.5 * (raw_c - raw_u)  # CFG is affine, so guiding v then converting equals converting then guiding
    x0 = sched.step(v, int(T), z_t).pred_original_sample
    torch.testing.assert_close(D.x0_from_eps(z_t, eps, ab), x0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sched.get_velocity(x0, eps, T), v, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_sdxl_pooled_embeddings_time_ids_and_batching():
    p = tiny_sdxl_prior()
    assert p.is_sdxl
    cs, ct = p.encode_text("a red cube"), p.encode_text("a blue cube")
    assert cs.pooled.shape == (2, 32) and cs.embeds.shape == (2, 77, 64)
    za, zb = latents(0), latents(1)
    ea, eb = p.eps([za, zb], T, [cs, ct], 7.5)
    (ea1,) = p.eps([za], T, [cs], 7.5)
    (eb1,) = p.eps([zb], T, [ct], 7.5)
    torch.testing.assert_close(ea, ea1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(eb, eb1, rtol=1e-5, atol=1e-5)
    x = torch.rand(1, 3, 32, 32)
    assert p.encode(x).shape == (1, 4, 16, 16) and p.decode(p.encode(x)).shape == (1, 3, 32, 32)


def test_prompt_checks(tiny_prior):
    with pytest.raises(IdseditError, match="empty"):
        tiny_prior.check_prompt("   ", "target prompt")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        tiny_prior.check_prompt(" ".join(["cube"] * 100))
    assert any("truncated" in str(x.message) for x in w)


def test_vae_scaling_round_trip(tiny_prior):
    x = torch.rand(1, 3, 64, 64)
    z = tiny_prior.encode(x)
    assert z.shape == (1, 4, 8, 8)
    raw = tiny_prior.vae.encode(x * 2 - 1).latent_dist.mean
    torch.testing.assert_close(z, raw * tiny_prior.scaling_factor)


def test_model_folder_validation(tmp_path):
    from conftest import TINY_MODEL

    with pytest.raises(ModelLoadError, match="does not exist"):
        load_prior(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="model_index.json is missing"):
        load_prior(str(tmp_path / "empty"))
    pickled = tmp_path / "pickled"
    shutil.copytree(TINY_MODEL, pickled)
    st = pickled / "unet" / "diffusion_pytorch_model.safetensors"
    st.rename(pickled / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pickle"):
        check_model_folder(pickled)
    check_model_folder(pickled, allow_pickle=True)  # opt-in accepted at the folder check
    corrupt = tmp_path / "corrupt"
    shutil.copytree(TINY_MODEL, corrupt)
    w = corrupt / "unet" / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="could not load"):
        load_prior(str(corrupt))
    with pytest.raises(ModelLoadError, match="is a file"):
        load_prior(str(TINY_MODEL / "model_index.json"))


def test_bad_devices_are_one_line_errors_in_the_api_too():
    from conftest import TINY_MODEL

    with pytest.raises(IdseditError, match="unknown --device 'foo'"):
        load_prior(str(TINY_MODEL), device="foo")
    if not torch.cuda.is_available():
        with pytest.raises(IdseditError, match="no CUDA GPU"):
            load_prior(str(TINY_MODEL), device="cuda")


def test_unreachable_hub_id_error_is_whole_sentences(monkeypatch):
    import diffusers

    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them in "
                      "the cached files. Check your internet connection or see how to run the library in offline "
                      "mode at 'https://huggingface.co/docs/diffusers/installation#offline-mode'.")

    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", offline)
    with pytest.raises(ModelLoadError) as e:
        load_prior("someorg/some-model")
    msg = str(e.value)
    assert "not a local folder" in msg and msg.count("\n") == 0
    assert "couldn't find them in the cached files." in msg and "Check your" not in msg
