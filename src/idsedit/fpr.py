"""Fixed-point regularisation (FPR), the core of IDS (CVPR 2025, Algorithm 1 lines 4-9).

Repeat N times, starting from z_t = z_t_src:

    eps    = eps_phi^w(z_t, y_src, t)                      (CFG, same w as the edit)
    z0_hat = (z_t - sqrt(1 - ab_t) eps) / sqrt(ab_t)       (Tweedie, Eq. 6)
    L      = || z_src - z0_hat ||_2                        (plain Euclidean norm, NOT squared, Eq. 7)
    z_t   <- z_t - lambda * dL/dz_t

Modes (each measured, see the benchmark):

- ``exact``: dL/dz_t through the UNet by autograd (the paper's; one forward + one backward per iteration).
- ``jacobian-free``: drop d eps / d z_t (as SDS drops the UNet Jacobian); then dz0_hat/dz_t = 1/sqrt(ab_t) and
  dL/dz_t = (z0_hat - z_src) / (L sqrt(ab_t)): forward passes only.
- ``adaptive``: exact gradients, but stop as soon as the residual improves by less than ``tol`` (relative), keeping
  the iterate with the lowest residual; ``iters`` is the cap.

For a batch, L is the sum of per-sample norms (identical to the official code for one image).

Attention backward (``attention_backward``, default ``"bf16"``): exact and adaptive FPR run the UNet's attention
BACKWARD in bf16 (the forward stays exact fp32, bit-identical), see :mod:`idsedit.attention`: on CPU it takes ~24-32 %
of the CPU time off an exact-IDS step at the medium benchmark shape (docs/benchmarks.md), and ``idsedit eval``
measured no quality change (docs/eval.md).
``"fp32"`` (``--fpr-attention-backward fp32``) is the plain fp32 backward; the parity tests against the official
code's tensors use it. Where bf16 backward does not apply (GPU, fp16/bf16 models, other attention processors)
it falls back to the unchanged backward; ``FPRResult.bf16_backward`` says which ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from . import diffusion as D
from .attention import ATTENTION_BACKWARDS, bf16_attention_backward


@dataclass
class FPRResult:
    z_t: Tensor                                     # z_t^{src*}, detached
    norms: list[float] = field(default_factory=list)  # residual L before each update (official `norm_`)
    updates: int = 0                                # updates applied to z_t
    bf16_backward: bool = False                     # the UNet attention backward ran in bf16 (idsedit.attention)


def residual_norm(z_src: Tensor, z0_hat: Tensor) -> Tensor:
    """L = sum_b || z_src[b] - z0_hat[b] ||_2 (one image: the plain norm over all elements)."""
    return torch.linalg.vector_norm((z_src - z0_hat).flatten(1), dim=1).sum()


def fpr_step_exact(prior, z_src, z_t, t, cond_src, guidance, lam):
    """One exact FPR iteration: (z_t - lambda dL/dz_t, L) with the gradient through the UNet."""
    ab = prior.alpha_bar(t, z_t.ndim)
    with torch.enable_grad():
        z = z_t.detach().requires_grad_(True)
        (eps,) = prior.eps([z], t, [cond_src], guidance)
        loss = residual_norm(z_src, D.x0_from_eps(z, eps, ab))
        (g,) = torch.autograd.grad(loss, z)
    return (z - lam * g).detach(), loss.detach()


@torch.no_grad()
def fpr_step_jacobian_free(prior, z_src, z_t, t, cond_src, guidance, lam):
    """One Jacobian-free FPR iteration: z_t - lambda (z0_hat - z_src) / (||z_src - z0_hat|| sqrt(ab_t))."""
    ab = prior.alpha_bar(t, z_t.ndim)
    (eps,) = prior.eps([z_t], t, [cond_src], guidance)
    z0_hat = D.x0_from_eps(z_t, eps, ab)
    per_sample = torch.linalg.vector_norm((z_src - z0_hat).flatten(1), dim=1).view(-1, *[1] * (z_t.ndim - 1))
    g = (z0_hat - z_src) / (per_sample * ab**0.5)
    return z_t - lam * g, per_sample.sum()


def fixed_point_regularize(prior, z_src: Tensor, z_t_src: Tensor, t: Tensor, cond_src, *, guidance: float,
                           iters: int = 3, lam: float = 1.0, mode: str = "exact", tol: float = 0.01,
                           attention_backward: str = "bf16") -> FPRResult:
    """Run FPR from z_t_src and return z_t^{src*} with the residual before each update.

    ``attention_backward``: "bf16" (default; exact/adaptive modes, where supported) or "fp32", see the module
    docstring.
    """
    if attention_backward not in ATTENTION_BACKWARDS:
        raise ValueError(f"attention_backward must be one of {ATTENTION_BACKWARDS}, got {attention_backward!r}")
    step = fpr_step_jacobian_free if mode == "jacobian-free" else fpr_step_exact
    use_bf16 = attention_backward == "bf16" and mode != "jacobian-free" and iters > 0
    with bf16_attention_backward(prior.unet, enabled=use_bf16) as bf16:
        z_t, norms = z_t_src.detach(), []
        best = (float("inf"), z_t)
        for _ in range(iters):
            z_next, norm = step(prior, z_src, z_t, t, cond_src, guidance, lam)
            norms.append(float(norm))
            if mode == "adaptive":
                if norm < best[0]:
                    best = (float(norm), z_t)
                if len(norms) > 1 and norms[-1] > norms[-2] * (1 - tol):
                    updates = len(norms) - 1 if best[1] is z_t else len(norms) - 2
                    return FPRResult(best[1], norms, updates=updates, bf16_backward=bf16)
            z_t = z_next
    return FPRResult(z_t, norms, updates=len(norms), bf16_backward=bf16)
