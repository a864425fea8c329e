"""Training of the mini prior: schedules, optimizer state IO, exact resume, export to a loadable pipeline."""

import json

import numpy as np
import pytest
import torch

import idsedit.shapes as world
from idsedit.errors import IdseditError
from idsedit.mini.models import MiniModelConfig
from idsedit.mini.train import (TrainConfig, ema_decay_at, load_tensors, lr_at, min_snr_weights, optimizer_tensors,
                                parse_args, restore_optimizer, train_mini)

TINY = MiniModelConfig(image_size=32, vae_channels=(8, 16, 16), norm_groups=8, text_hidden=32, text_layers=1,
                       text_heads=2, max_length=16, unet_channels=(16, 32, 32), unet_head_dim=8)


def tiny_cfg(state, max_steps):
    return TrainConfig(state=state, minutes=10.0, max_steps=max_steps, scenes=8, val_scenes=4, captions_per_scene=2,
                       vae_batch=4, unet_batch=4, warmup_steps=2, checkpoint_minutes=100.0, model=TINY)


def quiet(msg):
    pass


def test_schedules_closed_form():
    assert lr_at(0, 1e-3, 10) == pytest.approx(1e-4)
    assert lr_at(9, 1e-3, 10) == pytest.approx(1e-3) and lr_at(500, 1e-3, 10) == pytest.approx(1e-3)
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1)
    assert ema_decay_at(10_000, 0.999) == pytest.approx(0.999)


def test_min_snr_weights_closed_form():
    ab = torch.tensor([0.9, 0.5, 0.01])  # SNR = 9, 1, 1/99
    w = min_snr_weights(ab, torch.tensor([0, 1, 2]), gamma=5.0)
    assert torch.allclose(w, torch.tensor([5.0 / 9.0, 1.0, 1.0]))
    assert torch.allclose(min_snr_weights(ab, torch.tensor([0, 2]), gamma=0.0), torch.ones(2))


def test_optimizer_moments_roundtrip():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(lin.parameters(), lr=1e-2)
    lin(torch.randn(5, 4)).pow(2).sum().backward()
    opt.step()
    saved = optimizer_tensors(opt, list(lin.parameters()))
    assert all(v.dtype == torch.bfloat16 for v in saved.values()) and len(saved) == 4
    lin2 = torch.nn.Linear(4, 3)
    lin2.load_state_dict(lin.state_dict())
    opt2 = torch.optim.AdamW(lin2.parameters(), lr=1e-2)
    restore_optimizer(opt2, list(lin2.parameters()), saved, step=1)
    for p, q in zip(lin.parameters(), lin2.parameters()):
        a, b = opt.state[p], opt2.state[q]
        assert torch.allclose(a["exp_avg"], b["exp_avg"], rtol=1e-2, atol=1e-6)
        assert float(b["step"]) == 1.0


def test_vae_resume_matches_uninterrupted(tmp_path):
    train_mini("vae", tiny_cfg(tmp_path / "a", 3), world=world, log=quiet)
    train_mini("vae", tiny_cfg(tmp_path / "b", 2), world=world, log=quiet)
    train_mini("vae", tiny_cfg(tmp_path / "b", 3), world=world, log=quiet)  # resumes at step 2
    a, b = load_tensors(tmp_path / "a" / "vae.safetensors"), load_tensors(tmp_path / "b" / "vae.safetensors")
    assert json.loads((tmp_path / "b" / "vae.json").read_text())["step"] == 3
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5  # bf16 moments: tiny, not bitwise


