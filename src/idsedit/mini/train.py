"""Resumable training of the bundled mini prior (VAE first, then UNet + text encoder jointly).

Usage::

    python -m idsedit.mini.train --stage vae  --minutes 20 --state train-state/
    python -m idsedit.mini.train --stage unet --minutes 90 --state train-state/
    python -m idsedit.mini.train --stage decoder --minutes 30 --state train-state/   # optional, any time after vae
    python -m idsedit.mini.train --stage export --state train-state/ --out src/idsedit/assets/mini-sd

Each call resumes from ``--state`` and stops after ``--minutes`` (or ``--max-steps``, or on SIGTERM /
Ctrl-C, or when a file ``<state>/STOP`` exists), saving a checkpoint every ``--checkpoint-minutes`` and
at the end. Batches are drawn from generators seeded by
``(seed, step)``, so a resumed run sees exactly the batches an uninterrupted run would.

State folder layout::

    config.json                model + training config (fixed at the first call)
    tokenizer/                 CLIPTokenizer folder
    vae.safetensors            VAE weights (fp32)        vae_opt.safetensors   AdamW moments (bf16)
    vae_decoder.safetensors    fine-tuned decoder (optional; encoder and latents unchanged; vae_decoder.json
                               records its resnets per block when deepened, see decoder_layers_per_block)
    unet.safetensors, text_encoder.safetensors          current weights (fp32)
    unet_ema.safetensors, text_encoder_ema.safetensors  EMA weights (fp32, exported)
    unet_opt.safetensors       AdamW moments (bf16)
    vae.json, unet.json        step, minutes, losses, hardware, per-call history
    cache/                     rendered scenes, token ids, latents (derived, not committed)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import IdseditError
from .models import MiniModelConfig

STAGES = ("vae", "decoder", "unet", "export", "all")


@dataclass
class TrainConfig:
    """Training recipe of the mini prior (defaults are the shipped recipe)."""

    state: Path = Path("train-state")  # state folder: checkpoints, caches, logs; resumed automatically
    minutes: float = 20.0  # wall-clock budget of this call (minutes)
    max_steps: int = 0  # stop at this total step count as well (0 = only the time budget)
    seed: int = 0  # seed of scenes, batches, noise and init
    scenes: int = 20000  # rendered training scenes (cached under state/cache)
    val_scenes: int = 256  # held-out scenes (different seed) for PSNR
    captions_per_scene: int = 8  # random caption templates stored per scene (plus the canonical one)
    vae_batch: int = 16  # VAE batch size
    vae_lr: float = 1e-3  # VAE AdamW learning rate
    vae_kl_weight: float = 1e-6  # weight of the KL term (summed over latent elements, batch mean)
    unet_batch: int = 32  # UNet batch size
    unet_lr: float = 5e-4  # UNet + text encoder AdamW learning rate
    warmup_steps: int = 200  # linear learning-rate warm-up steps (both stages)
    weight_decay: float = 0.01  # AdamW weight decay
    grad_clip: float = 1.0  # gradient norm clip
    ema_decay: float = 0.999  # EMA decay of UNet + text encoder weights (warmed up as (1+s)/(10+s))
    cond_dropout: float = 0.1  # probability of the empty caption "" (classifier-free guidance)
    snr_gamma: float = 5.0  # min-SNR-gamma weighting of the epsilon loss (0 = plain MSE)
    checkpoint_minutes: float = 5.0  # save state at least this often (minutes)
    threads: int = 1  # torch CPU threads (1: on a shared 2-core machine, 2 threads ran 5-10x slower)
    world: str = "shapes"  # training scenes: "shapes" (v1, default camera) | "multiview" (v2, cameras all around)
    default_share: float = 0.25  # multiview world: fraction of scenes seen from the default camera
    vae_decay_steps: int = 0  # >0: cosine decay of the VAE lr to vae_min_lr_frac at this step (v1: 0 = constant)
    vae_min_lr_frac: float = 0.05  # final VAE lr / vae_lr of the cosine decay
    decoder_decay_steps: int = 0  # decoder stage with vae_decay_steps > 0: its own warm-up + cosine over this
    #                               many steps (0: vae_decay_steps); v1 (vae_decay_steps = 0) continues the VAE's lr
    decoder_lr: float = 0.0  # peak lr of that decoder schedule (0: vae_lr). Start low: re-warming an annealed VAE's
    #                          decoder to 1e-3 cost 3 dB in 200 steps (docs/mini-prior-v2.md, section 6.1)
    decoder_warmup_steps: int = 0  # warm-up steps of that decoder schedule (0: warmup_steps)
    decoder_layers_per_block: int = 0  # >0 and more than the decoder has: the decoder stage first deepens the VAE
    #                                    to this many resnets per block (models.deepen_vae: identity resnets, same
    #                                    latents) and starts a new fine-tune of the deeper decoder from the current one
    heldout_every: int = 0  # >0: every this many UNet steps, log the EMA model's held-out denoising loss
    heldout_draws: int = 4  # held-out (t, noise) draws per validation scene
    unet_cooldown_start: int = 0  # >0: from this UNet step, decay the lr linearly ...
    unet_cooldown_steps: int = 0  # ... over this many steps to unet_cooldown_frac of unet_lr (then keep it)
    unet_cooldown_frac: float = 0.1  # final lr fraction of the cool-down
    unet_noise_offset: float = 0.0  # >0: offset noise (noise + o * a per-sample, per-channel constant) ...
    unet_noise_offset_start: int = 0  # ... from this UNet step on (the fine-tune that teaches the low frequencies)
    unet_noise_jitter: float = 0.0  # >0: training noise x (1 + j c), c ~ N(0, 1) per sample and channel ...
    unet_noise_jitter_start: int = 0  # ... from this UNet step on (to discount the initial noise's chance variance)
    unet_noise_jitter_min_t: int = 0  # ... on the samples with t >= this only (where the noise's energy is readable)
    unet_lr_points: str = ""  # "step:frac,...": from the first point on, lr = unet_lr x the piecewise-linear frac
    #                           through them (flat after the last); overrides warm-up and cool-down (a fine-tune's
    #                           own schedule, e.g. "14550:0.1,14750:0.5,17000:0.5,18500:0.05")
    model: MiniModelConfig = field(default_factory=MiniModelConfig)  # network sizes

    def to_dict(self) -> dict:
        """JSON-friendly dict."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("state", "model")}
        return {**d, "model": self.model.to_dict()}


