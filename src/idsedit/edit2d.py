"""The image edit loop: latent optimisation, as in the paper (Sec. 4.1).

    z_src = E(x) (VAE mean * scaling factor);  z_trg <- z_src
    repeat `steps` times:  t ~ U{50..948}, eps ~ N(0, I);  loss = 2000 * w * sum(z_trg * grad) / (H W) [+ aux]
                           z_trg <- z_trg - lr * d loss / d z_trg                      (SGD, lr 0.1, 200 steps)
    x_edit = D(z_trg)

The step itself (loss, mask, finiteness guard, learning-rate rule, cancel) lives in :mod:`idsedit.loop`, shared with
the scene loop. Images of any size: resized for the model keeping the aspect ratio (longer side = the model's
resolution, sides rounded to the UNet's multiple), edited, and resized back to the input size. With a mask (white =
editable) the method's update is multiplied by the mask inside each step (latent cells where it is 0 never move),
and the decoded result is composited over the input outside it. ``should_stop()`` ends an edit early with a partial
result (``cancelled=True``).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .distill import DistillConfig, get_method
from .errors import IdseditError
from .loop import (LOSS_SCALE, LR_SCHEDULES, SD15_LATENT_AREA, T_MAX, T_MIN, RunState, auto_lr,  # noqa: F401
                   distill_step, draw_step, lr_factor, run_steps, sd15_equivalent_lr, t_upper)
from .rng import Sampler


@dataclass
class EditConfig:
    """Settings of one edit (defaults: the official IDS image-editing setup)."""

    method: str = "ids"             # sds | dds | cds | pds | ids
    steps: int = 200                # optimisation steps
    lr: float | None = None         # SGD learning rate; None: 0.1 * (H_lat W_lat) / 64^2, i.e. the official 0.1
                                    # for SD 1.5 at 512x512 and the same per-element step at other latent sizes
    seed: int | None = 0            # seed of the step draws; None = global RNGs, the official code's behaviour
    t_min: int = T_MIN              # t ~ U{t_min, ..., t_max - 1}
    t_max: int = T_MAX
    loss_scale: float = LOSS_SCALE  # the official 2000 (divided by H_lat * W_lat)
    weight: float = 1.0             # w_dds: weight of the distillation term
    frames_every: int = 0           # keep a decoded frame every k steps (0: none)
    lr_schedule: str = "constant"   # constant (official) | linear | cosine decay of the lr over the steps
    t_anneal_to: int | None = None  # t's upper end falls linearly from t_max to this over the steps (None: fixed)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self):
        get_method(self.method)  # unknown names fail here, with the list of valid ones
        if self.steps < 1:
            raise IdseditError(f"--steps must be >= 1, got {self.steps}")
        if not 0 <= self.t_min < self.t_max <= 1000:
            raise IdseditError(f"timestep range [{self.t_min}, {self.t_max}) must lie inside [0, 1000)")
        if self.lr is not None and not self.lr > 0:
            raise IdseditError(f"--lr must be > 0, got {self.lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise IdseditError(f"unknown --lr-schedule {self.lr_schedule!r}: use one of {', '.join(LR_SCHEDULES)}")
        if self.t_anneal_to is not None and not self.t_min < self.t_anneal_to <= self.t_max:
            raise IdseditError(f"--t-anneal-to must lie in ({self.t_min}, {self.t_max}], got {self.t_anneal_to}")


@dataclass
class EditResult:
    """An edited image with everything needed to reproduce and judge it."""

    image: Image.Image                      # edited, at the input size
    source_image: Image.Image               # the input (RGB)
    latent: Tensor                          # final z_trg
    source_latent: Tensor                   # z_src
    config: EditConfig
    source: str
    target: str
    frames: list = field(default_factory=list)    # [(step, PIL image)]
    timings: dict = field(default_factory=dict)   # seconds
    unet_calls: dict = field(default_factory=dict)
    diagnostics: dict = field(default_factory=dict)
    steps_done: int = 0                     # optimizer steps taken (config.steps unless cancelled)
    cancelled: bool = False                 # should_stop() ended the edit early: a partial result

    def record(self) -> dict:
        """Every setting, timing and count as a JSON-serialisable dict."""
        return {"source": self.source, "target": self.target, "config": dataclasses.asdict(self.config),
                "steps_done": self.steps_done, "cancelled": self.cancelled,
                "input_size": list(self.source_image.size), "latent_shape": list(self.latent.shape),
                "timings_s": self.timings, "unet_calls": self.unet_calls, "diagnostics": self.diagnostics}


@dataclass
class InvertResult:
    """A -> B -> A: the forward edit, the backward edit, and the reconstruction PSNR of A."""

    forward: EditResult
    backward: EditResult | None  # None when the forward edit was cancelled (the backward one never ran)
    psnr: float                  # dB, pixels of A->B->A vs A (at input size); nan without a backward edit
    latent_psnr: float           # dB, z after A->B->A vs z_src, peak = max |z_src|; nan without a backward edit
    cancelled: bool = False      # should_stop() ended either edit early


def resolved_lr(config: EditConfig, z_src: Tensor) -> float:
    """config.lr, or the automatic rule of the "latents" parameterisation (:func:`idsedit.loop.sd15_equivalent_lr`)
    for z_src's size when it is None."""
    return config.lr if config.lr is not None else auto_lr("latents", tuple(z_src.shape[-2:]))


