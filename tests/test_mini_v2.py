"""Mini prior v2 training pieces: multi-view world, cosine VAE schedule, held-out denoising log, snapshots."""

import csv
import json
import math
import shutil
from types import SimpleNamespace

import pytest
import torch

from idsedit.errors import IdseditError
from idsedit.mini import snapshot
from idsedit.mini.data import load_world
from idsedit.mini.models import MiniModelConfig, build_train_scheduler
from idsedit.mini.train import T_BUCKETS, TrainConfig, heldout_loss, load_tensors, lr_at, read_json, train_mini

TINY = MiniModelConfig(image_size=32, vae_channels=(8, 16, 16), norm_groups=8, text_hidden=32, text_layers=1,
                       text_heads=2, max_length=16, unet_channels=(16, 32, 32), unet_head_dim=8)


def cfg_v2(state, max_steps, **kw):
    return TrainConfig(state=state, minutes=10.0, max_steps=max_steps, scenes=8, val_scenes=4, captions_per_scene=2,
                       vae_batch=4, unet_batch=4, warmup_steps=2, checkpoint_minutes=100.0, model=TINY,
                       world="multiview", heldout_every=2, heldout_draws=4, vae_decay_steps=4, **kw)


def quiet(msg):
    pass


def test_cosine_lr_closed_form():
    assert lr_at(0, 1.0, 1, decay_steps=10, min_frac=0.1) == pytest.approx(1.0)
    assert lr_at(5, 1.0, 1, decay_steps=10, min_frac=0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(10, 1.0, 1, decay_steps=10, min_frac=0.1) == pytest.approx(0.1)
    assert lr_at(50, 1.0, 1, decay_steps=10, min_frac=0.1) == pytest.approx(0.1)
    assert lr_at(1, 2.0, 4, decay_steps=8, min_frac=0.0) == pytest.approx(2.0 * 0.5 * 0.5 * (1 + math.cos(math.pi / 8)))


def test_load_world_names():
    w = load_world("multiview", default_share=0.5)
    assert w.default_share == 0.5 and "scene" in w.VOCABULARY
    assert load_world("shapes").VOCABULARY == load_world().VOCABULARY
    with pytest.raises(IdseditError, match="unknown training world"):
        load_world("mars")


class _Fixed(torch.nn.Module):
    """A 'UNet' whose eps prediction is a fixed function of the true noise (set before the call)."""

    def __init__(self, f):
        super().__init__()
        self.f, self.noise = f, None

    def forward(self, z_t, t, h):
        return SimpleNamespace(sample=self.f(self.noise[: len(z_t)]))


def test_heldout_loss_hand_values():
    sched = build_train_scheduler()
    ab = sched.alphas_cumprod.float()
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([10, 150, 400, 650, 900])
    hs = {"z0": torch.randn(5, 4, 2, 2, generator=g), "noise": torch.randn(5, 4, 2, 2, generator=g), "t": t,
          "ids": torch.zeros(5, 3, dtype=torch.long)}
    te = lambda ids: SimpleNamespace(last_hidden_state=torch.zeros(len(ids), 3, 2))  # noqa: E731
    exact = _Fixed(lambda n: n)
    exact.noise = hs["noise"]
    out = heldout_loss(te, exact, hs, ab, 5.0)
    assert out["eps_mse"] == pytest.approx(0.0, abs=1e-12) and out["x0_err_0_100"] == pytest.approx(0.0, abs=1e-5)
    zero = _Fixed(lambda n: torch.zeros_like(n))
    zero.noise = hs["noise"]
    out = heldout_loss(te, zero, hs, ab, 5.0)
    n2 = hs["noise"].pow(2).mean(dim=(1, 2, 3))
    assert out["eps_mse"] == pytest.approx(float(n2.mean()), rel=1e-6)
    for i, (lo, hi) in enumerate(zip(T_BUCKETS, T_BUCKETS[1:])):  # one problem per bucket
        a = ab[t[i]]
        assert out[f"eps_mse_{lo}_{hi}"] == pytest.approx(float(n2[i]), rel=1e-6)
        # z0_hat = z_t / sqrt(ab) -> error sqrt(1 - ab) / sqrt(ab) * rms(noise)
        assert out[f"x0_err_{lo}_{hi}"] == pytest.approx(float((1 - a).sqrt() / a.sqrt() * n2[i].sqrt()), rel=1e-4)
    snr = ab[t] / (1 - ab[t])
    w = snr.clamp(max=5.0) / snr
    assert out["loss"] == pytest.approx(float((w * n2).mean()), rel=1e-6)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    state = tmp_path_factory.mktemp("v2") / "state"
    train_mini("vae", cfg_v2(state, 4), log=quiet)
    train_mini("unet", cfg_v2(state, 4), log=quiet)
    return state


def test_multiview_state_logs_heldout_curve(trained):
    cfg = read_json(trained / "config.json")
    assert cfg["world"] == "multiview" and cfg["vae_decay_steps"] == 4
    vocab = json.loads((trained / "tokenizer" / "vocab.json").read_text())
    assert "scene</w>" in vocab and "with</w>" in vocab
    vae = read_json(trained / "vae.json")
    assert vae["step"] == 4 and "val_psnr" in vae["history"][-1]
    rows = list(csv.DictReader(open(trained / "heldout.csv")))
    assert [int(r["step"]) for r in rows] == [0, 2, 4]
    for r in rows:
        assert all(math.isfinite(float(r[f"x0_err_{lo}_{hi}"])) for lo, hi in zip(T_BUCKETS, T_BUCKETS[1:]))
        assert float(r["eps_mse"]) > 0
    # every weight file carries its step
    assert {snapshot.file_step(trained / f) for f in snapshot.STAGE_FILES["unet"][1]} == {4}
    assert train_mini("vae", cfg_v2(trained, 4), log=quiet)["vae"]["step"] == 4  # done: no-op


def test_snapshot_restore_resume(trained, tmp_path):
    state = tmp_path / "state"
    shutil.copytree(trained, state)
    rec = snapshot.make(state, live="bf16", ema="fp32", log=quiet)
    assert rec["stages"]["unet"]["step"] == 4 and rec["stages"]["vae"]["step"] == 4
    assert not (state / "snapshot" / "unet_opt.safetensors").exists()
    # a fresh clone: only the committed part (config, tokenizer, snapshot) is there
    clone = tmp_path / "clone"
    clone.mkdir()
    for keep in ("config.json", "tokenizer", "snapshot"):
        src = state / keep
        (shutil.copytree if src.is_dir() else shutil.copyfile)(src, clone / keep)
    assert snapshot.restore(clone, log=quiet) == {"vae": 4, "unet": 4}
    assert snapshot.restore(clone, log=quiet) == {}  # idempotent
    ema_a, ema_b = (load_tensors(s / "unet_ema.safetensors") for s in (state, clone))
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)  # fp32: exact
    live_a, live_b = (load_tensors(s / "unet.safetensors") for s in (state, clone))
    assert all(live_b[k].dtype == torch.float32 for k in live_b)
    assert all(torch.allclose(live_a[k], live_b[k], rtol=1e-2, atol=1e-6) for k in live_a)  # bf16 rounding
    assert torch.equal(load_tensors(state / "vae.safetensors")["encoder.conv_in.weight"],
                       load_tensors(clone / "vae.safetensors")["encoder.conv_in.weight"])
    assert not (clone / "unet_opt.safetensors").exists()
    meta = train_mini("unet", cfg_v2(clone, 6), log=quiet)["unet"]
    assert meta["step"] == 6 and meta["fresh_moments_at"] == [4]
    rows = list(csv.DictReader(open(clone / "heldout.csv")))
    assert [int(r["step"]) for r in rows] == [0, 2, 4, 6]


