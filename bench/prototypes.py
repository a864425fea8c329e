"""Prototypes of core speed-ups, measured by monkeypatching (the core files are not edited here).

cds_split: CDS (and IDS+CUT) run the conditional TARGET branch twice: once without grad inside the batch-4 CFG call
(for the DDS term) and once with grad for the PatchNCE features, on the same z_t_trg. Here the CFG call is split into
a batch-3 call without grad [uncond src, uncond trg, cond src] and one batch-1 call WITH grad [cond trg] whose output
gives eps_c(z_t_trg) (detached) and whose attn1 features feed PatchNCE: 4 samples per step instead of 5.

    .venv/bin/python bench/prototypes.py --shape medium --threads 1 --steps 2 --warmup 1

prints, per variant (core vs prototype), wall and CPU seconds per step and UNet samples per step, and the relative
difference of the update (float rounding).

attn_bf16: on CPU, torch's flash-attention BACKWARD is ~2.6x faster in bf16 than in fp32 at the medium shape's head
size (8): (2, 8, 4096, 8) fwd 0.34 / bwd 1.26 s fp32 vs 0.37 / 0.48 s bf16, one thread. MixedSDPAProcessor runs only
the attention product in bf16 (projections, convolutions, norms stay fp32); measured on the exact-IDS step with the
relative error of the FPR result and of the update against fp32.

    .venv/bin/python bench/prototypes.py --which attn-bf16 --shape medium --threads 1 --steps 2 --warmup 1
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

import idsedit.diffusion as D
from idsedit import bench
from idsedit.distill import METHODS, DistillOutput, MethodSpec
from idsedit.distill.cds import capture_outputs, cut_loss, self_attention_layers, token_grid


def split_cfg_with_target_features(prior, z_t_src, z_trg, noise_trg, t, cond_src, cond_trg, guidance, layers):
    """(eps^w(z_t_trg) - eps^w(z_t_src) detached, source cond features, target cond features WITH grad).

    z_t_trg = add_noise(z_trg, noise_trg) is built inside, with grad to z_trg. Two UNet calls: 3 samples without
    grad, 1 sample with grad.
    """
    ab = prior.alpha_bar(t, z_trg.ndim)
    b = z_t_src.shape[0]
    emb = lambda c, r: c.embeds[r:r + 1].expand(b, -1, -1)
    with torch.no_grad(), capture_outputs(prior.unet, layers) as feats:
        z3 = torch.cat([z_t_src, D.add_noise(z_trg.detach(), noise_trg, ab), z_t_src])     # (3B, C, H, W)
        tt3 = D.timesteps_like(t, b, prior.device).repeat(3)
        out3 = prior.to_eps(prior.model_output(z3, tt3, torch.cat([emb(cond_src, 0), emb(cond_trg, 0),
                                                                    emb(cond_src, 1)])), z3, D.gather(prior.alphas_cumprod, tt3, 4))
    refs = {n: f[2 * b:3 * b].detach() for n, f in feats.items()}
    with torch.enable_grad(), capture_outputs(prior.unet, layers) as feats_t:
        z_t_trg = D.add_noise(z_trg, noise_trg, ab)
        tt1 = D.timesteps_like(t, b, prior.device)
        out1 = prior.to_eps(prior.model_output(z_t_trg, tt1, emb(cond_trg, 1)), z_t_trg, ab)
    eps_u_src, eps_u_trg, eps_c_src = out3.split(b)
    grad = D.cfg(eps_u_trg, out1.detach(), guidance) - D.cfg(eps_u_src, eps_c_src, guidance)
    return grad.detach(), refs, dict(feats_t)


def cds_split(prior, z_src, z_trg, t, noise, cond_src, cond_trg, cfg, sampler) -> DistillOutput:
    ab = prior.alpha_bar(t, z_trg.ndim)
    layers = self_attention_layers(prior.unet)
    z_t_src = D.add_noise(z_src, noise, ab)
    grad, refs, feats = split_cfg_with_target_features(prior, z_t_src, z_trg, noise, t, cond_src, cond_trg,
                                                       cfg.guidance, layers)
    hw = tuple(z_trg.shape[-2:])
    with torch.enable_grad():
        loss = sum(cut_loss(refs[n], feats[n], token_grid(feats[n].shape[1], hw), cfg, sampler) for n in layers)
    aux = cfg.cut_weight * loss
    return DistillOutput(grad=grad, aux_loss=aux, info={"cut_loss": float(aux.detach())})


def compare(prior, z_src, conds, steps, warmup):
    """Core cds vs cds_split: timing rows and the relative difference of one update on the same draw."""
    from idsedit.distill import DistillConfig
    from idsedit.loop import StepDraw, distill_step
    from idsedit.rng import Sampler

    rows = []
    core = METHODS["cds"]
    for name, fn in (("core", core.fn), ("split", cds_split)):
        METHODS["cds"] = MethodSpec("cds", fn, core.summary)
        try:
            r = bench.time_edit(prior, "cds", z_src, *conds, steps=steps, warmup=warmup)
        finally:
            METHODS["cds"] = core
        rows.append({"variant": name, **{k: r[k] for k in ("s_per_step", "cpu_s_per_step", "unet_forward_per_step",
                                                           "unet_samples_per_step", "unet_backward_per_step")}})
    grads = []
    g = torch.Generator().manual_seed(1)
    draw = StepDraw(torch.tensor([500]), torch.randn(z_src.shape, generator=g))
    z0 = z_src + 0.1 * torch.randn(z_src.shape, generator=g)
    for fn in (core.fn, cds_split):
        METHODS["cds"] = MethodSpec("cds", fn, core.summary)
        try:
            z = z0.clone().requires_grad_(True)
            loss, _ = distill_step(prior, "cds", z_src, z, draw, *conds, DistillConfig(), Sampler.seeded(0))
            loss.backward()
            grads.append(z.grad)
        finally:
            METHODS["cds"] = core
    rel = float((grads[0] - grads[1]).norm() / grads[0].norm())
    return rows, rel


class MixedSDPAProcessor:
    """SDPA with q, k, v cast to ``dtype`` (default bf16) and the result cast back; SD-style attention only
    (no group/spatial norm, no residual inside the attention module)."""

    def __init__(self, dtype=torch.bfloat16):
        self.dtype = dtype

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        import torch.nn.functional as F

        assert hidden_states.ndim == 3 and attn.group_norm is None and attn.spatial_norm is None
        assert not attn.residual_connection and attention_mask is None
        b = hidden_states.shape[0]
        ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = attn.to_q(hidden_states), attn.to_k(ctx), attn.to_v(ctx)
        h = attn.heads
        d = q.shape[-1] // h
        q, k, v = (x.view(b, -1, h, d).transpose(1, 2).to(self.dtype) for x in (q, k, v))   # (B, h, N, d)
        o = F.scaled_dot_product_attention(q, k, v)
        o = o.transpose(1, 2).reshape(b, -1, h * d).to(hidden_states.dtype)                  # (B, N, C)
        return attn.to_out[1](attn.to_out[0](o)) / attn.rescale_output_factor


_Bf16BackwardSDPA = bench._bf16_backward_sdpa()  # the bench's fast-bf16-bwd kernel, one definition


class Bf16BackwardSDPAProcessor(MixedSDPAProcessor):
    """Exact fp32 attention forward; only the attention backward (FPR's UNet backward) runs in bf16."""

    def __init__(self):
        super().__init__(torch.float32)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        import torch.nn.functional as F

        assert hidden_states.ndim == 3 and attn.group_norm is None and attn.spatial_norm is None
        assert not attn.residual_connection and attention_mask is None
        b = hidden_states.shape[0]
        ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = attn.to_q(hidden_states), attn.to_k(ctx), attn.to_v(ctx)
        h = attn.heads
        d = q.shape[-1] // h
        q, k, v = (x.view(b, -1, h, d).transpose(1, 2) for x in (q, k, v))                 # (B, h, N, d)
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            o = _Bf16BackwardSDPA.apply(q, k, v)
        else:
            o = F.scaled_dot_product_attention(q, k, v)
        o = o.transpose(1, 2).reshape(b, -1, h * d)                                          # (B, N, C)
        return attn.to_out[1](attn.to_out[0](o)) / attn.rescale_output_factor


def compare_attention(prior, z_src, conds, steps, warmup):
    """Exact IDS with fp32 SDPA vs bf16-only attention: timing rows, and the relative error of z_t* and the update."""
    from idsedit.distill import DistillConfig
    from idsedit.fpr import fixed_point_regularize
    from idsedit.loop import StepDraw, distill_step
    from idsedit.rng import Sampler

    rows, results = [], []
    g = torch.Generator().manual_seed(1)
    draw = StepDraw(torch.tensor([500]), torch.randn(z_src.shape, generator=g))
    from diffusers.models.attention_processor import AttnProcessor2_0

    processors = {"sdpa-fp32": AttnProcessor2_0, "sdpa-bf16-backward": Bf16BackwardSDPAProcessor,
                  "sdpa-bf16-attention": MixedSDPAProcessor}
    for name, make in processors.items():
        prior.unet.set_attn_processor(make())
        r = bench.time_edit(prior, "ids", z_src, *conds, steps=steps, warmup=warmup)
        rows.append({"variant": name, **{k: r[k] for k in ("s_per_step", "cpu_s_per_step", "unet_forward_per_step",
                                                           "unet_samples_per_step", "unet_backward_per_step")}})
        ab = prior.alpha_bar(draw.t)
        fpr = fixed_point_regularize(prior, z_src, D.add_noise(z_src, draw.noise, ab), draw.t, conds[0],
                                     guidance=7.5, iters=3)
        _, out = distill_step(prior, "ids", z_src, z_src.clone().requires_grad_(True), draw, *conds,
                              DistillConfig(), Sampler.seeded(0))
        results.append((fpr.z_t, out.grad, fpr.norms))
    rel = lambda a, b: float((a - b).norm() / b.norm())
    ref = results[0]
    return rows, {name: {"z_t_star_rel_err": rel(r[0], ref[0]), "update_rel_err": rel(r[1], ref[1]),
                         "fpr_norms": r[2]} for name, r in zip(processors, results)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--which", default="cds-split", choices=["cds-split", "attn-bf16"])
    ap.add_argument("--shape", default="medium")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--image-size", type=int, default=512)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from idsedit.edit2d import image_to_tensor
    from idsedit.models_from_config import build_prior

    prior = build_prior(args.shape)
    z_src = prior.encode(image_to_tensor(bench.make_image(args.image_size)))
    conds = prior.encode_text(bench.SRC_PROMPT), prior.encode_text(bench.TRG_PROMPT)
    prior.release_text_encoders()
    load = bench.load_average()
    if args.which == "cds-split":
        rows, check = compare(prior, z_src, conds, args.steps, args.warmup)
        check = {"update_rel_diff": check}
    else:
        rows, check = compare_attention(prior, z_src, conds, args.steps, args.warmup)
    print(json.dumps({"prototype": args.which, "shape": args.shape, "threads": args.threads, "load_before": load,
                      "load_after": bench.load_average(), "rows": rows, **check}, indent=1))


if __name__ == "__main__":
    main()