def image_to_tensor(img: Image.Image) -> Tensor:
    """PIL RGB -> (1, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def tensor_to_image(x: Tensor) -> Image.Image:
    """(1, 3, H, W) in [0, 1] -> PIL RGB."""
    a = (x[0].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(a)


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    """10 log10(peak^2 / mean((a - b)^2)), in dB (inf for identical inputs)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(peak**2 / mse)


def latent_mask(mask: Image.Image, latent_hw: tuple[int, int], device) -> Tensor:
    """A (1, 1, h, w) soft mask in [0, 1] from a PIL mask (white = editable), area-averaged to the latent grid."""
    m = torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.float32) / 255.0)[None, None]
    return F.interpolate(m, size=latent_hw, mode="area").to(device)


@dataclass
class LatentRun:
    """What :func:`run_latents` returns: the final z_trg and how the loop ended."""

    latent: Tensor          # final (or, when cancelled, partial) z_trg, detached
    steps_done: int         # optimizer steps taken
    cancelled: bool = False  # should_stop() ended the loop early


def run_latents(prior, z_src: Tensor, cond_src, cond_trg, config: EditConfig, *, sampler: Sampler | None = None,
                mask: Tensor | None = None, callback: Callable | None = None, progress: bool = False,
                should_stop: Callable[[], bool] | None = None) -> LatentRun:
    """Optimise z_trg from z_src for up to ``config.steps`` SGD steps (see :func:`edit_latents`)."""
    sampler = sampler if sampler is not None else Sampler.seeded(config.seed)
    z_trg = z_src.detach().clone().requires_grad_(True)
    lr = resolved_lr(config, z_src)
    opt = torch.optim.SGD([z_trg], lr=lr)

    def step(i: int) -> None:
        opt.zero_grad(set_to_none=True)
        opt.param_groups[0]["lr"] = lr * lr_factor(i, config.steps, config.lr_schedule)
        draw = draw_step(sampler, z_src, config.t_min, t_upper(i, config.steps, config.t_max, config.t_anneal_to))
        loss, out = distill_step(prior, config.method, z_src, z_trg, draw, cond_src, cond_trg, config.distill,
                                 sampler, scale=config.loss_scale, weight=config.weight, mask=mask)
        loss.backward()
        opt.step()
        if callback is not None:
            callback(i, z_trg, draw, out)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        def bar(r):
            return tqdm(r, desc=config.method, unit="step", leave=False)
    state = run_steps(config.steps, step, should_stop=should_stop, progress=bar)
    return LatentRun(z_trg.detach(), state.steps_done, state.cancelled)


def edit_latents(prior, z_src: Tensor, cond_src, cond_trg, config: EditConfig, *, sampler: Sampler | None = None,
                 mask: Tensor | None = None, callback: Callable | None = None, progress: bool = False,
                 should_stop: Callable[[], bool] | None = None) -> Tensor:
    """Optimise z_trg from z_src for ``config.steps`` steps; returns the final z_trg (detached).

    ``mask`` (1, 1, h, w) in [0, 1]: the update is multiplied by it inside each step (:func:`idsedit.loop.
    distill_step`), so cells where it is 0 never move. ``callback(step, z_trg, draw, out)`` is called after each
    update (frames, live previews, logging). ``should_stop()`` is asked before every step; when it returns True
    the loop ends and the partial z_trg is returned (:func:`run_latents` also says how many steps were done).
    """
    return run_latents(prior, z_src, cond_src, cond_trg, config, sampler=sampler, mask=mask, callback=callback,
                       progress=progress, should_stop=should_stop).latent


MASK_ASPECT_TOLERANCE = 0.01
"""Relative difference of width/height ratios above which a mask counts as having another aspect ratio."""


def check_mask_aspect(mask_size: tuple[int, int], image_size: tuple[int, int]) -> None:
    """Warn (one line) when the mask's aspect ratio differs from the image's: it will be stretched to fit."""
    (mw, mh), (w, h) = mask_size, image_size
    if abs(mw / mh - w / h) > MASK_ASPECT_TOLERANCE * (w / h):
        warnings.warn(f"the mask is {mw}x{mh} but the image is {w}x{h} (another aspect ratio): the mask is stretched "
                      "to the image; give a mask of the image's size")


def _composite(edited: Image.Image, source: Image.Image, mask: Image.Image | None) -> Image.Image:
    if mask is None:
        return edited
    return Image.composite(edited, source, mask.convert("L").resize(source.size, Image.Resampling.BILINEAR))