def test_snapshot_refuses_an_inconsistent_checkpoint(trained, tmp_path):
    state = tmp_path / "state"
    shutil.copytree(trained, state)
    meta = read_json(state / "unet.json")
    meta["step"] = 5  # as if a new json landed but not its weights
    (state / "unet.json").write_text(json.dumps(meta))
    with pytest.raises(IdseditError, match="consistent unet checkpoint"):
        snapshot.make(state, tries=2, wait_s=0.0, log=quiet)
    assert not (state / "snapshot").exists() or not (state / "snapshot" / "unet.json").exists()


def test_recaption_replays_the_scene_draws(tmp_path):
    from idsedit.mini.data import SceneCache, load_scene_cache, recaption, render_scenes, save_scene_cache

    w = load_world("multiview")
    cache = render_scenes(w, 6, seed=3, size=16, n_captions=2, chunk=4)
    assert cache.caption_version == 2 and cache.captions.shape == (6, 3)
    save_scene_cache(tmp_path / "c.npz", cache)
    assert load_scene_cache(tmp_path / "c.npz").caption_version == 2
    stale = SceneCache(cache.images, cache.captions.copy(), 1)
    stale.captions[:] = "a cube"
    fixed = recaption(stale, w, seed=3, n_captions=2, chunk=4)
    assert fixed.caption_version == 2 and (fixed.captions == cache.captions).all()
    with pytest.raises(IdseditError, match="does not match the scene sampler"):
        recaption(stale, w, seed=4, n_captions=2, chunk=4)


