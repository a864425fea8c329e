"""The bundled mini prior: a small text-to-image latent diffusion model trained on the shapes world.

Submodules (imported on demand, so ``import idsedit.mini`` stays light):

- :mod:`idsedit.mini.tokenizer`  a genuine CLIP BPE tokenizer folder built from the world's vocabulary
- :mod:`idsedit.mini.models`     diffusers/transformers model configs (VAE, text encoder, UNet, scheduler)
- :mod:`idsedit.mini.data`       shapes-world datasets (rendered cache, latent cache, captions)
- :mod:`idsedit.mini.train`      resumable training (``python -m idsedit.mini.train --stage vae|unet|export``)
- :mod:`idsedit.mini.export`     writes the EMA weights as a StableDiffusionPipeline folder
- :mod:`idsedit.mini.quality`    VAE PSNR and text-to-image sample checks
"""

from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "assets" / "mini-sd"
"""Where the exported diffusers folder of the bundled prior lives."""

__all__ = ["BUNDLED_DIR"]
