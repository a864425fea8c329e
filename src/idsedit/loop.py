"""The distillation step shared by every loop (2D latents today, a radiance field later).

A loop owns its parameters and renders a latent ``z_trg`` from them (for 2D the latent IS the parameter);
:func:`distill_loss` turns a method's output into one scalar whose gradient is the method's update:

    loss = scale * w * sum(z_trg * grad.detach()) / (H_lat * W_lat) + aux_loss
    d loss / d z_trg = scale * w / (H_lat W_lat) * grad + d aux_loss / d z_trg

``scale = 2000`` and the division by H*W are the official implementation's convention (named here, not magic).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .distill import DistillConfig, DistillOutput, get_method
from .errors import IdseditError
from .rng import Sampler

LOSS_SCALE = 2000.0     # official: (2000 * loss * w_dds).backward()
T_MIN, T_MAX = 50, 949  # official: torch.randint(50, 949): t ~ U{50, ..., 948}


@dataclass
class StepDraw:
    """The randomness of one step, drawn by the loop in the official order: t first, then eps."""

    t: Tensor       # (1,) long
    noise: Tensor   # like z_src


def draw_step(sampler: Sampler, z_src: Tensor, t_min: int = T_MIN, t_max: int = T_MAX) -> StepDraw:
    """t ~ U{t_min, ..., t_max - 1}, then eps ~ N(0, I) like z_src."""
    t = sampler.randint(t_min, t_max).to(z_src.device)
    return StepDraw(t, sampler.randn_like(z_src))


def distill_loss(z_trg: Tensor, out: DistillOutput, *, scale: float = LOSS_SCALE, weight: float = 1.0) -> Tensor:
    """scale * weight * sum(z_trg * grad) / (H W) + aux_loss (see module docstring)."""
    h, w = z_trg.shape[-2:]
    loss = scale * weight * (z_trg * out.grad.detach()).sum() / (h * w)
    return loss + out.aux_loss if out.aux_loss is not None else loss


def distill_step(prior, method: str, z_src: Tensor, z_trg: Tensor, draw: StepDraw, cond_src, cond_trg,
                 cfg: DistillConfig, sampler: Sampler, *, scale: float = LOSS_SCALE, weight: float = 1.0):
    """Run one method and return (loss, output); the caller backpropagates and steps its optimizer."""
    out = get_method(method).fn(prior, z_src, z_trg, draw.t, draw.noise, cond_src, cond_trg, cfg, sampler)
    if not torch.isfinite(out.grad).all():
        raise IdseditError(f"the {method} update became non-finite at t={int(draw.t[0])}: lower --guidance or "
                           "--fpr-lambda, or run in fp32 (--dtype fp32)")
    return distill_loss(z_trg, out, scale=scale, weight=weight), out