def test_fp16_export_loads_as_fp32(trained, tmp_path):
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    out = tmp_path / "mini-sd"
    train_mini("export", cfg_v2(trained, 4), out=out, log=quiet, export_fp16=True)
    files = sorted(out.glob("*/*.safetensors"))
    assert len(files) == 3 and all(v.dtype == torch.float16 for f in files for v in load_file(str(f)).values())
    assert json.loads((out / "training.json").read_text())["storage_dtype"] == "float16"
    pipe = StableDiffusionPipeline.from_pretrained(str(out), local_files_only=True)
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == torch.float32
    ema = load_tensors(trained / "unet_ema.safetensors")
    for k, v in pipe.unet.state_dict().items():
        assert torch.equal(v, ema[k].half().float())
    # ... and through idsedit's own loader (safetensors only, offline): fp32 modules on CPU, the v2 vocabulary
    from idsedit import load_prior

    prior = load_prior(out, device="cpu")
    assert prior.device.type == "cpu" and prior.dtype == torch.float32
    assert prior.unet.dtype == prior.vae.dtype == prior.pipe.text_encoder.dtype == torch.float32
    assert torch.equal(prior.unet.state_dict()["conv_in.weight"], ema["conv_in.weight"].half().float())
    assert "scene</w>" in prior.pipe.tokenizer.get_vocab()


def test_lr_points_polyline():
    from idsedit.errors import IdseditError
    from idsedit.mini.train import lr_points_factor, parse_lr_points

    pts = parse_lr_points("100:0.1,200:0.5,400:0.5,500:0.05")
    assert pts == [(100, 0.1), (200, 0.5), (400, 0.5), (500, 0.05)] and parse_lr_points(" ") == []
    assert lr_points_factor(99, pts) is None and lr_points_factor(5, []) is None
    assert lr_points_factor(100, pts) == pytest.approx(0.1) and lr_points_factor(150, pts) == pytest.approx(0.3)
    assert lr_points_factor(300, pts) == pytest.approx(0.5) and lr_points_factor(450, pts) == pytest.approx(0.275)
    assert lr_points_factor(500, pts) == pytest.approx(0.05) == lr_points_factor(9999, pts)
    for bad in ("100:0.1,100:0.2", "1:-1", "a:b", "100"):
        with pytest.raises(IdseditError):
            parse_lr_points(bad)