def test_unet_stage_exports_a_loadable_pipeline(tmp_path):
    from diffusers import StableDiffusionPipeline

    state, out = tmp_path / "state", tmp_path / "mini-sd"
    train_mini("vae", tiny_cfg(state, 2), world=world, log=quiet)
    train_mini("unet", tiny_cfg(state, 3), world=world, log=quiet)
    meta = json.loads((state / "unet.json").read_text())
    assert meta["step"] == 3 and meta["hardware"]["device"] == "cpu"
    vae_meta = json.loads((state / "vae.json").read_text())
    assert vae_meta["scaling_factor"] == pytest.approx(1.0 / vae_meta["latent_std"])
    live, ema = load_tensors(state / "unet.safetensors"), load_tensors(state / "unet_ema.safetensors")
    assert any(not torch.equal(live[k], ema[k]) for k in live)  # EMA lags the live weights
    train_mini("export", tiny_cfg(state, 3), out=out, world=world, log=quiet)
    assert (out / "tokenizer" / "vocab.json").exists() and (out / "tokenizer" / "merges.txt").exists()
    index = json.loads((out / "model_index.json").read_text())
    assert index["requires_safety_checker"] is False and index["safety_checker"] == [None, None]
    record = json.loads((out / "training.json").read_text())
    assert record["unet"]["step"] == 3 and record["vae"]["step"] == 2
    pipe = StableDiffusionPipeline.from_pretrained(str(out), local_files_only=True)
    for k, v in pipe.unet.state_dict().items():  # the exported UNet is the EMA one
        assert torch.equal(v, ema[k])
    pipe.set_progress_bar_config(disable=True)
    im = pipe("a red cube", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert im.shape == (1, 32, 32, 3) and np.isfinite(im).all()


def test_bad_values_are_user_errors(tmp_path):
    with pytest.raises(IdseditError, match="unknown stage"):
        train_mini("painting", tiny_cfg(tmp_path, 1), world=world, log=quiet)
    with pytest.raises(IdseditError, match="cond_dropout"):
        cfg = tiny_cfg(tmp_path, 1)
        cfg.cond_dropout = 1.5
        train_mini("vae", cfg, world=world, log=quiet)
    with pytest.raises(IdseditError, match="no trained VAE"):
        train_mini("unet", tiny_cfg(tmp_path / "empty", 1), world=world, log=quiet)


def test_cli_flags_map_to_config():
    stage, cfg, out = parse_args(["--stage", "unet", "--minutes", "3", "--unet-batch", "8", "--state", "x"])
    assert stage == "unet" and cfg.minutes == 3.0 and cfg.unet_batch == 8 and str(cfg.state) == "x" and out is None


def test_decoder_finetune_keeps_encoder_and_latents(tmp_path):
    from idsedit.mini.train import load_vae, read_json

    state = tmp_path / "state"
    train_mini("vae", tiny_cfg(state, 2), world=world, log=quiet)
    before = load_tensors(state / "vae.safetensors")
    train_mini("decoder", tiny_cfg(state, 2), world=world, log=quiet)
    dec = load_tensors(state / "vae_decoder.safetensors")
    assert dec and all(k.startswith(("decoder.", "post_quant_conv.")) for k in dec)
    assert any(not torch.equal(dec[k], before[k]) for k in dec)  # the decoder moved
    assert torch.equal(load_tensors(state / "vae.safetensors")["encoder.conv_in.weight"], before["encoder.conv_in.weight"])
    cfg = tiny_cfg(state, 2)
    full, enc_only = load_vae(cfg), load_vae(cfg, decoder=False)
    k = next(iter(dec))
    assert torch.equal(full.state_dict()[k], dec[k]) and torch.equal(enc_only.state_dict()[k], before[k])
    assert read_json(state / "vae_decoder.json")["step"] == 2 and read_json(state / "vae.json")["step"] == 2


def test_jittered_noise_scales_each_sample_and_channel():
    import torch

    from idsedit.errors import IdseditError
    from idsedit.mini.train import TrainConfig, check_config, jittered_noise

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(512, 4, 8, 8, generator=g)
    assert jittered_noise(noise, 0.0, g) is noise                    # off: the plain noise, nothing drawn
    out = jittered_noise(noise, 0.2, torch.Generator().manual_seed(1))
    ratio = out / noise
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio), atol=1e-4)  # one scale per (sample, channel)
    c = (ratio[:, :, 0, 0] - 1.0) / 0.2
    assert abs(float(c.mean())) < 0.1 and abs(float(c.std()) - 1.0) < 0.1
    # a channel's spatial std: 1 +- ~0.09 by chance (64 values) for plain noise, +- sqrt(0.09^2 + 0.2^2) jittered
    assert float(out.std(dim=(2, 3)).std()) == pytest.approx((1 / 128 + 0.04) ** 0.5, rel=0.15)
    with pytest.raises(IdseditError, match="unet_noise_jitter"):
        check_config(TrainConfig(unet_noise_jitter=1.5))
    # only where t >= min_t: the masked samples keep their noise, the others get the same scales as unmasked
    where = torch.arange(512) % 2 == 0
    part = jittered_noise(noise, 0.2, torch.Generator().manual_seed(1), where)
    assert torch.equal(part[~where], noise[~where]) and torch.equal(part[where], out[where])
    with pytest.raises(IdseditError, match="unet_noise_jitter_min_t"):
        check_config(TrainConfig(unet_noise_jitter_min_t=1000))


def test_offset_noise_adds_one_constant_per_sample_and_channel():
    import torch

    from idsedit.mini.train import offset_noise

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(512, 4, 8, 8, generator=g)
    assert offset_noise(noise, 0.0, g) is noise                      # off: the plain noise, nothing drawn
    out = offset_noise(noise, 0.5, torch.Generator().manual_seed(1))
    shift = out - noise
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift), atol=1e-6)  # constant over space
    c = shift[:, :, 0, 0] / 0.5
    assert abs(float(c.mean())) < 0.1 and abs(float(c.std()) - 1.0) < 0.1    # c ~ N(0, 1) per (sample, channel)
    # the spatial mean of plain noise has std 1/8 here; offset noise's has std sqrt(1/64 + 0.25)
    assert float(out.mean(dim=(2, 3)).std()) == pytest.approx((1 / 64 + 0.25) ** 0.5, rel=0.1)


def test_export_readme_names_the_noise_fine_tunes():
    from idsedit.mini.export import noise_recipe

    assert noise_recipe({}) == "" and noise_recipe({"unet_noise_offset": 0.0}) == ""
    assert noise_recipe({"unet_noise_offset": 0.1, "unet_noise_offset_start": 14550, "unet_noise_jitter": 0.15,
                         "unet_noise_jitter_start": 17200}) == \
        "; training noise: offset 0.1 from step 14550, per-channel scale jitter 0.15 from step 17200"
    assert "where t >= 300" in noise_recipe({"unet_noise_jitter": 0.1, "unet_noise_jitter_min_t": 300})
