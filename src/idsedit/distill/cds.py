"""Contrastive Denoising Score (Nam et al., CVPR 2024): DDS + PatchNCE on self-attention features.

    grad     = eps^w(z_t_trg, y_trg) - eps^w(z_t_src, y_src)                          (DDS term)
    aux_loss = w_cut * (9 / n_layers) * sum_layers sum_patch_sizes mean_i PatchNCE(f_src[i], f_trg[i])   (CUT term)

f are the outputs of the self-attention (``attn1``) of every UNet up block, for the conditional branch, captured
with forward hooks (no patched attention processor, the UNet is untouched). Two UNet calls per step, 4 samples:

    call 1, no grad:          [uncond z_t_src, uncond z_t_trg, cond_src z_t_src]   -> eps_u_src, eps_u_trg, eps_c_src, f_src
    call 2, grad to z_trg:    [cond_trg z_t_trg],  z_t_trg = sqrt(ab) z_trg + sqrt(1-ab) eps  -> eps_c_trg (detached), f_trg

so the conditional target branch runs once, with grad, and serves both terms (1,200 instead of 1,400 UNet
forward-equivalents per 200-step edit). The same loss and gradient as the official batch-4 CFG call plus a
separate batch-1 feature pass (:func:`cds_two_calls`, kept as the reference for the equivalence tests and the
benchmark) up to float rounding: the only difference is which batch a sample's forward runs in
(tests/test_cds_split.py).
Features are average-pooled by each patch size, L2-normalised over channels, and ``n_patches`` random locations
(shared by source and target) enter

    PatchNCE(q, k) = -log( exp(q_i . k_i / tau) / (exp(q_i . k_i / tau) + sum_{j != i} exp(q_i . k_j / tau)) )

with q = f_src (detached) and k = f_trg (the official ``diagonal -> -10`` masking of the negatives is kept).
PatchNCE is computed in fp32 whatever the UNet's dtype (normalisation, logits / tau and the cross-entropy would
lose most of their precision in fp16/bf16).

Per-layer normalisation (``cfg.cut_layer_norm``, on by default): the official code sums over every up-block
self-attention layer, 9 on SD 1.x/2.x but 36 on SDXL, which would make ``cut_weight`` 4x stronger there. The sum is
scaled by CUT_REFERENCE_LAYERS / n_layers = 9 / n_layers: exactly the official value on SD 1.x/2.x (9 layers), the
same strength per layer on every other UNet. ``cut_layer_norm=False`` gives the official plain sum on any UNet
(the parity tests use it: their tiny model has 2 layers).
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import diffusion as D
from ..prior import Cond
from . import DistillOutput, register


CUT_REFERENCE_LAYERS = 9  # up-block self-attention layers of SD 1.x/2.x (3 CrossAttnUpBlocks x 3), the official setting


def cut_layer_scale(n_layers: int, normalise: bool = True) -> float:
    """Factor on the sum over layers: CUT_REFERENCE_LAYERS / n_layers (1 on SD 1.x/2.x), or 1 when not normalising."""
    return CUT_REFERENCE_LAYERS / n_layers if normalise else 1.0


def self_attention_layers(unet) -> list[str]:
    """Names of the self-attention modules of the up blocks, in module order (the official CUT layers)."""
    return [n for n, _ in unet.named_modules() if n.startswith("up_blocks") and n.endswith(".attn1")]


@contextmanager
def capture_outputs(module, names: list[str]):
    """Collect the outputs of the named submodules during the forwards run inside the block: {name: Tensor}.

    Only forwards run by the thread that opened the block are captured, so threads sharing one UNet (a web
    server) never see each other's features.
    """
    feats: dict[str, Tensor] = {}
    modules = dict(module.named_modules())
    owner = threading.get_ident()

    def hook_for(name):
        def hook(_module, _args, output):
            if threading.get_ident() == owner:
                feats[name] = output
        return hook

    handles = [modules[n].register_forward_hook(hook_for(n)) for n in names]
    try:
        yield feats
    finally:
        for h in handles:
            h.remove()


def token_grid(n_tokens: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of a feature map with n_tokens tokens in a UNet whose input is latent_hw (halving with ceil)."""
    h, w = latent_hw
    while h * w > n_tokens:
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    if h * w != n_tokens:
        raise ValueError(f"cannot place {n_tokens} tokens on a grid derived from {latent_hw}")
    return h, w