def test_cooldown_factor_closed_form():
    from idsedit.mini.train import cooldown_factor

    assert cooldown_factor(500, 0, 100, 0.1) == 1.0 and cooldown_factor(99, 100, 100, 0.1) == 1.0
    assert cooldown_factor(150, 100, 100, 0.1) == pytest.approx(0.55)
    assert cooldown_factor(200, 100, 100, 0.1) == pytest.approx(0.1) == cooldown_factor(10_000, 100, 100, 0.1)


def test_unet_resume_with_heldout_log_matches_uninterrupted(trained, tmp_path):
    """Held-out evaluations draw from their own generators: 4 -> 6 in one call equals 4 -> 5 -> 6 (up to the bf16
    storage of the AdamW moments at the checkpoint)."""
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(trained, a)
    shutil.copytree(trained, b)
    train_mini("unet", cfg_v2(a, 6), log=quiet)
    train_mini("unet", cfg_v2(b, 5), log=quiet)
    train_mini("unet", cfg_v2(b, 6), log=quiet)
    ua, ub = load_tensors(a / "unet.safetensors"), load_tensors(b / "unet.safetensors")
    assert max((ua[k] - ub[k]).abs().max().item() for k in ua) < 1e-4
    ra, rb = (list(csv.DictReader(open(s / "heldout.csv"))) for s in (a, b))
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == ["0", "2", "4", "6"]
    assert float(ra[-1]["loss"]) == pytest.approx(float(rb[-1]["loss"]), rel=1e-3)


def test_decoder_finetune_on_a_v2_state(trained, tmp_path):
    state = tmp_path / "state"
    shutil.copytree(trained, state)
    meta = train_mini("decoder", cfg_v2(state, 2), log=quiet)["decoder"]
    assert meta["step"] == 2 and "val_psnr" in meta
    dec = load_tensors(state / "vae_decoder.safetensors")
    assert dec and all(k.startswith(("decoder.", "post_quant_conv.")) for k in dec)
    assert snapshot.file_step(state / "vae_decoder.safetensors") == 2


def test_decoder_schedule_from_config_and_resume_guard(trained, tmp_path):
    """decoder_lr / decoder_warmup_steps / decoder_decay_steps of config.json set the decoder fine-tune's schedule,
    recorded in vae_decoder.json; resuming it under another schedule is refused (it would undo the annealing)."""
    from idsedit.mini.train import decoder_schedule

    state = tmp_path / "state"
    shutil.copytree(trained, state)
    conf = json.loads((state / "config.json").read_text())
    assert (conf["decoder_lr"], conf["decoder_warmup_steps"]) == (0.0, 0)  # new fields default to the VAE's values
    assert decoder_schedule(cfg_v2(state, 2)) == (cfg_v2(state, 2).vae_lr, 2, 4, 0.05)
    conf.update(decoder_lr=3e-4, decoder_warmup_steps=1, decoder_decay_steps=3)
    (state / "config.json").write_text(json.dumps(conf))
    meta = train_mini("decoder", cfg_v2(state, 2), log=quiet)["decoder"]
    assert meta["step"] == 2 and meta["lr_schedule"] == [3e-4, 1, 3, 0.05]
    assert read_json(state / "vae_decoder.json")["lr_schedule"] == [3e-4, 1, 3, 0.05]
    assert train_mini("decoder", cfg_v2(state, 3), log=quiet)["decoder"]["step"] == 3  # same schedule: resumes
    conf["decoder_lr"] = 0.0
    (state / "config.json").write_text(json.dumps(conf))
    with pytest.raises(IdseditError, match="decoder schedule"):
        train_mini("decoder", cfg_v2(state, 4), log=quiet)
    assert read_json(state / "vae_decoder.json")["step"] == 3  # nothing written


