"""The distillation family as pure functions of explicit tensors.

Every method has the signature::

    out = method(prior, z_src, z_trg, t, noise, cond_src, cond_trg, cfg, sampler) -> DistillOutput

``t`` (shape (1,) or (B,)) and ``noise`` (like z_src) are drawn by the loop; ``sampler`` supplies any other draw
(PDS's second noise, CDS's patch permutations). ``out.grad`` is the update direction for z_trg (detached) and
``out.aux_loss`` an optional differentiable scalar in z_trg (CDS's PatchNCE). The loop turns them into one loss:

    loss = scale * w * sum(z_trg * grad) / (H * W) + aux_loss           (scale = 2000, the official convention)

whose gradient w.r.t. z_trg is ``scale * w / (H W) * grad + d aux_loss / d z_trg`` (the SDS "gradient-to-loss"
trick: d/dz sum(z * g.detach()) = g). A new method is one new file that calls :func:`register`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import Tensor

FPR_MODES = ("exact", "jacobian-free", "adaptive")


@dataclass
class DistillConfig:
    """Settings of the methods (defaults: the official IDS/CDS code)."""

    guidance: float = 7.5           # CFG scale w, used everywhere, FPR included
    negative_prompt: str = ""       # the unconditional prompt of CFG
    # IDS / FPR (fixed-point regularisation)
    fpr_iters: int = 3              # N: FPR iterations (the cap in adaptive mode)
    fpr_lambda: float = 1.0         # lambda: z_t <- z_t - lambda * dL/dz_t, L = ||z_src - z0_hat||_2 (not squared)
    fpr_mode: str = "exact"         # exact (grad through the UNet) | jacobian-free (forward only) | adaptive
    fpr_tol: float = 0.01           # adaptive: stop when the residual improves by less than this fraction
    fpr_attention_backward: str = "bf16"  # exact/adaptive FPR: UNet attention backward in bf16 (forward exact fp32;
                                    # CPU fp32 UNets, else no effect; idsedit.attention) | fp32
    with_cut: bool = False          # IDS + CDS's PatchNCE term (the official `with_cut`)
    # CDS (contrastive denoising score)
    cut_weight: float = 3.0         # weight of the PatchNCE loss (per 9 layers, see cut_layer_norm)
    cut_layer_norm: bool = True     # scale the sum over up-block self-attention layers by 9 / n_layers (official on
                                    # SD 1.x/2.x's 9, same strength on SDXL's 36); False: the official plain sum
    n_patches: int = 256            # patches drawn per layer and patch size
    patch_sizes: tuple[int, ...] = (1, 2)  # average-pool sizes of the self-attention features
    nce_tau: float = 0.07           # PatchNCE temperature
    # PDS (posterior distillation sampling)
    pds_t_stride: int = 2           # t_prev = t - stride (PDS's 500-step DDIM grid over 1000 steps)

    def __post_init__(self):
        from ..attention import ATTENTION_BACKWARDS
        from ..errors import IdseditError

        if self.fpr_mode not in FPR_MODES:
            raise IdseditError(f"unknown FPR mode {self.fpr_mode!r}: use one of {', '.join(FPR_MODES)}")
        if self.fpr_attention_backward not in ATTENTION_BACKWARDS:
            raise IdseditError(f"unknown FPR attention backward {self.fpr_attention_backward!r}: use "
                               f"{' or '.join(ATTENTION_BACKWARDS)}")
        if self.fpr_iters < 0:
            raise IdseditError(f"--fpr-iters must be >= 0, got {self.fpr_iters}")
        if not self.guidance > 0:
            raise IdseditError(f"guidance must be > 0, got {self.guidance}")
        self.patch_sizes = tuple(int(p) for p in self.patch_sizes)


@dataclass
class DistillOutput:
    """What a method returns for one step."""

    grad: Tensor                    # (B,C,H,W) update direction for z_trg, detached
    aux_loss: Tensor | None = None  # differentiable scalar in z_trg, added to the loop's loss as is
    info: dict = field(default_factory=dict)  # diagnostics (FPR residuals, iterations, ...)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    fn: Callable[..., DistillOutput]
    summary: str


METHODS: dict[str, MethodSpec] = {}


def register(name: str, summary: str):
    """Decorator: make a method available to the loops, the CLI and the benchmark under ``name``."""

    def deco(fn):
        METHODS[name] = MethodSpec(name, fn, summary)
        return fn

    return deco


def get_method(name: str) -> MethodSpec:
    from ..errors import IdseditError

    if name not in METHODS:
        raise IdseditError(f"unknown method {name!r}: use one of {', '.join(sorted(METHODS))}")
    return METHODS[name]


from . import sds, dds, cds, pds, ids  # noqa: E402,F401  (registration)