def patch_nce(q: Tensor, k: Tensor, tau: float) -> Tensor:
    """PatchNCE per patch (N,): cross-entropy of [q_i.k_i, q_i.k_j (j != i, diagonal set to -10)] / tau, label 0.

    q, k: (N, C) L2-normalised features; q is detached (the source is the fixed reference). Computed in fp32.
    """
    q, k = q.detach().float(), k.float()
    l_pos = (q * k).sum(dim=1, keepdim=True)                            # (N, 1)
    l_neg = q @ k.t()                                                   # (N, N)
    l_neg = l_neg.masked_fill(torch.eye(len(q), dtype=torch.bool, device=q.device), -10.0)
    logits = torch.cat([l_pos, l_neg], dim=1) / tau                     # (N, 1 + N)
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device), reduction="none")


def cut_loss(f_src: Tensor, f_trg: Tensor, hw: tuple[int, int], cfg, sampler) -> Tensor:
    """Sum over patch sizes of the mean PatchNCE between (B, h*w, C) features, divided by B; one permutation per
    patch size, shared by the B rows (the views of one scene), or one per row when the sampler draws per sample
    (``sampler.permutation_per_sample``: a batch of independent edits, idsedit.evaluate.batching).

    Everything after the features (pooling, normalisation, logits / tau, cross-entropy) runs in fp32.
    """
    f_src, f_trg = f_src.float(), f_trg.float()
    b, _, c = f_src.shape
    src = f_src.reshape(b, *hw, c).permute(0, 3, 1, 2)                  # (B, C, h, w)
    trg = f_trg.reshape(b, *hw, c).permute(0, 3, 1, 2)
    loss = f_trg.new_zeros(())
    for ps in cfg.patch_sizes:
        s = F.avg_pool2d(src, ps) if ps > 1 else src
        g = F.avg_pool2d(trg, ps) if ps > 1 else trg
        s = F.normalize(s, dim=1).permute(0, 2, 3, 1).flatten(1, 2)     # (B, N, C)
        g = F.normalize(g, dim=1).permute(0, 2, 3, 1).flatten(1, 2)
        k = min(cfg.n_patches, s.shape[1])
        per_sample = getattr(sampler, "permutation_per_sample", None)
        perms = per_sample(s.shape[1], device=s.device) if per_sample else [sampler.permutation(s.shape[1],
                                                                                              device=s.device)] * b
        for i in range(b):
            ids = perms[i][:k]
            loss = loss + patch_nce(s[i, ids], g[i, ids], cfg.nce_tau).mean() / b
    return loss


def cond_rows(features: Tensor, n_branches: int, branch: int, batch: int, guidance: float) -> Tensor:
    """Rows of a batched call's features that belong to the conditional pass of branch ``branch``."""
    start = (n_branches if guidance != 1.0 else 0) * batch + branch * batch
    return features[start:start + batch]


def unconditional(cond: Cond) -> Cond:
    """``cond`` with its negative (unconditional) row in both rows: ``prior.eps(..., guidance=1)`` on it gives the
    unconditional prediction, so one call can mix unconditional and conditional rows in any order."""
    pick = [0, 0]
    return Cond(cond.prompt, cond.negative, cond.embeds[pick], None if cond.pooled is None else cond.pooled[pick])


def guided_pair_target_once(prior, z_t_src, z_trg, noise, t, cond_src, cond_trg, guidance, layers):
    """DDS difference and CUT features with the conditional target branch run ONCE, with grad (see the docstring).

    Returns (grad, refs, feats): grad = eps^w(z_t_trg, y_trg) - eps^w(z_t_src, y_src) detached; refs the source's
    conditional up-block self-attention features (detached); feats the target's, differentiable in z_trg, where
    z_t_trg = add_noise(z_trg, noise). Guidance 1 needs no unconditional rows: call 1 is [cond_src z_t_src] only.
    """
    ab = prior.alpha_bar(t, z_trg.ndim)
    b = z_t_src.shape[0]
    guided = guidance != 1.0
    if guided:
        z_t_trg_fixed = D.add_noise(z_trg.detach(), noise, ab)
        inputs, conds = [z_t_src, z_t_trg_fixed, z_t_src], [unconditional(cond_src), unconditional(cond_trg), cond_src]
    else:
        inputs, conds = [z_t_src], [cond_src]
    with torch.no_grad(), capture_outputs(prior.unet, layers) as feats:
        fixed = prior.eps(inputs, t, conds, guidance=1.0)                  # raw eps per row, one call
    refs = {n: f[-b:].detach() for n, f in feats.items()}                 # the last rows: cond_src on z_t_src
    with torch.enable_grad(), capture_outputs(prior.unet, layers) as feats_trg:
        z_t_trg = D.add_noise(z_trg, noise, ab)
        (eps_c_trg,) = prior.eps([z_t_trg], t, [cond_trg], guidance=1.0)
    eps_c_trg = eps_c_trg.detach()
    if guided:
        eps_u_src, eps_u_trg, eps_c_src = fixed
        grad = D.cfg(eps_u_trg, eps_c_trg, guidance) - D.cfg(eps_u_src, eps_c_src, guidance)
    else:
        grad = eps_c_trg - fixed[0]
    return grad.detach(), refs, dict(feats_trg)