def test_deepen_vae_is_the_identity_and_trainable():
    """deepen_vae adds resnets whose last convolution is zero: same latents, same decodes; the added decoder resnets
    get gradients (their first convolution is random), the encoder's convolutions are zero."""
    from idsedit.mini.models import build_vae, deepen_vae

    torch.manual_seed(0)
    vae = build_vae(TINY).eval()
    deep = deepen_vae(vae, 2).eval()
    added = [k for k in deep.state_dict() if k not in vae.state_dict()]
    assert deep.config.layers_per_block == 2 and added
    assert any(k.startswith("decoder.") and ".resnets.2." in k for k in added)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z, z2 = vae.encode(x).latent_dist.mean, deep.encode(x).latent_dist.mean
        assert torch.equal(z, z2) and torch.equal(vae.decode(z).sample, deep.decode(z).sample)
    assert all(not deep.state_dict()[k].any() for k in added if k.startswith("encoder.") and ".conv" in k)
    deep.decode(z).sample.square().mean().backward()
    grads = dict(deep.named_parameters())
    assert grads["decoder.up_blocks.2.resnets.2.conv2.weight"].grad.abs().sum() > 0
    assert torch.equal(deepen_vae(vae, 2, seed=3).state_dict()[added[-1]], deepen_vae(vae, 2, seed=3).state_dict()[added[-1]])
    with pytest.raises(ValueError, match="cannot deepen"):
        deepen_vae(deep, 1)


def test_decoder_stage_deepens_then_resumes_and_exports(trained, tmp_path):
    """decoder_layers_per_block above the state's decoder: the stage grows the current fine-tuned decoder (a new
    fine-tune from step 0, recording where it grew from), later calls resume it, load_vae and the export build the
    deeper VAE, and the latents (what the UNet was trained on) stay bit-identical."""
    from diffusers import AutoencoderKL

    from idsedit.mini.export import export_pipeline
    from idsedit.mini.train import decoder_layers, init_state, load_vae

    state = tmp_path / "state"
    shutil.copytree(trained, state)
    train_mini("decoder", cfg_v2(state, 2), log=quiet)
    conf = json.loads((state / "config.json").read_text())
    conf.update(decoder_layers_per_block=2, decoder_lr=3e-4, decoder_warmup_steps=1, decoder_decay_steps=3)
    (state / "config.json").write_text(json.dumps(conf))
    cfg = init_state(cfg_v2(state, 2))
    before = load_vae(cfg)
    meta = train_mini("decoder", cfg_v2(state, 2), log=quiet)["decoder"]
    assert meta["step"] == 2 and meta["layers_per_block"] == 2 and meta["grown_from"]["step"] == 2
    assert meta["grown_from"]["layers_per_block"] == 1 and meta["lr_schedule"] == [3e-4, 1, 3, 0.05]
    assert decoder_layers(cfg) == 2
    deep, enc_only = load_vae(cfg), load_vae(cfg, decoder=False)
    assert deep.config.layers_per_block == 2 and enc_only.config.layers_per_block == 1
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = before.encode(x).latent_dist.mean
        assert torch.equal(z, deep.encode(x).latent_dist.mean) and torch.equal(z, enc_only.encode(x).latent_dist.mean)
        assert not torch.equal(before.decode(z).sample, deep.decode(z).sample)  # the deeper decoder trained
    assert train_mini("decoder", cfg_v2(state, 3), log=quiet)["decoder"]["step"] == 3  # resumes, no second growth
    assert read_json(state / "vae_decoder.json")["grown_from"]["step"] == 2
    out = tmp_path / "export"
    export_pipeline(state, out)
    loaded = AutoencoderKL.from_pretrained(out / "vae")
    assert loaded.config.layers_per_block == 2
    record = json.loads((out / "training.json").read_text())["vae_decoder_finetune"]
    assert record["layers_per_block"] == 2 and record["step"] == 3 and record["grown_from"]["step"] == 2
    assert "decoder-only fine-tune 2 steps" in (out / "README.md").read_text()
    assert "then decoder deepened to 2 resnets per block and fine-tuned 3 steps" in (out / "README.md").read_text()
    with torch.no_grad():
        assert torch.allclose(loaded.encode(x).latent_dist.mean, z, atol=1e-6)