def edit_image(prior, image: Image.Image, source: str, target: str, config: EditConfig | None = None, *,
               mask: Image.Image | None = None, progress: bool = True, callback: Callable | None = None,
               z_src: Tensor | None = None, should_stop: Callable[[], bool] | None = None) -> EditResult:
    """Edit ``image`` (described by ``source``) towards ``target`` with ``config.method``.

    ``should_stop()`` is asked before every step; when it returns True the edit ends early and the partial result
    is decoded and returned with ``result.cancelled = True`` and ``result.steps_done`` < ``config.steps``.
    """
    from .images import fit_to_model, restore_size

    config = config or EditConfig()
    prior.check_prompt(source, "source prompt")
    prior.check_prompt(target, "target prompt")
    image = image.convert("RGB")
    fitted = fit_to_model(image, prior.resolution, prior.latent_multiple)
    t0 = time.perf_counter()
    if z_src is None:
        z_src = prior.encode(image_to_tensor(fitted))
    cond_src = prior.encode_text(source, config.distill.negative_prompt)
    cond_trg = prior.encode_text(target, config.distill.negative_prompt)
    t1 = time.perf_counter()
    if mask is not None:
        check_mask_aspect(mask.size, image.size)
    mask_lat = latent_mask(mask.resize(fitted.size), tuple(z_src.shape[-2:]), z_src.device) if mask else None
    frames, fpr_first, fpr_last, fpr_updates = [], [], [], []

    def on_step(i, z, draw, out):
        if "fpr_norms" in out.info and out.info["fpr_norms"]:
            fpr_first.append(out.info["fpr_norms"][0])
            fpr_last.append(out.info["fpr_norms"][-1])
            fpr_updates.append(out.info["fpr_updates"])
        if config.frames_every and (i + 1) % config.frames_every == 0:
            frame = restore_size(tensor_to_image(prior.decode(z.detach())), image.size)
            frames.append((i + 1, _composite(frame, image, mask)))
        if callback is not None:
            callback(i, z, draw, out)

    with prior.counting() as counter:  # this thread's UNet calls only (a shared prior may serve other edits)
        run = run_latents(prior, z_src, cond_src, cond_trg, config, mask=mask_lat, callback=on_step,
                          progress=progress, should_stop=should_stop)
    z = run.latent
    t2 = time.perf_counter()
    edited = _composite(restore_size(tensor_to_image(prior.decode(z)), image.size), image, mask)
    t3 = time.perf_counter()
    calls = counter.snapshot()
    per = max(run.steps_done, 1)
    calls.update({f"{k}_per_step": calls[k] / per for k in ("forward", "backward", "samples")})
    diagnostics = {"lr": resolved_lr(config, z_src)}
    if fpr_first:
        diagnostics |= {"fpr_residual_first_mean": float(np.mean(fpr_first)),
                       "fpr_residual_last_mean": float(np.mean(fpr_last)),
                       "fpr_updates_mean": float(np.mean(fpr_updates))}
    return EditResult(image=edited, source_image=image, latent=z, source_latent=z_src, config=config, source=source,
                      target=target, frames=frames, unet_calls=calls, diagnostics=diagnostics,
                      timings={"encode_s": t1 - t0, "edit_s": t2 - t1, "decode_s": t3 - t2, "total_s": t3 - t0,
                               "per_step_s": (t2 - t1) / per},
                      steps_done=run.steps_done, cancelled=run.cancelled)


def invert_image(prior, image: Image.Image, source: str, target: str, config: EditConfig | None = None, *,
                 progress: bool = True, should_stop: Callable[[], bool] | None = None) -> InvertResult:
    """Edit A -> B with (source, target), then B -> A with (target, source) from B's latent; PSNR of A->B->A vs A.

    The backward edit starts from the forward edit's latent (no VAE round trip in between), so the score measures
    the method, not the autoencoder. ``should_stop`` is passed to both edits; a cancelled forward edit skips the
    backward one (``backward=None``, PSNRs nan), and either cancellation sets ``cancelled``.
    """
    config = config or EditConfig()
    fwd = edit_image(prior, image, source, target, config, progress=progress, should_stop=should_stop)
    if fwd.cancelled:
        return InvertResult(fwd, None, float("nan"), float("nan"), cancelled=True)
    bwd = edit_image(prior, fwd.image, target, source, config, progress=progress, z_src=fwd.latent,
                     should_stop=should_stop)
    a = np.asarray(image.convert("RGB"), np.float32) / 255.0
    aba = np.asarray(bwd.image, np.float32) / 255.0
    z0, z2 = fwd.source_latent, bwd.latent
    peak = float(z0.abs().max())
    return InvertResult(fwd, bwd, psnr(a, aba), psnr(z0.cpu().numpy(), z2.cpu().numpy(), peak),
                        cancelled=bwd.cancelled)