def check_config(cfg: TrainConfig) -> None:
    """Validate user-facing values with messages naming the fix."""
    if cfg.minutes <= 0 and cfg.max_steps <= 0:
        raise IdseditError(f"--minutes must be > 0 (got {cfg.minutes}) unless --max-steps is given")
    for name in ("vae_batch", "unet_batch", "scenes", "val_scenes", "captions_per_scene"):
        if getattr(cfg, name) <= 0:
            raise IdseditError(f"{name} must be positive, got {getattr(cfg, name)}")
    if not 0.0 <= cfg.cond_dropout < 1.0:
        raise IdseditError(f"cond_dropout must be in [0, 1), got {cfg.cond_dropout}")
    from .data import WORLDS

    if cfg.world not in WORLDS:
        raise IdseditError(f"unknown --world {cfg.world!r}; use one of {', '.join(WORLDS)}")
    if cfg.unet_noise_offset < 0:
        raise IdseditError(f"unet_noise_offset must be >= 0, got {cfg.unet_noise_offset}")
    if not 0.0 <= cfg.unet_noise_jitter < 1.0:
        raise IdseditError(f"unet_noise_jitter must be in [0, 1), got {cfg.unet_noise_jitter}")
    if not 0 <= cfg.unet_noise_jitter_min_t < 1000:
        raise IdseditError(f"unet_noise_jitter_min_t must be a timestep in [0, 1000), got {cfg.unet_noise_jitter_min_t}")
    parse_lr_points(cfg.unet_lr_points)
    if not 0.0 <= cfg.default_share <= 1.0:
        raise IdseditError(f"default_share must be in [0, 1], got {cfg.default_share}")


# ----------------------------------------------------------------------------- small pure helpers


def lr_at(step: int, base_lr: float, warmup: int, decay_steps: int = 0, min_frac: float = 0.0) -> float:
    """Linear warm-up to ``base_lr`` over ``warmup`` steps, then constant (``decay_steps`` = 0) or cosine decay:
    lr = base_lr (f + (1 - f) (1 + cos(pi min(step, D) / D)) / 2), f = ``min_frac``, D = ``decay_steps``."""
    lr = base_lr * min(1.0, (step + 1) / max(1, warmup))
    if decay_steps > 0:
        c = 0.5 * (1.0 + math.cos(math.pi * min(step, decay_steps) / decay_steps))
        lr *= min_frac + (1.0 - min_frac) * c
    return lr


def cooldown_factor(step: int, start: int, steps: int, final: float) -> float:
    """1 before ``start``, then linear to ``final`` over ``steps`` steps, then ``final`` (1 if start or steps is 0)."""
    if start <= 0 or steps <= 0 or step < start:
        return 1.0
    return 1.0 - (1.0 - final) * min(1.0, (step - start) / steps)


def parse_lr_points(spec: str) -> list[tuple[int, float]]:
    """"s1:f1,s2:f2,..." -> [(s1, f1), ...] with increasing steps and fractions >= 0 ("" -> [])."""
    if not spec.strip():
        return []
    try:
        pts = [(int(a), float(b)) for a, b in (item.split(":") for item in spec.split(","))]
    except ValueError as e:
        raise IdseditError(f"unet_lr_points must look like '14550:0.1,14750:0.5' (step:fraction,...), got {spec!r}") from e
    if any(b[0] <= a[0] for a, b in zip(pts, pts[1:])) or any(f < 0 for _, f in pts):
        raise IdseditError(f"unet_lr_points needs increasing steps and fractions >= 0, got {spec!r}")
    return pts


def lr_points_factor(step: int, points: list[tuple[int, float]]) -> float | None:
    """The lr fraction at ``step`` on the polyline through ``points`` (flat after the last point); None before the
    first point (or with no points): the base schedule applies there."""
    if not points or step < points[0][0]:
        return None
    for (s0, f0), (s1, f1) in zip(points, points[1:]):
        if step < s1:
            return f0 + (f1 - f0) * (step - s0) / (s1 - s0)
    return points[-1][1]


def per_channel_normal(noise, gen):
    """c ~ N(0, 1) of shape (B, C, 1, 1), ``noise``'s dtype: one draw per sample and channel, broadcast over space."""
    import torch

    return torch.randn(noise.shape[:2] + (1,) * (noise.dim() - 2), generator=gen, dtype=noise.dtype)


def offset_noise(noise, offset: float, gen):
    """Offset noise: noise + offset * c, c ~ N(0, 1) of shape (B, C, 1, 1) (one constant per sample and channel).

    Plain Gaussian noise has almost no energy at the lowest spatial frequency, so a model trained on it never learns
    to change an image's mean colour, and its samples inherit the initial noise's per-channel mean (blotchy or
    tinted backgrounds). ``offset`` = 0 returns ``noise`` itself and draws nothing."""
    if offset <= 0:
        return noise
    return noise + offset * per_channel_normal(noise, gen)


