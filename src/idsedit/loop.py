"""The distillation step shared by every loop (2D latents today, a radiance field next).

A loop owns its parameters and renders a latent ``z_trg`` (B, C, H, W) from them (for 2D the latent IS the
parameter; for a scene it is the VAE encoding of B rendered views). :func:`distill_loss` turns a method's output
into one scalar whose gradient is the method's update:

    loss = scale * w * sum(z_trg * grad.detach()) / (B * H_lat * W_lat) + aux_loss
    d loss / d z_trg[b] = scale * w / (B H_lat W_lat) * grad[b] + d aux_loss / d z_trg[b]

``scale = 2000`` and the division by H*W are the official implementation's convention (named here, not magic);
for B = 1 the loss is exactly the official one. The extra 1/B makes the loss a mean over views, so adding views to a
batch does not change the step size of the batch-averaged update (the methods' aux losses, e.g. CDS's PatchNCE,
are already means over the batch).

Masks act on the method's update inside the step (:func:`mask_gradient`): the gradient of the whole distillation
loss (grad term and aux loss) with respect to ``z_trg`` is multiplied by the mask before it flows any further, to
the latent (2D) or through the renderer into a radiance field (scene). With SGD and no momentum, latent cells
where the mask is 0 never move.

Learning rates are a rule per parameterisation (:data:`LR_RULES`): ``auto_lr("latents", latent_hw)`` is
:func:`sd15_equivalent_lr`; a scene loop registers its own rule with :func:`register_lr_rule`.

Loops stop early when ``should_stop()`` returns True (checked before every step, see :func:`run_steps`): the
cooperative cancel a web server or an API user needs; the partial result is returned, not an exception.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

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


LR_SCHEDULES = ("constant", "linear", "cosine")


def lr_factor(step: int, steps: int, schedule: str = "constant") -> float:
    """The learning-rate multiplier of step ``step`` (0-based) of ``steps``: constant 1 (the official loop),
    linear 1 - step / steps, cosine (1 + cos(pi step / steps)) / 2 (both reach ~0 at the last step)."""
    if schedule == "constant":
        return 1.0
    frac = step / max(1, steps)
    if schedule == "linear":
        return 1.0 - frac
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * frac))
    raise IdseditError(f"unknown learning-rate schedule {schedule!r}: use one of {', '.join(LR_SCHEDULES)}")


def t_upper(step: int, steps: int, t_max: int, anneal_to: int | None = None) -> int:
    """The exclusive upper end of step ``step``'s timestep draw t ~ U{t_min, ..., t_upper - 1}: ``t_max`` without
    annealing, else linear from ``t_max`` at the first step to ``anneal_to`` at the last (large t, which rewrite
    the layout, early; small t, which refine detail, late)."""
    if anneal_to is None or steps <= 1:
        return t_max
    return int(round(t_max + (anneal_to - t_max) * step / (steps - 1)))


# --------------------------------------------------------------------------------------------------- loss
def distill_loss(z_trg: Tensor, out: DistillOutput, *, scale: float = LOSS_SCALE, weight: float = 1.0) -> Tensor:
    """scale * weight * sum(z_trg * grad) / (B H W) + aux_loss, for z_trg of shape (B, C, H, W) or (C, H, W).

    B = 1 gives the official loss; for B views each view's gradient is the official one / B (a mean over views).
    """
    h, w = z_trg.shape[-2:]
    views = z_trg.shape[0] if z_trg.ndim == 4 else 1
    loss = scale * weight * (z_trg * out.grad.detach()).sum() / (views * h * w)
    return loss + out.aux_loss if out.aux_loss is not None else loss


class _MaskGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``mask``."""

    @staticmethod
    def forward(ctx, z, mask):
        ctx.save_for_backward(mask)
        return z.view_as(z)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask.to(grad.dtype), None


def mask_gradient(z: Tensor, mask: Tensor | None) -> Tensor:
    """z unchanged in value, but every gradient that flows back through it is multiplied by ``mask``
    (broadcast to z's shape; 1 = editable, 0 = frozen). ``mask=None`` returns z itself."""
    if mask is None:
        return z
    return _MaskGradient.apply(z, mask.detach())


