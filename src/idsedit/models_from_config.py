"""Random-weight Stable-Diffusion pipelines built in memory from configs (benchmarks and tests, no download).

Shapes (``SHAPES``):

- ``tiny``   : the parity model's topology (UNet 32/64, text encoder 32 x 2 layers); a 512x512 image -> 64x64 latent.
- ``medium`` : the SD-v1 UNet topology with reduced widths (64/128/256/256), the SD-v1 text encoder (768 x 12).
- ``sd15``   : the real Stable Diffusion 1.5 UNet / VAE / text-encoder configs (860M + 84M + 123M parameters).

``tiny`` and ``medium`` are copied from the team's ``bench/reference-configs.json`` (a test keeps them equal);
seeds follow it: ``torch.manual_seed(s)`` before the UNet, ``s + 1`` before the VAE, ``s + 2`` before the text
encoder. The scheduler is SD v1's (scaled_linear 0.00085..0.012, 1000 steps).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from .errors import IdseditError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TOKENIZER = REPO_ROOT / "tests" / "fixtures" / "parity" / "model" / "tokenizer"

_DOWN4 = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
_UP4 = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
_VAE_DOWN = ["DownEncoderBlock2D"] * 4
_VAE_UP = ["UpDecoderBlock2D"] * 4

SHAPES: dict[str, dict] = {
    "tiny": {
        "unet": {"sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
                 "block_out_channels": [32, 64],
                 "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
                 "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
                 "cross_attention_dim": 32, "attention_head_dim": 8, "norm_num_groups": 32},
        "vae": {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1,
                "block_out_channels": [8, 8, 8, 8], "norm_num_groups": 8,
                "down_block_types": _VAE_DOWN, "up_block_types": _VAE_UP, "sample_size": 64},
        "text": {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4},
    },
    "medium": {
        "unet": {"sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
                 "block_out_channels": [64, 128, 256, 256],
                 "down_block_types": _DOWN4, "up_block_types": _UP4,
                 "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32},
        "vae": {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1,
                "block_out_channels": [32, 64, 128, 128], "norm_num_groups": 32,
                "down_block_types": _VAE_DOWN, "up_block_types": _VAE_UP, "sample_size": 512},
        "text": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12},
    },
    # runwayml/stable-diffusion-v1-5: unet/config.json, vae/config.json, text_encoder/config.json (CLIP ViT-L/14)
    "sd15": {
        "unet": {"sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
                 "block_out_channels": [320, 640, 1280, 1280],
                 "down_block_types": _DOWN4, "up_block_types": _UP4,
                 "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32,
                 "act_fn": "silu", "center_input_sample": False, "downsample_padding": 1, "flip_sin_to_cos": True,
                 "freq_shift": 0, "mid_block_scale_factor": 1, "norm_eps": 1e-5},
        "vae": {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
                "block_out_channels": [128, 256, 512, 512], "norm_num_groups": 32, "act_fn": "silu",
                "down_block_types": _VAE_DOWN, "up_block_types": _VAE_UP, "sample_size": 512,
                "scaling_factor": 0.18215},
        "text": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12},
    },
}

# CLIPTextConfig fields shared by every shape (reference-configs.json, "about")
TEXT_COMMON = {"vocab_size": 49408, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
               "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407}

# SD v1 scheduler (the parity model's scheduler_config.json)
SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
             "prediction_type": "epsilon", "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1}


def shape_config(shape: str) -> dict:
    """A deep copy of one shape's {unet, vae, text} configs."""
    if shape not in SHAPES:
        raise IdseditError(f"unknown model shape {shape!r}: use one of {', '.join(SHAPES)}")
    return copy.deepcopy(SHAPES[shape])


def text_config(text: dict):
    """CLIPTextConfig of a shape's text block (projection_dim = hidden_size)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(**TEXT_COMMON, projection_dim=text["hidden_size"], **text)


def load_tokenizer(path: str | Path | None = None):
    """A CLIP tokenizer from a folder (default: the parity fixture's real CLIP BPE vocabulary)."""
    from transformers import CLIPTokenizer

    path = Path(path) if path else DEFAULT_TOKENIZER
    if not (path / "vocab.json").is_file():
        raise IdseditError(f"no CLIP tokenizer in {path} (vocab.json missing): pass --tokenizer with a folder holding "
                           "vocab.json and merges.txt (e.g. tests/fixtures/parity/model/tokenizer in a source checkout)")
    return CLIPTokenizer.from_pretrained(str(path))


def build_unet(cfg: dict, seed: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**cfg)


def build_vae(cfg: dict, seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**cfg)


def build_text_encoder(cfg: dict, seed: int):
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(text_config(cfg)).eval()


def build_pipeline(shape: str | dict, *, seed: int = 0, tokenizer: str | Path | None = None):
    """A StableDiffusionPipeline with random weights (fp32, CPU) for ``shape`` (a name of SHAPES or a config dict).

    Seeds: ``seed`` before the UNet, ``seed + 1`` before the VAE, ``seed + 2`` before the text encoder.
    """
    import warnings

    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from diffusers.utils import logging as dlogging

    cfg = shape_config(shape) if isinstance(shape, str) else copy.deepcopy(shape)
    unet = build_unet(cfg["unet"], seed)
    vae = build_vae(cfg["vae"], seed + 1)
    text_encoder = build_text_encoder(cfg["text"], seed + 2)
    verbosity = dlogging.get_verbosity()
    dlogging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=load_tokenizer(tokenizer),
                                           unet=unet, scheduler=PNDMScheduler(**SCHEDULER), safety_checker=None,
                                           feature_extractor=None, requires_safety_checker=False)
    finally:
        dlogging.set_verbosity(verbosity)


def build_prior(shape: str | dict, *, device: str | None = "cpu", dtype: str | None = "fp32", seed: int = 0,
                tokenizer: str | Path | None = None):
    """:func:`build_pipeline` wrapped as an :class:`idsedit.prior.Prior`."""
    from .prior import Prior

    name = shape if isinstance(shape, str) else "custom"
    return Prior(build_pipeline(shape, seed=seed, tokenizer=tokenizer), device=device, dtype=dtype,
                 name=f"random:{name}")


def parameter_counts(prior) -> dict:
    """Parameters of each part of a prior (millions), the text encoder only while it is loaded."""
    out = {}
    for part in ("unet", "vae", "text_encoder"):
        module = getattr(prior.pipe, part, None)
        if module is not None:
            out[part] = round(sum(p.numel() for p in module.parameters()) / 1e6, 2)
    return out