def jittered_noise(noise, jitter: float, gen, where=None):
    """Scale-jittered noise: noise x (1 + jitter c), c ~ N(0, 1) of shape (B, C, 1, 1) (one scale per sample and
    channel), so that a channel's energy varies well beyond its chance spread and the model learns not to read excess
    noise energy as image texture (docs/mini-prior-v2.md, 7.8-7.9). ``where``: optional (B,) bool, the samples to
    jitter (the others keep their noise; c is drawn for all, so the random stream does not depend on it).
    ``jitter`` = 0 returns ``noise`` itself and draws nothing."""
    if jitter <= 0:
        return noise
    c = per_channel_normal(noise, gen)
    if where is not None:
        c = c * where.to(c.dtype).view(-1, *[1] * (noise.ndim - 1))
    return noise * (1.0 + jitter * c)


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay with warm-up: min(decay, (1 + step) / (10 + step))."""
    return min(decay, (1.0 + step) / (10.0 + step))


def min_snr_weights(alphas_cumprod, t, gamma: float):
    """Min-SNR-gamma weights for epsilon prediction: min(SNR_t, gamma) / SNR_t, SNR_t = ab_t / (1 - ab_t)."""
    ab = alphas_cumprod[t]
    snr = ab / (1.0 - ab)
    if gamma <= 0:
        return snr.new_ones(snr.shape)
    return snr.clamp(max=gamma) / snr


def step_rng(seed: int, step: int, stream: int) -> np.random.Generator:
    """Numpy generator for one training step (resume-exact)."""
    return np.random.default_rng([seed, step, stream])


def torch_gen(seed: int, step: int, stream: int):
    """torch CPU generator for one training step (resume-exact)."""
    import torch

    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step, stream]).generate_state(1)[0]))


def hardware() -> dict:
    """A short description of the machine that trained."""
    import torch

    return {"cpu": platform.processor() or platform.machine(), "logical_cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "platform": platform.platform(),
            "device": "cpu"}


# ----------------------------------------------------------------------------- state IO


def read_json(path: Path, default=None):
    """JSON file content, or ``default`` when missing."""
    return json.loads(path.read_text()) if path.exists() else default


def write_json(path: Path, obj) -> None:
    """Write JSON atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def save_tensors(path: Path, tensors: dict, step: int | None = None) -> None:
    """safetensors file written atomically (contiguous CPU copies); ``step`` goes into its metadata, so a copy
    of a checkpoint can check that all its files belong to the same step (see idsedit.mini.snapshot)."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    meta = None if step is None else {"step": str(int(step))}
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=meta)
    os.replace(tmp, path)


def load_tensors(path: Path) -> dict:
    """safetensors file -> dict of CPU tensors."""
    from safetensors.torch import load_file

    return load_file(str(path))


def optimizer_tensors(opt, params: list) -> dict:
    """AdamW moments as bf16 tensors keyed by parameter index (``{i}.m``, ``{i}.v``)."""
    import torch

    out = {}
    for i, p in enumerate(params):
        st = opt.state.get(p)
        if st:
            out[f"{i}.m"] = st["exp_avg"].to(torch.bfloat16)
            out[f"{i}.v"] = st["exp_avg_sq"].to(torch.bfloat16)
    return out


def restore_optimizer(opt, params: list, tensors: dict, step: int) -> None:
    """Inverse of :func:`optimizer_tensors` (moments back to fp32, Adam step count = ``step``)."""
    import torch

    for i, p in enumerate(params):
        if f"{i}.m" in tensors:
            opt.state[p] = {"step": torch.tensor(float(step)),
                            "exp_avg": tensors[f"{i}.m"].float().reshape(p.shape),
                            "exp_avg_sq": tensors[f"{i}.v"].float().reshape(p.shape)}


def init_state(cfg: TrainConfig, world=None) -> TrainConfig:
    """Create the state folder (config, tokenizer) on the first call; later calls keep its recipe.

    Returns the config to use: the stored model sizes and recipe, with this call's
    minutes/max_steps/checkpoint/threads.
    """
    from .tokenizer import write_tokenizer

    cfg.state.mkdir(parents=True, exist_ok=True)
    stored = read_json(cfg.state / "config.json")
    if stored is None:
        if world is None:
            from .data import load_world

            world = load_world(cfg.world, cfg.default_share)
        write_tokenizer(cfg.state / "tokenizer", list(world.VOCABULARY), max_length=cfg.model.max_length)
        write_json(cfg.state / "config.json", cfg.to_dict())
        return cfg
    model = MiniModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in stored.pop("model").items()})
    keep = {"minutes", "max_steps", "checkpoint_minutes", "threads"}
    merged = {**{k: v for k, v in stored.items() if k not in keep}, **{k: getattr(cfg, k) for k in keep}}
    return TrainConfig(state=cfg.state, model=model, **merged)


# ----------------------------------------------------------------------------- data caches


def scene_cache(cfg: TrainConfig, world, split: str, log: Callable[[str], None]):
    """Rendered scenes of ``split`` ('train' or 'val'), rendered once and cached as npz."""
    from tqdm.auto import tqdm

    from .data import caption_version, load_scene_cache, recaption, render_scenes, save_scene_cache

    n, seed = (cfg.scenes, cfg.seed) if split == "train" else (cfg.val_scenes, cfg.seed + 10_000)
    path = cfg.state / "cache" / f"scenes_{split}_{seed}_{n}.npz"
    if path.exists():
        cache = load_scene_cache(path)
        if cache.caption_version != caption_version(world):  # same scenes, captions of another version
            t0 = time.time()
            cache = recaption(cache, world, seed, cfg.captions_per_scene)
            save_scene_cache(path, cache)
            log(f"re-captioned {n} {split} scenes (caption version {cache.caption_version}) in {time.time() - t0:.1f}s")
        return cache
    t0 = time.time()
    with tqdm(total=n, desc=f"render {split}", unit="scene", file=sys.stderr) as bar:
        cache = render_scenes(world, n, seed, cfg.model.image_size, cfg.captions_per_scene, progress=bar.update)
    save_scene_cache(path, cache)
    log(f"rendered {n} {split} scenes in {time.time() - t0:.1f}s -> {path}")
    return cache


# ----------------------------------------------------------------------------- VAE stage


def vae_psnr(vae, images: np.ndarray, batch: int = 64) -> float:
    """Mean PSNR (dB) of VAE reconstructions (posterior mean) of uint8 images (N, H, W, 3)."""
    import torch

    from .data import images_to_tensor, psnr, tensor_to_images

    out = []
    with torch.no_grad():
        for s in range(0, len(images), batch):
            x = images_to_tensor(images[s:s + batch])
            rec = vae.decode(vae.encode(x).latent_dist.mean).sample
            out.append(psnr(images[s:s + batch], tensor_to_images(rec)))
    return float(np.concatenate(out).mean())


def decoder_keys(key: str) -> bool:
    """True for VAE state-dict keys of the decoder side (decoder + post_quant_conv)."""
    return key.startswith("decoder.") or key.startswith("post_quant_conv.")


def decoder_schedule(cfg: TrainConfig) -> tuple[float, int, int, float]:
    """(peak lr, warm-up steps, cosine steps, final fraction) of the decoder-only fine-tune when vae_decay_steps > 0:
    lr(step) = lr_at(step, *decoder_schedule(cfg))."""
    return (cfg.decoder_lr or cfg.vae_lr, cfg.decoder_warmup_steps or cfg.warmup_steps,
            cfg.decoder_decay_steps or cfg.vae_decay_steps, cfg.vae_min_lr_frac)


def check_decoder_schedule(meta: dict, cfg: TrainConfig, path: Path) -> None:
    """Refuse to resume a decoder fine-tune under another learning-rate schedule than the one it was trained with
    (``meta["lr_schedule"]``, recorded since its first step): continuing an annealed decoder at a higher rate
    undoes it."""
    done = meta.get("lr_schedule")
    if done is not None and meta.get("step", 0) > 0 and [float(x) for x in done] != [float(x) for x in
                                                                                        decoder_schedule(cfg)]:
        raise IdseditError(f"{path} was trained to step {meta['step']} with the decoder schedule (peak lr, warm-up, "
                           f"cosine steps, final fraction) = {tuple(done)}, but the config gives "
                           f"{decoder_schedule(cfg)}: set decoder_lr / decoder_warmup_steps / decoder_decay_steps in "
                           f"{cfg.state / 'config.json'} to the recorded values, or move the vae_decoder.* files away "
                           f"to start a new fine-tune")


def _record_step(meta, step, loss, loss_avg, decay, bar, cfg, last_save, save):
    """After an optimiser step: advance meta["step"], update the running loss (EMA with ``decay``) and the bar,
    checkpoint when ``cfg.checkpoint_minutes`` have passed. Returns (loss_avg, last_save)."""
    meta["step"] = step + 1
    loss_avg = loss if loss_avg is None else decay * loss_avg + (1 - decay) * loss
    bar.update(1)
    bar.set_postfix(loss=f"{loss_avg:.4f}")
    if time.time() - last_save > cfg.checkpoint_minutes * 60:
        meta["history"].append({"step": meta["step"], "loss": loss_avg})
        save()
        last_save = time.time()
    return loss_avg, last_save


def train_vae(cfg: TrainConfig, world, log: Callable[[str], None] = print, part: str = "vae") -> dict:
    """Train the AutoencoderKL: loss = L1 + MSE (pixels in [-1, 1]) + kl_weight * KL; resumes from state.

    ``part='decoder'`` fine-tunes only the decoder (+ post_quant_conv) on posterior samples of the frozen
    encoder, saved apart (``vae_decoder.*``): the latents, hence a UNet trained on them, stay valid.
    """
    import torch
    from tqdm.auto import tqdm

    from .data import images_to_tensor
    from .models import build_vae, deepen_vae

    name, stream = ("vae", 0) if part == "vae" else ("vae_decoder", 10)
    done = read_json(cfg.state / f"{name}.json")
    grow = part == "decoder" and cfg.decoder_layers_per_block > decoder_layers(cfg)
    if done is not None and not grow and 0 < cfg.max_steps <= done["step"] and (cfg.state / f"{name}.safetensors").exists():
        log(f"{name} already at step {done['step']} >= --max-steps {cfg.max_steps}: nothing to do")
        return done
    torch.manual_seed(cfg.seed)
    train, val = scene_cache(cfg, world, "train", log), scene_cache(cfg, world, "val", log)
    meta = read_json(cfg.state / f"{name}.json", {"step": 0, "minutes": 0.0, "history": []})
    if part == "vae":
        vae = build_vae(cfg.model)
    else:
        if not (cfg.state / "vae.safetensors").exists():
            raise IdseditError(f"no trained VAE in {cfg.state}: run `python -m idsedit.mini.train --stage vae` first")
        vae = load_vae(cfg).train()  # with the current decoder fine-tune (deepened if it was), when there is one
        if grow:  # deepen the current decoder (identity resnets), then fine-tune it afresh from step 0
            grown_from = {"layers_per_block": vae.config.layers_per_block, **{k: (done or {}).get(k) for k in
                                                                             ("step", "minutes", "val_psnr")}}
            vae = deepen_vae(vae, cfg.decoder_layers_per_block, seed=cfg.seed)
            meta = {"step": 0, "minutes": 0.0, "history": [], "grown_from": grown_from}
            log(f"decoder deepened from {grown_from['layers_per_block']} to {cfg.decoder_layers_per_block} resnets "
                f"per block (identity resnets): a new fine-tune from step 0")
        for k, p in vae.named_parameters():
            p.requires_grad_(decoder_keys(k))
        meta["layers_per_block"] = vae.config.layers_per_block
    all_params = list(vae.parameters())
    params = [p for p in all_params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.vae_lr, weight_decay=cfg.weight_decay)
    if (cfg.state / f"{name}.safetensors").exists() and not grow:
        if part == "vae":  # (the decoder stage's weights came with load_vae)
            vae.load_state_dict(load_tensors(cfg.state / f"{name}.safetensors"))
        if (cfg.state / f"{name}_opt.safetensors").exists():
            restore_optimizer(opt, params, load_tensors(cfg.state / f"{name}_opt.safetensors"), meta["step"])
        else:  # restored from a weights-only snapshot: fresh Adam moments, lr warmed up again from here
            meta.setdefault("fresh_moments_at", []).append(meta["step"])
            log(f"no {name}_opt.safetensors: fresh AdamW moments, lr re-warmed from step {meta['step']}")
        log(f"resumed {name} at step {meta['step']} ({meta['minutes']:.1f} min)")
    elif part == "decoder" and not grow and (cfg.state / "vae_opt.safetensors").exists():
        # continue the VAE's own Adam moments for the decoder parameters (no warm-up)
        full = load_tensors(cfg.state / "vae_opt.safetensors")
        index = {id(p): i for i, p in enumerate(all_params)}
        sub = {f"{j}.{m}": full[f"{index[id(p)]}.{m}"] for j, p in enumerate(params) for m in ("m", "v")
               if f"{index[id(p)]}.{m}" in full}
        vae_step = read_json(cfg.state / "vae.json")["step"]
        restore_optimizer(opt, params, sub, vae_step)
        meta["start_lr_step"] = vae_step
    if part == "decoder" and cfg.vae_decay_steps > 0:
        check_decoder_schedule(meta, cfg, cfg.state / f"{name}.json")
        meta["lr_schedule"] = list(decoder_schedule(cfg))
    lr_offset = meta.get("start_lr_step", 0)
    start_step, t0 = meta["step"], time.time()
    last_save, loss_avg = t0, None

    def save():
        meta["minutes"] += (time.time() - save.t) / 60.0
        save.t = time.time()
        vae.eval()
        meta["val_psnr"] = vae_psnr(vae, val.images)
        if meta["history"] and meta["history"][-1]["step"] == meta["step"]:
            meta["history"][-1]["val_psnr"] = meta["val_psnr"]
        vae.train()
        meta["hardware"] = hardware()
        state = vae.state_dict()
        if part == "decoder":
            state = {k: v for k, v in state.items() if decoder_keys(k)}
        save_tensors(cfg.state / f"{name}.safetensors", state, meta["step"])
        save_tensors(cfg.state / f"{name}_opt.safetensors", optimizer_tensors(opt, params), meta["step"])
        write_json(cfg.state / f"{name}.json", meta)
        log(f"{name} step {meta['step']} loss {loss_avg:.4f} val PSNR {meta['val_psnr']:.2f} dB "
            f"({meta['minutes']:.1f} min) saved")

    save.t = t0
    vae.train()
    bar = tqdm(desc=name, unit="step", initial=start_step, file=sys.stderr, mininterval=10)
    while _keep_going(cfg, meta["step"], t0):
        step = meta["step"]
        idx = step_rng(cfg.seed, step, stream).integers(len(train), size=cfg.vae_batch)
        x = images_to_tensor(train.images[idx])  # (B, 3, 64, 64)
        with torch.set_grad_enabled(part == "vae"):
            post = vae.encode(x).latent_dist
            z = post.sample(generator=torch_gen(cfg.seed, step, stream + 1))  # (B, 4, 16, 16)
        rec = vae.decode(z).sample
        loss = (rec - x).abs().mean() + (rec - x).pow(2).mean()
        if part == "vae":
            loss = loss + cfg.vae_kl_weight * post.kl().mean()
        for g in opt.param_groups:
            if part == "decoder" and cfg.vae_decay_steps > 0:  # a fresh schedule, not the VAE's decayed tail
                g["lr"] = lr_at(step, *decoder_schedule(cfg))
            else:
                g["lr"] = lr_at(step + lr_offset, cfg.vae_lr, cfg.warmup_steps, cfg.vae_decay_steps,
                                cfg.vae_min_lr_frac)
            if meta.get("fresh_moments_at"):
                g["lr"] *= min(1.0, (step - meta["fresh_moments_at"][-1] + 1) / max(1, cfg.warmup_steps))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        loss_avg, last_save = _record_step(meta, step, loss.item(), loss_avg, 0.98, bar, cfg, last_save, save)
    bar.close()
    if loss_avg is not None:
        meta["history"].append({"step": meta["step"], "loss": loss_avg})
        save()
    return meta


_STOP = {"signal": False}  # set by SIGTERM/SIGINT: finish the step, checkpoint, exit


def _request_stop(signum, frame) -> None:
    """First signal: stop after this step with a checkpoint; a second one interrupts at once."""
    if _STOP["signal"]:
        raise KeyboardInterrupt
    _STOP["signal"] = True


def _keep_going(cfg: TrainConfig, step: int, t0: float) -> bool:
    """True while the time budget, the step budget, signals and a ``state/STOP`` file allow another step."""
    if cfg.max_steps > 0 and step >= cfg.max_steps:
        return False
    if _STOP["signal"] or (cfg.state / "STOP").exists():
        return False
    return cfg.minutes <= 0 or (time.time() - t0) < cfg.minutes * 60


# ----------------------------------------------------------------------------- UNet stage


def decoder_layers(cfg: TrainConfig) -> int:
    """Resnets per block of the state's decoder: vae_decoder.json's ``layers_per_block`` (a deepened decoder), else
    the VAE's."""
    return read_json(cfg.state / "vae_decoder.json", {}).get("layers_per_block", cfg.model.vae_layers_per_block)


