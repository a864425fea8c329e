"""Tiny random-weight diffusers pipelines built from configs (no downloads): SD 1.x, SD 2.x v-prediction, SDXL.

The ``*_pipeline`` builders return diffusers pipelines (so tests can run diffusers' own denoising step as the
oracle); ``*_prior`` wrap them as an :class:`idsedit.prior.Prior`. Schedulers are DDPM with ``clip_sample=False``
(an identity ``scale_model_input``, custom ``timesteps=[t]``, and an unclipped ``pred_original_sample``).
"""

from __future__ import annotations

import copy

import torch

from conftest import TINY_MODEL

# SD 1.x/2.x schedule: scaled_linear 0.00085..0.012, 1000 steps
DDPM = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
        "clip_sample": False, "steps_offset": 1}


def _tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(TINY_MODEL / "tokenizer"))


def _clip_config(hidden_act="quick_gelu"):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=32,
                          intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=49408,
                          hidden_act=hidden_act, projection_dim=32)


def tiny_sd1_pipeline():
    """SD 1.x topology (idsedit.models_from_config 'tiny', random weights), epsilon-prediction, DDPM scheduler."""
    from diffusers import DDPMScheduler
    from idsedit.models_from_config import build_pipeline

    pipe = build_pipeline("tiny", seed=0)
    pipe.scheduler = DDPMScheduler(**DDPM, prediction_type="epsilon")
    return pipe


def tiny_sd2_v_pipeline():
    """SD 2.x topology in miniature: linear projections, per-block head dims, upcast attention, GELU text
    encoder, v-prediction."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(3)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, upcast_attention=True, cross_attention_dim=32,
        norm_num_groups=8)
    torch.manual_seed(4)
    vae = AutoencoderKL(block_out_channels=[8, 8], in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        norm_num_groups=8, sample_size=16)
    torch.manual_seed(5)
    te = CLIPTextModel(_clip_config("gelu")).eval()
    return StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=_tokenizer(), unet=unet,
                                   scheduler=DDPMScheduler(**DDPM, prediction_type="v_prediction"),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def tiny_sdxl_pipeline(scheduler: str = "ddpm"):
    """A tiny SDXL pipeline (two text encoders, pooled embeddings, time ids, force_zeros_for_empty_prompt)."""
    from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionXLPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=8)
    torch.manual_seed(1)
    vae = AutoencoderKL(block_out_channels=[8, 8], in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        norm_num_groups=8, sample_size=16)
    cfg = _clip_config("gelu")
    torch.manual_seed(2)
    te1, te2 = CLIPTextModel(cfg), CLIPTextModelWithProjection(cfg)
    tok = _tokenizer()
    sched = (DDPMScheduler(**DDPM) if scheduler == "ddpm" else
             DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1))
    return StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok,
                                     unet=unet, scheduler=sched)


def v_prediction_prior(base_prior):
    """The parity model's weights behind a v-prediction scheduler (same UNet, outputs read as v)."""
    from diffusers import DDPMScheduler
    from idsedit.prior import Prior

    pipe = copy.copy(base_prior.pipe)
    pipe.scheduler = DDPMScheduler.from_config(base_prior.pipe.scheduler.config, prediction_type="v_prediction")
    return Prior(pipe, device="cpu", dtype="fp32")


def tiny_sdxl_prior():
    """A tiny SDXL pipeline (two text encoders, pooled embeddings, time ids) with random weights, as a Prior."""
    from idsedit.prior import Prior

    return Prior(tiny_sdxl_pipeline("ddim"), device="cpu", dtype="fp32")