def cut_term(refs, feats, layers, hw, cfg, sampler) -> Tensor:
    """w_cut * (9 / n_layers) * sum_layers cut_loss(refs, feats): the aux loss of CDS and IDS+CUT."""
    with torch.enable_grad():
        loss = sum(cut_loss(refs[n], feats[n], token_grid(feats[n].shape[1], hw), cfg, sampler) for n in layers)
    return cfg.cut_weight * cut_layer_scale(len(layers), cfg.cut_layer_norm) * loss


# The two-call reference path (the official structure: a batch-4 CFG call without grad, then a separate batch-1
# feature pass of z_t_trg with grad). Not used by the methods; kept so tests/test_cds_split.py and
# bench/prototypes.py can compare the default against it.
def guided_pair_with_features(prior, z_t_src, z_t_trg, t, cond_src, cond_trg, guidance, layers):
    """Reference path: DDS difference from one batched call, plus the source's conditional self-attention features."""
    with torch.no_grad(), capture_outputs(prior.unet, layers) as feats:
        eps_src, eps_trg = prior.eps([z_t_src, z_t_trg], t, [cond_src, cond_trg], guidance)
    b = z_t_src.shape[0]
    refs = {n: cond_rows(f, 2, 0, b, guidance).detach() for n, f in feats.items()}
    return (eps_trg - eps_src).detach(), refs


def contrastive_loss(prior, z_trg, noise, t, cond_trg, refs, layers, cfg, sampler) -> Tensor:
    """Reference path: w_cut * CUT loss between ``refs`` and the features of a separate forward of z_t_trg(z_trg)."""
    ab = prior.alpha_bar(t, z_trg.ndim)
    with torch.enable_grad():
        z_t_trg = D.add_noise(z_trg, noise, ab)
        with capture_outputs(prior.unet, layers) as feats:
            prior.eps([z_t_trg], t, [cond_trg], guidance=1.0)           # conditional branch only
        return cut_term(refs, feats, layers, tuple(z_trg.shape[-2:]), cfg, sampler)


def cds_two_calls(prior, z_src, z_trg, t, noise, cond_src, cond_trg, cfg, sampler) -> DistillOutput:
    """Reference CDS (batch 4 + batch 1, 5 samples per step): what :func:`cds` computed before the target branch
    was run once; the same loss and gradient to float rounding."""
    ab = prior.alpha_bar(t, z_trg.ndim)
    layers = self_attention_layers(prior.unet)
    z_t_src, z_t_trg = D.add_noise(z_src, noise, ab), D.add_noise(z_trg.detach(), noise, ab)
    grad, refs = guided_pair_with_features(prior, z_t_src, z_t_trg, t, cond_src, cond_trg, cfg.guidance, layers)
    aux = contrastive_loss(prior, z_trg, noise, t, cond_trg, refs, layers, cfg, sampler)
    return DistillOutput(grad=grad, aux_loss=aux, info={"cut_loss": float(aux.detach())})


@register("cds", "contrastive denoising score: DDS + PatchNCE on up-block self-attention")
def cds(prior, z_src, z_trg, t, noise, cond_src, cond_trg, cfg, sampler) -> DistillOutput:
    ab = prior.alpha_bar(t, z_trg.ndim)
    layers = self_attention_layers(prior.unet)
    z_t_src = D.add_noise(z_src, noise, ab)
    grad, refs, feats = guided_pair_target_once(prior, z_t_src, z_trg, noise, t, cond_src, cond_trg, cfg.guidance,
                                                layers)
    aux = cut_term(refs, feats, layers, tuple(z_trg.shape[-2:]), cfg, sampler)
    return DistillOutput(grad=grad, aux_loss=aux, info={"cut_loss": float(aux.detach())})