def load_vae(cfg: TrainConfig, decoder: bool = True):
    """The trained VAE from the state folder, with its scaling factor (1 / latent std) if measured.

    ``decoder=True`` uses the fine-tuned decoder (``vae_decoder.safetensors``) when there is one, deepening the VAE
    first (identity resnets in the encoder, same latents) when that decoder was deepened.
    """
    from .models import build_vae, deepen_vae

    path = cfg.state / "vae.safetensors"
    if not path.exists():
        raise IdseditError(f"no trained VAE in {cfg.state}: run `python -m idsedit.mini.train --stage vae` first")
    sf = read_json(cfg.state / "vae.json", {}).get("scaling_factor", 1.0)
    vae = build_vae(cfg.model, scaling_factor=sf)
    vae.load_state_dict(load_tensors(path))
    if decoder and (cfg.state / "vae_decoder.safetensors").exists():  # fine-tuned decoder (same latents)
        layers = decoder_layers(cfg)
        if layers > vae.config.layers_per_block:
            vae = deepen_vae(vae, layers, seed=cfg.seed)
        vae.load_state_dict(load_tensors(cfg.state / "vae_decoder.safetensors"), strict=False)
    return vae.eval().requires_grad_(False)


def latent_cache(cfg: TrainConfig, world, log: Callable[[str], None]):
    """VAE posterior mean/std of every training scene (fp16), and token ids of every caption.

    Also measures the latent std and stores ``scaling_factor = 1 / std`` in vae.json (once).
    Returns ``(mean (N,4,16,16), std (N,4,16,16), ids (N, 1+K, L) int16)``.
    """
    import torch
    from tqdm.auto import tqdm

    from .data import images_to_tensor, save_npz, tokenize
    from .tokenizer import load_tokenizer

    vae_meta = read_json(cfg.state / "vae.json", {})
    from .data import caption_version

    cv = caption_version(world)  # token ids depend on the captions: v1 names unchanged, later versions tagged
    path = cfg.state / "cache" / (f"latents_{cfg.seed}_{cfg.scenes}_vae{vae_meta.get('step', 0)}"
                                  + ("" if cv == 1 else f"_c{cv}") + ".npz")
    if path.exists():
        with np.load(path, allow_pickle=False) as f:
            mean, std, ids = f["mean"], f["std"], f["ids"]
    else:
        train = scene_cache(cfg, world, "train", log)
        vae = load_vae(cfg, decoder=False)
        mean = np.empty((len(train), cfg.model.latent_channels, cfg.model.latent_size, cfg.model.latent_size),
                        np.float16)
        std = np.empty_like(mean)
        t0 = time.time()
        with torch.no_grad():
            for s in tqdm(range(0, len(train), 256), desc="encode latents", file=sys.stderr):
                post = vae.encode(images_to_tensor(train.images[s:s + 256])).latent_dist
                mean[s:s + 256], std[s:s + 256] = post.mean.numpy(), post.std.numpy()
        tok = load_tokenizer(cfg.state / "tokenizer")
        n, k = train.captions.shape
        ids = tokenize(tok, list(train.captions.reshape(-1))).reshape(n, k, -1).astype(np.int16)
        save_npz(path, mean=mean, std=std, ids=ids)
        log(f"encoded {n} latents + {n * k} captions in {time.time() - t0:.1f}s -> {path}")
    if "scaling_factor" not in vae_meta:
        rng = np.random.default_rng(cfg.seed)
        sub = rng.choice(len(mean), size=min(4096, len(mean)), replace=False)
        z = mean[sub].astype(np.float32) + std[sub].astype(np.float32) * rng.standard_normal(mean[sub].shape)
        vae_meta["latent_std"] = float(z.std())
        vae_meta["scaling_factor"] = float(1.0 / z.std())
        write_json(cfg.state / "vae.json", vae_meta)
        log(f"latent std {z.std():.4f} -> scaling_factor {1.0 / z.std():.4f}")
    return mean, std, ids


