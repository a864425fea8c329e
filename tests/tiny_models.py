"""Tiny random-weight diffusers pipelines built from configs (no downloads), for SD 2.x v-prediction and SDXL."""

from __future__ import annotations

import copy

import torch

from conftest import TINY_MODEL


def v_prediction_prior(base_prior):
    """The parity model's weights behind a v-prediction scheduler (same UNet, outputs read as v)."""
    from diffusers import DDPMScheduler
    from idsedit.prior import Prior

    pipe = copy.copy(base_prior.pipe)
    pipe.scheduler = DDPMScheduler.from_config(base_prior.pipe.scheduler.config, prediction_type="v_prediction")
    return Prior(pipe, device="cpu", dtype="fp32")


def tiny_sdxl_prior():
    """A tiny SDXL pipeline (two text encoders, pooled embeddings, time ids) with random weights."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
    from idsedit.prior import Prior

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
    cfg = CLIPTextConfig(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=32,
                         intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=49408,
                         hidden_act="gelu", projection_dim=32)
    torch.manual_seed(2)
    te1, te2 = CLIPTextModel(cfg), CLIPTextModelWithProjection(cfg)
    tok = CLIPTokenizer.from_pretrained(str(TINY_MODEL / "tokenizer"))
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok,
                                     unet=unet, scheduler=sched)
    return Prior(pipe, device="cpu", dtype="fp32")