def _check_finite(method: str, draw: StepDraw, out: DistillOutput) -> None:
    """IdseditError if the update or the aux loss is NaN or +-inf (or the +-3.4e38 that nan_to_num leaves)."""
    bad = "update" if not torch.isfinite(out.grad).all() else None
    if bad is None and out.aux_loss is not None and not torch.isfinite(out.aux_loss.detach()).all():
        bad = "auxiliary loss"
    if bad is None:
        return
    raise IdseditError(f"the {method} {bad} became non-finite at t={int(draw.t.flatten()[0])}: lower --guidance or "
                       "--fpr-lambda, or run in fp32 (--dtype fp32)")


def distill_step(prior, method: str, z_src: Tensor, z_trg: Tensor, draw: StepDraw, cond_src, cond_trg,
                 cfg: DistillConfig, sampler: Sampler, *, scale: float = LOSS_SCALE, weight: float = 1.0,
                 mask: Tensor | None = None):
    """Run one method and return (loss, output); the caller backpropagates and steps its optimizer.

    ``mask`` (broadcastable to z_trg, 1 = editable): the gradient of the whole loss w.r.t. z_trg, the method's
    aux loss included, is multiplied by it (:func:`mask_gradient`), whatever z_trg is computed from.
    """
    z_trg = mask_gradient(z_trg, mask)
    out = get_method(method).fn(prior, z_src, z_trg, draw.t, draw.noise, cond_src, cond_trg, cfg, sampler)
    _check_finite(method, draw, out)
    return distill_loss(z_trg, out, scale=scale, weight=weight), out


# --------------------------------------------------------------------------------------------------- learning rate
SD15_LATENT_AREA = 64 * 64  # SD 1.5 at 512x512


def sd15_equivalent_lr(latent_hw: tuple[int, int], lr: float = 0.1) -> float:
    """The learning rate that gives a latent of size latent_hw the same per-element step as SD 1.5 at 512x512.

    The official loss divides by H*W (2000 / (H W)), so with lr fixed the step per element grows as the latent
    shrinks: 16x16 latents (the mini prior) would move 16x further per step than SD 1.5's 64x64. Scaling
    lr by (H W) / 64^2 undoes that:  lr(H, W) = 0.1 * H W / 64^2.
    """
    return lr * latent_hw[0] * latent_hw[1] / SD15_LATENT_AREA


LR_RULES: dict[str, Callable[..., float]] = {"latents": sd15_equivalent_lr}
"""Automatic learning rate per parameterisation: name -> rule(**what the loop knows) -> lr.

``latents`` (the 2D edit, SGD on z): :func:`sd15_equivalent_lr` of the latent's (H, W). A scene loop registers
its radiance field's rule under its own name."""


def register_lr_rule(name: str, rule: Callable[..., float]) -> None:
    """Make ``auto_lr(name, ...)`` call ``rule``."""
    LR_RULES[name] = rule


def auto_lr(parameterisation: str, *args, **kwargs) -> float:
    """The automatic learning rate of ``parameterisation`` (see :data:`LR_RULES`)."""
    if parameterisation not in LR_RULES:
        raise IdseditError(f"no learning-rate rule for {parameterisation!r}: known are {', '.join(LR_RULES)}")
    return float(LR_RULES[parameterisation](*args, **kwargs))


# --------------------------------------------------------------------------------------------------- stepping
@dataclass
class RunState:
    """How a loop ended: steps done, and whether ``should_stop`` ended it early."""

    steps_done: int = 0
    cancelled: bool = False


def run_steps(n: int, step: Callable[[int], None], *, should_stop: Callable[[], bool] | None = None,
              progress=None) -> RunState:
    """Call ``step(i)`` for i = 0..n-1; before each step ask ``should_stop()`` and stop when it says True.

    ``progress``: an optional wrapper of the step range (e.g. a tqdm factory ``lambda r: tqdm(r)``).
    """
    state = RunState()
    steps = progress(range(n)) if progress is not None else range(n)
    try:
        for i in steps:
            if should_stop is not None and should_stop():
                state.cancelled = True
                break
            step(i)
            state.steps_done = i + 1
    finally:
        if hasattr(steps, "close"):
            steps.close()
    return state