T_BUCKETS = (0, 100, 300, 500, 700, 1000)
"""Timestep bucket edges of the held-out denoising log ([0, 100), [100, 300), ...)."""


def heldout_set(cfg: TrainConfig, world, log: Callable[[str], None]):
    """Fixed held-out denoising problems: every validation scene x ``heldout_draws`` (t, noise, caption) draws.

    z0 is the VAE posterior mean times the scaling factor; t is stratified over [0, 1000) so every bucket of
    T_BUCKETS is covered; the caption is column 0 (canonical) for the first draw, a random template otherwise.
    Returns dict z0 (M, 4, h, w), noise, t (M,), ids (M, L) long. Deterministic in cfg.seed.
    """
    import torch

    from .data import images_to_tensor, tokenize
    from .tokenizer import load_tokenizer

    val = scene_cache(cfg, world, "val", log)
    vae = load_vae(cfg, decoder=False)
    sf = read_json(cfg.state / "vae.json")["scaling_factor"]
    with torch.no_grad():
        mean = torch.cat([vae.encode(images_to_tensor(val.images[s:s + 128])).latent_dist.mean
                          for s in range(0, len(val), 128)]) * sf
    tok = load_tokenizer(cfg.state / "tokenizer")
    n, k = len(val), cfg.heldout_draws
    rng = np.random.default_rng([cfg.seed, 777])
    cols = rng.integers(val.captions.shape[1], size=(n, k))
    cols[:, 0] = 0
    ids = tokenize(tok, [val.captions[i, cols[i, j]] for i in range(n) for j in range(k)])
    t = (np.arange(n * k) + rng.random(n * k)) / (n * k) * 1000  # stratified over [0, 1000)
    t = rng.permutation(np.floor(t).astype(np.int64))
    gen = torch.Generator().manual_seed(cfg.seed + 777)
    z0 = mean.repeat_interleave(k, dim=0)
    return {"z0": z0, "noise": torch.randn(z0.shape, generator=gen), "t": torch.from_numpy(t),
            "ids": torch.from_numpy(ids).long()}


