"""The bundled mini prior folder (src/idsedit/assets/mini-sd): loads offline as a StableDiffusionPipeline."""

import json

import pytest
import torch

from idsedit.mini import BUNDLED_DIR
from idsedit.mini.tokenizer import EOW, split_words

# No skip when the folder is missing: the bundled prior is part of the package, so a broken export must fail here
# (tests/test_assets.py checks that these tests fail, not skip, without it).


@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableDiffusionPipeline

    p = StableDiffusionPipeline.from_pretrained(str(BUNDLED_DIR), local_files_only=True)
    p.set_progress_bar_config(disable=True)
    return p


def test_folder_is_small_safetensors_without_safety_checker():
    files = [f for f in BUNDLED_DIR.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) < 30 * 2**20
    assert not [f for f in files if f.suffix in (".bin", ".pt", ".ckpt", ".pkl")]
    index = json.loads((BUNDLED_DIR / "model_index.json").read_text())
    assert index["requires_safety_checker"] is False and index["safety_checker"] == [None, None]
    assert (BUNDLED_DIR / "tokenizer" / "vocab.json").exists() and (BUNDLED_DIR / "tokenizer" / "merges.txt").exists()


def test_scheduler_is_sd_1x(pipe):
    c = pipe.scheduler.config
    assert (c.num_train_timesteps, c.beta_schedule, c.prediction_type, c.steps_offset) == (
        1000, "scaled_linear", "epsilon", 1)
    assert (c.beta_start, c.beta_end) == (0.00085, 0.012)


def test_tokenizer_matches_world_and_text_encoder(pipe):
    from idsedit.shapes import VOCABULARY

    tok, te = pipe.tokenizer, pipe.text_encoder
    assert tok.model_max_length == te.config.max_position_embeddings
    assert len(tok) == te.config.vocab_size and tok.pad_token_id == tok.eos_token_id == te.config.eos_token_id
    for word in VOCABULARY:
        for piece in split_words(word):
            assert tok.convert_ids_to_tokens(tok(piece, add_special_tokens=False).input_ids) == [piece + EOW]


def test_shapes_and_scaling(pipe):
    from idsedit.shapes import render_batch, sample_scene
    import numpy as np

    assert 0.1 < pipe.vae.config.scaling_factor < 10 and pipe.vae.config.scaling_factor != 1.0
    x = torch.from_numpy(render_batch([sample_scene(np.random.default_rng(0))], size=64)).permute(0, 3, 1, 2) * 2 - 1
    with torch.no_grad():
        z = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor  # (1, 4, 16, 16)
        ids = pipe.tokenizer(["a red cube", ""], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             return_tensors="pt").input_ids
        h = pipe.text_encoder(ids)[0]  # (2, L, hidden)
        eps = pipe.unet(z.repeat(2, 1, 1, 1), torch.tensor([500, 500]), h).sample
        rec = pipe.vae.decode(z / pipe.vae.config.scaling_factor).sample
    assert z.shape == (1, 4, 16, 16) and eps.shape == (2, 4, 16, 16) and rec.shape == x.shape
    assert h.shape[-1] == pipe.unet.config.cross_attention_dim
    assert not torch.allclose(eps[0], eps[1], atol=1e-4)  # the caption changes the prediction
    assert (rec - x).pow(2).mean() < 0.01  # reconstruction of a world render: PSNR above ~26 dB on [-1, 1]


def test_pipeline_generates(pipe):
    im = pipe("a red cube", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert im.shape == (1, 64, 64, 3) and float(im.min()) >= 0.0 and float(im.max()) <= 1.0
