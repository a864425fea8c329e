"""Model configs of the bundled mini prior: genuine diffusers/transformers classes, small sizes.

Shapes: image (B, 3, 64, 64) in [-1, 1] -> VAE latent (B, 4, 16, 16); caption -> tokens (B, 32) ->
text states (B, 32, hidden); UNet(latent_t, t, text states) -> eps (B, 4, 16, 16).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class MiniModelConfig:
    """Sizes of the three networks (one source of truth for training, export and tests)."""

    image_size: int = 64  # rendered image side, pixels
    latent_channels: int = 4  # VAE latent channels (as SD)
    vae_channels: tuple[int, ...] = (32, 64, 64)  # VAE block widths; len 3 => 4x downsampling (64 -> 16)
    vae_layers_per_block: int = 1  # resnets per VAE block (decoder uses one more)
    text_hidden: int = 128  # CLIP text transformer width
    text_layers: int = 3  # CLIP text transformer depth
    text_heads: int = 4  # attention heads in the text transformer
    max_length: int = 32  # tokens per caption (= text max_position_embeddings = tokenizer model_max_length)
    unet_channels: tuple[int, ...] = (32, 64, 128)  # UNet block widths (16 -> 8 -> 4 latent pixels)
    unet_layers_per_block: int = 1  # resnets per UNet down block (up blocks use one more)
    unet_head_dim: int = 32  # channels per attention head in the UNet transformers
    norm_groups: int = 32  # GroupNorm groups in VAE and UNet

    @property
    def latent_size(self) -> int:
        """Latent side: image side / 2**(len(vae_channels) - 1)."""
        return self.image_size // 2 ** (len(self.vae_channels) - 1)

    def to_dict(self) -> dict:
        """JSON-friendly dict."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def build_vae(cfg: MiniModelConfig, scaling_factor: float = 1.0):
    """AutoencoderKL: (B, 3, 64, 64) <-> (B, 4, 16, 16), random init."""
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.vae_channels),
        layers_per_block=cfg.vae_layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_groups,
        sample_size=cfg.image_size,
        scaling_factor=scaling_factor,
    )


def deepen_vae(vae, layers_per_block: int, seed: int = 0):
    """A copy of AutoencoderKL ``vae`` with ``layers_per_block`` resnets per block (the decoder's blocks: one more)
    that computes exactly the same function: every added resnet's last convolution is zero, so it is the identity
    (out = h + conv2(...) = h) and the latents and decodes are unchanged until the decoder is trained. The added
    decoder resnets keep a random first convolution (seeded), so they receive gradients; the encoder's convolutions are
    both zero.
    """
    import torch
    from diffusers import AutoencoderKL

    old_layers = vae.config.layers_per_block
    if layers_per_block < old_layers:
        raise ValueError(f"cannot deepen a VAE of {old_layers} resnets per block to {layers_per_block}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        grown = AutoencoderKL.from_config(vae.config, layers_per_block=layers_per_block)
    old, state = vae.state_dict(), grown.state_dict()
    for k, v in state.items():
        if k in old:
            state[k] = old[k].clone()
        elif ".conv2." in k or (k.startswith("encoder.") and ".conv1." in k):
            state[k] = torch.zeros_like(v)
    grown.load_state_dict(state)
    return grown.train(vae.training)


def build_text_encoder(cfg: MiniModelConfig, vocab_size: int, bos_id: int, eos_id: int):
    """CLIPTextModel with a small width/depth; pad = eos, pooled output at the eos token."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.text_hidden,
        intermediate_size=4 * cfg.text_hidden,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_length,
        projection_dim=cfg.text_hidden,
        hidden_act="quick_gelu",
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    return CLIPTextModel(config)


def build_unet(cfg: MiniModelConfig):
    """UNet2DConditionModel on (B, 4, 16, 16) latents with cross-attention to the text states."""
    from diffusers import UNet2DConditionModel

    n = len(cfg.unet_channels)
    down = ("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1)
    heads = tuple(max(1, c // cfg.unet_head_dim) for c in cfg.unet_channels)
    return UNet2DConditionModel(
        sample_size=cfg.latent_size,
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=tuple(cfg.unet_channels),
        layers_per_block=cfg.unet_layers_per_block,
        cross_attention_dim=cfg.text_hidden,
        attention_head_dim=heads,  # diffusers' historical name: number of heads per block
        norm_num_groups=cfg.norm_groups,
    )


SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "trained_betas": None,
    "timestep_spacing": "leading",
}
"""Stable Diffusion 1.x scheduler config (the same noise schedule the distillation methods assume)."""


def build_scheduler():
    """PNDMScheduler with SD 1.x's config."""
    from diffusers import PNDMScheduler

    return PNDMScheduler.from_config(SCHEDULER_CONFIG)


def build_train_scheduler():
    """DDPMScheduler with the same betas (for add_noise and alphas_cumprod during training)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", clip_sample=False, steps_offset=1,
    )


def count_params(module) -> int:
    """Number of parameters of a torch module."""
    return sum(p.numel() for p in module.parameters())


__all__ = ["MiniModelConfig", "build_vae", "deepen_vae", "build_text_encoder", "build_unet", "build_scheduler",
           "build_train_scheduler", "SCHEDULER_CONFIG", "count_params"]