def heldout_loss(te, unet, hs: dict, alphas, gamma: float, batch: int = 128) -> dict:
    """Held-out denoising metrics of (te, unet) on :func:`heldout_set` problems (no grad):
    ``loss`` the training objective (min-SNR weighted eps MSE), ``eps_mse`` the plain eps MSE, and per
    T_BUCKETS bucket ``eps_mse_<lo>_<hi>`` and ``x0_err_<lo>_<hi>`` = mean ||z0 - z0_hat||_2 / sqrt(dim) with
    z0_hat = (z_t - sqrt(1 - ab) eps_hat) / sqrt(ab)."""
    import torch

    eps_err, x0_err = [], []
    with torch.no_grad():
        for s in range(0, len(hs["t"]), batch):
            z0, noise, t = hs["z0"][s:s + batch], hs["noise"][s:s + batch], hs["t"][s:s + batch]
            ab = alphas[t].view(-1, 1, 1, 1)
            z_t = ab.sqrt() * z0 + (1 - ab).sqrt() * noise
            eps = unet(z_t, t, te(hs["ids"][s:s + batch]).last_hidden_state).sample
            eps_err.append((eps - noise).pow(2).mean(dim=(1, 2, 3)))
            z0_hat = (z_t - (1 - ab).sqrt() * eps) / ab.sqrt()
            x0_err.append((z0_hat - z0).pow(2).mean(dim=(1, 2, 3)).sqrt())
    e, x, t = torch.cat(eps_err), torch.cat(x0_err), hs["t"]
    w = min_snr_weights(alphas, t, gamma)
    out = {"loss": float((w * e).mean()), "eps_mse": float(e.mean())}
    for lo, hi in zip(T_BUCKETS, T_BUCKETS[1:]):
        sel = (t >= lo) & (t < hi)
        out[f"eps_mse_{lo}_{hi}"] = float(e[sel].mean()) if sel.any() else float("nan")
        out[f"x0_err_{lo}_{hi}"] = float(x[sel].mean()) if sel.any() else float("nan")
    return out


def write_csv(path: Path, rows: list[dict]) -> None:
    """Write dict rows (the keys of the first one as the header) as CSV, atomically."""
    lines = [",".join(rows[0])] + [",".join(f"{r[k]:.6g}" if isinstance(r[k], float) else str(r[k]) for k in rows[0])
                                   for r in rows]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def build_text_and_unet(cfg: TrainConfig):
    """Fresh text encoder + UNet sized from the config and the stored tokenizer."""
    import torch

    from .models import build_text_encoder, build_unet
    from .tokenizer import load_tokenizer

    tok = load_tokenizer(cfg.state / "tokenizer")
    torch.manual_seed(cfg.seed)
    te = build_text_encoder(cfg.model, len(tok), tok.bos_token_id, tok.eos_token_id)
    unet = build_unet(cfg.model)
    return tok, te, unet


def train_unet(cfg: TrainConfig, world, log: Callable[[str], None] = print) -> dict:
    """Train UNet + text encoder jointly on epsilon (min-SNR weighted MSE), EMA, CFG dropout; resumes."""
    import torch
    from tqdm.auto import tqdm

    from .models import build_train_scheduler
    from .data import tokenize

    mean, std, ids = latent_cache(cfg, world, log)
    sf = read_json(cfg.state / "vae.json")["scaling_factor"]
    tok, te, unet = build_text_and_unet(cfg)
    empty_ids = torch.from_numpy(tokenize(tok, [""])[0]).long()  # (L,)
    params = list(te.parameters()) + list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=cfg.weight_decay)
    meta = read_json(cfg.state / "unet.json", {"step": 0, "minutes": 0.0, "history": []})
    if (cfg.state / "unet.safetensors").exists():
        te.load_state_dict(load_tensors(cfg.state / "text_encoder.safetensors"))
        unet.load_state_dict(load_tensors(cfg.state / "unet.safetensors"))
        if (cfg.state / "unet_opt.safetensors").exists():
            restore_optimizer(opt, params, load_tensors(cfg.state / "unet_opt.safetensors"), meta["step"])
        else:  # restored from a weights-only snapshot: fresh Adam moments, lr warmed up again from here
            meta.setdefault("fresh_moments_at", []).append(meta["step"])
            log(f"no {cfg.state / 'unet_opt.safetensors'}: fresh AdamW moments, lr re-warmed from step {meta['step']}")
        ema = [load_tensors(cfg.state / "text_encoder_ema.safetensors"), load_tensors(cfg.state / "unet_ema.safetensors")]
        log(f"resumed UNet at step {meta['step']} ({meta['minutes']:.1f} min)")
    else:
        ema = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in (te, unet)]
    ema_pairs = [(ema[j][k], v) for j, m in enumerate((te, unet)) for k, v in m.state_dict().items()
                 if v.dtype.is_floating_point]
    ema_t, live_t = [a for a, _ in ema_pairs], [b for _, b in ema_pairs]
    sched = build_train_scheduler()
    alphas = sched.alphas_cumprod.float()
    mean_t, std_t, ids_t = torch.from_numpy(mean), torch.from_numpy(std), torch.from_numpy(ids)
    t0 = time.time()
    last_save, loss_avg = t0, None

    def save():
        meta["minutes"] += (time.time() - save.t) / 60.0
        save.t = time.time()
        meta["hardware"] = hardware()
        meta["scaling_factor"] = sf
        step = meta["step"]
        save_tensors(cfg.state / "text_encoder.safetensors", te.state_dict(), step)
        save_tensors(cfg.state / "unet.safetensors", unet.state_dict(), step)
        save_tensors(cfg.state / "text_encoder_ema.safetensors", ema[0], step)
        save_tensors(cfg.state / "unet_ema.safetensors", ema[1], step)
        save_tensors(cfg.state / "unet_opt.safetensors", optimizer_tensors(opt, params), step)
        write_json(cfg.state / "unet.json", meta)
        log(f"unet step {meta['step']} loss {loss_avg:.4f} ({meta['minutes']:.1f} min) saved")

    save.t = t0
    hs = heldout_set(cfg, world, log) if cfg.heldout_every > 0 else None
    ema_te, ema_unet = (build_text_and_unet(cfg)[1:] if hs is not None else (None, None))

    def log_heldout():
        """Held-out metrics of the EMA weights -> unet.json["heldout"] and heldout.csv."""
        if any(h["step"] == meta["step"] for h in meta.setdefault("heldout", [])):
            return
        ema_te.load_state_dict(ema[0]), ema_unet.load_state_dict(ema[1])
        ema_te.eval(), ema_unet.eval()
        row = {"step": meta["step"], "minutes": round(meta["minutes"] + (time.time() - save.t) / 60.0, 2),
               "train_loss": loss_avg if loss_avg is not None else float("nan"),
               **heldout_loss(ema_te, ema_unet, hs, alphas, cfg.snr_gamma)}
        meta["heldout"].append(row)
        write_csv(cfg.state / "heldout.csv", meta["heldout"])
        log(f"unet step {meta['step']} held-out loss {row['loss']:.4f} (EMA), eps MSE {row['eps_mse']:.4f}")

    te.train(), unet.train()
    if hs is not None and meta["step"] == 0:
        log_heldout()
    bar = tqdm(desc="unet", unit="step", initial=meta["step"], file=sys.stderr, mininterval=10)
    B = cfg.unet_batch
    lr_points = parse_lr_points(cfg.unet_lr_points)
    while _keep_going(cfg, meta["step"], t0):
        step = meta["step"]
        rng, gen = step_rng(cfg.seed, step, 0), torch_gen(cfg.seed, step, 1)
        idx = torch.from_numpy(rng.integers(len(mean), size=B))
        col = torch.from_numpy(rng.integers(ids.shape[1], size=B))  # canonical or a random template
        drop = torch.from_numpy(rng.random(B) < cfg.cond_dropout)
        tokens = ids_t[idx, col].long()  # (B, L)
        tokens[drop] = empty_ids
        eps_post = torch.randn(mean_t[idx].shape, generator=gen)
        z0 = (mean_t[idx].float() + std_t[idx].float() * eps_post) * sf  # (B, 4, 16, 16)
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (B,), generator=gen)
        if cfg.unet_noise_offset > 0 and step >= cfg.unet_noise_offset_start:
            noise = offset_noise(noise, cfg.unet_noise_offset, gen)
        if cfg.unet_noise_jitter > 0 and step >= cfg.unet_noise_jitter_start:
            where = t >= cfg.unet_noise_jitter_min_t if cfg.unet_noise_jitter_min_t > 0 else None
            noise = jittered_noise(noise, cfg.unet_noise_jitter, gen, where)
        z_t = sched.add_noise(z0, noise, t)
        h = te(tokens).last_hidden_state  # (B, L, hidden)
        eps = unet(z_t, t, h).sample
        w = min_snr_weights(alphas, t, cfg.snr_gamma)  # (B,)
        loss = (w * (eps - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        frac = lr_points_factor(step, lr_points)
        if frac is not None:
            lr = cfg.unet_lr * frac
        else:
            lr = lr_at(step - max(meta.get("fresh_moments_at", [0])), cfg.unet_lr, cfg.warmup_steps)
            lr *= cooldown_factor(step, cfg.unet_cooldown_start, cfg.unet_cooldown_steps, cfg.unet_cooldown_frac)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        with torch.no_grad():  # ema <- d * ema + (1 - d) * live
            d = ema_decay_at(step, cfg.ema_decay)
            torch._foreach_mul_(ema_t, d)
            torch._foreach_add_(ema_t, live_t, alpha=1.0 - d)
        loss_avg, last_save = _record_step(meta, step, loss.item(), loss_avg, 0.99, bar, cfg, last_save, save)
        if hs is not None and meta["step"] % cfg.heldout_every == 0:
            log_heldout()
    bar.close()
    if loss_avg is not None:
        meta["history"].append({"step": meta["step"], "loss": loss_avg})
        save()
    return meta


# ----------------------------------------------------------------------------- entry point


def train_mini(stage: str, cfg: TrainConfig, out: Path | None = None, world=None,
               log: Callable[[str], None] | None = None, export_fp16: bool = False) -> dict:
    """Run one stage on ``cfg.state``: 'vae', 'decoder' (decoder-only fine-tune), 'unet', 'export', or
    'all' (vae, unet, export).

    For 'all', ``cfg.minutes`` is split: VAE gets 15%, the UNet the rest.
    """
    import torch
    from tqdm.auto import tqdm

    from .data import load_world

    if stage not in STAGES:
        raise IdseditError(f"unknown stage {stage!r}; use one of {', '.join(STAGES)}")
    check_config(cfg)
    log = log or (lambda msg: tqdm.write(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr))
    torch.set_num_threads(cfg.threads)
    if threading.current_thread() is threading.main_thread():  # `kill <pid>` = checkpoint and stop
        signal.signal(signal.SIGTERM, _request_stop)
        signal.signal(signal.SIGINT, _request_stop)
    cfg = init_state(cfg, world)
    world = world or load_world(cfg.world, cfg.default_share)
    result = {}
    if stage == "vae":
        result["vae"] = train_vae(cfg, world, log)
    elif stage == "decoder":
        result["decoder"] = train_vae(cfg, world, log, part="decoder")
    elif stage == "unet":
        result["unet"] = train_unet(cfg, world, log)
    elif stage == "all":
        total = cfg.minutes
        cfg.minutes = 0.15 * total
        result["vae"] = train_vae(cfg, world, log)
        cfg.minutes = 0.85 * total
        result["unet"] = train_unet(cfg, world, log)
    if stage in ("export", "all"):
        from .export import export_pipeline

        result["export"] = str(export_pipeline(cfg.state, out or _default_out(), fp16=export_fp16))
        log(f"exported pipeline -> {result['export']}")
    return result


def _default_out() -> Path:
    from . import BUNDLED_DIR

    return BUNDLED_DIR


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The training flags (used by `python -m idsedit.mini.train` and `idsedit train-mini`)."""
    p.add_argument("--stage", choices=STAGES, required=True, help="what to train (or export)")
    p.add_argument("--state", type=Path, default=TrainConfig.state, help="state folder (resumed automatically)")
    p.add_argument("--out", type=Path, default=None, help="export folder (default: the bundled assets/mini-sd)")
    d = TrainConfig()
    for f in fields(TrainConfig):
        if f.name in ("state", "model"):
            continue
        flag = "--" + f.name.replace("_", "-")
        p.add_argument(flag, type=type(getattr(d, f.name)), default=getattr(d, f.name), help=f"(default {getattr(d, f.name)})")
    p.add_argument("--model-json", default=None,
                   help="network sizes as JSON overrides of MiniModelConfig, e.g. '{\"unet_channels\": [64, 128, 128]}' "
                        "(used only when the state folder is created)")
    p.add_argument("--export-fp16", action="store_true",
                   help="--stage export: store the weights as float16 (they still load as float32)")


def config_from_args(a: argparse.Namespace) -> tuple[str, TrainConfig, Path | None]:
    """Parsed flags -> (stage, TrainConfig, export folder)."""
    kw = {f.name: getattr(a, f.name) for f in fields(TrainConfig) if f.name not in ("model",)}
    if getattr(a, "model_json", None):
        try:
            over = json.loads(a.model_json)
            kw["model"] = MiniModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in over.items()})
        except (ValueError, TypeError) as e:
            raise IdseditError(f"--model-json is not a JSON object of MiniModelConfig fields ({e}); "
                               f"fields: {', '.join(MiniModelConfig().to_dict())}") from e
    return a.stage, TrainConfig(**kw), a.out


def parse_args(argv: list[str] | None = None) -> tuple[str, TrainConfig, Path | None]:
    """CLI flags -> (stage, TrainConfig, export folder)."""
    p = argparse.ArgumentParser(prog="python -m idsedit.mini.train", description=__doc__.split("\n")[0])
    add_arguments(p)
    return config_from_args(p.parse_args(argv))


def cli_main(args: argparse.Namespace) -> int:
    """`idsedit train-mini`: user errors propagate as IdseditError (the CLI prints one line)."""
    stage, cfg, out = config_from_args(args)
    train_mini(stage, cfg, out, export_fp16=getattr(args, "export_fp16", False))
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; user errors print one line and exit 2."""
    try:
        p = argparse.ArgumentParser(prog="python -m idsedit.mini.train", description=__doc__.split("\n")[0])
        add_arguments(p)
        a = p.parse_args(argv)
        stage, cfg, out = config_from_args(a)
        train_mini(stage, cfg, out, export_fp16=a.export_fp16)
    except IdseditError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

