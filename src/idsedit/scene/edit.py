"""Text-driven editing of a fitted scene (``idsedit scene edit``): the 2D edit with a radiance field as parameter.

One step (DESIGN.md, "3D editing"):

    i ~ U{training cameras}                                  (the loop's generator)
    x_trg = render(field, camera_i) at the prior's resolution, WITH gradients           (B = views_per_step)
    z_trg = E(x_trg)                                         (prior.encode(..., grad=True): through the VAE)
    z_src = E(render(source field, camera_i)) or E(dataset image i)   (no gradient, cached per camera)
    t, eps = loop.draw_step(...);  loss = loop.distill_step(prior, method, z_src, z_trg, ...)   (the 2D step)
    loss.backward() -> d loss / d field;  Adam step on the field

The method functions and the loss (``loop.distill_step`` / ``loop.distill_loss``) are the 2D ones; nothing about a
method is repeated here. The source scene is only read. Checkpoints (``EDITED/checkpoint.pt``) every
``checkpoint_every`` steps and on cancel; rerunning the same edit resumes it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .. import loop
from ..distill import DistillConfig
from ..errors import IdseditError
from ..rng import PairedSampler
from .data import load_views
from .field import TensoRF
from .render import render_image, render_image_grad
from .store import Scene, atomic_write_bytes, atomic_write_json, is_scene, load_scene, save_scene

CHECKPOINT = "checkpoint.pt"
REPORT = "report.json"
SOURCES = ("render", "data")


def field_lr(base: float = 0.01) -> float:
    """Adam learning rate of the grids when editing a radiance field.

    Adam divides by the gradient's running RMS, so the loss scale (2000 / (H W)) and the latent size cancel out:
    the latents' area rule (:func:`idsedit.loop.sd15_equivalent_lr`) does not apply. The step is half the fit's
    starting grid rate (0.02, TensoRF's), enough to recolour a surface in a few hundred steps without tearing
    the geometry."""
    return base


loop.register_lr_rule("radiance_field", field_lr)


@dataclass
class SceneEditConfig:
    """Settings of a scene edit (method settings: the shared DistillConfig)."""

    method: str = "ids"             # a registered method (variants are resolved by the CLI / variant_config)
    steps: int = 300                # optimisation steps
    lr: float | None = None         # Adam lr of the grids; None: loop.auto_lr("radiance_field")
    lr_basis: float = 1e-3          # Adam lr of the SH basis and the environment map
    seed: int = 0                   # seed of the camera, t and noise draws
    views_per_step: int = 1         # cameras rendered per step (the loss is a mean over them)
    source: str = "render"          # z_src from: render (the frozen source scene) | data (the dataset image)
    t_min: int = loop.T_MIN
    t_max: int = loop.T_MAX
    loss_scale: float = loop.LOSS_SCALE
    weight: float = 1.0
    freeze_geometry: bool = False   # only colour (appearance grids, basis, background) is optimised
    grow_cells: int = 1             # dilate the source's occupancy grid by this many cells (room for new shape)
    occupancy_every: int = 100      # rebuild the occupancy grid every k steps as (grown source grid) OR (cells
                                    # the edited density now fills, dilated): shape may grow further; 0 = never
    step_scale: float = 2.0         # edit renders (edited and source alike) sample every step_scale x the scene's
                                    # step (2 = one sample per grid cell: measured 46-52 dB from the exact render,
                                    # half the cost); the saved scene keeps its own step
    trans_eps: float = 1e-3         # edit renders: drop samples the ray reaches with less transmittance (measured
                                    # 59-63 dB from the 1e-4 render; the fit and `scene render` use 1e-4)
    weight_eps: float = 1e-3        # edit renders: samples with a smaller weight get no colour evaluation
    checkpoint_every: int = 50
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self):
        from ..distill import get_method

        get_method(self.method)
        if self.steps < 1 or self.views_per_step < 1:
            raise IdseditError("--steps and --views-per-step must be >= 1")
        if self.source not in SOURCES:
            raise IdseditError(f"--source-images {self.source!r}: use one of {', '.join(SOURCES)}")
        if not 0 <= self.t_min < self.t_max <= 1000:
            raise IdseditError(f"timestep range [{self.t_min}, {self.t_max}) must lie inside [0, 1000)")
        if not self.step_scale > 0:
            raise IdseditError(f"step_scale must be > 0, got {self.step_scale}")
        if self.lr is not None and not self.lr > 0:
            raise IdseditError(f"--lr must be > 0, got {self.lr}")


@dataclass
class SceneEditResult:
    scene: Scene
    out_dir: Path
    steps_done: int
    cancelled: bool
    seconds: float
    report: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------- cameras
def edit_resolution(hw: tuple[int, int], resolution: int, multiple: int) -> tuple[int, int]:
    """(H, W) with the longer side = ``resolution``, both sides rounded to ``multiple`` (the 2D resize policy)."""
    h, w = hw
    s = resolution / max(h, w)
    return max(multiple, round(h * s / multiple) * multiple), max(multiple, round(w * s / multiple) * multiple)


def scale_intrinsics(intr: Tensor, hw_from: tuple[int, int], hw_to: tuple[int, int]) -> Tensor:
    """fx, cx scale with the width; fy, cy with the height."""
    sx, sy = hw_to[1] / hw_from[1], hw_to[0] / hw_from[0]
    return intr * torch.tensor([sx, sy, sx, sy])


def _train_cameras(scene: Scene, data_override=None):
    """The training cameras of the scene's dataset (c2w (N, 4, 4), intrinsics (N, 4), hw, views-or-None)."""
    path = data_override or scene.data.get("path")
    if not path:
        raise IdseditError(f"{scene.path}: the scene does not name its dataset: pass --data")
    if not Path(path).exists():
        raise IdseditError(f"the scene's dataset {path} does not exist any more: pass --data with its new place")
    hw = tuple(scene.data.get("size") or ()) or None
    views = load_views(path, "train", size=hw, holdout_every=int(scene.data.get("holdout_every", 8)))
    return views


# --------------------------------------------------------------------------------------------------- edit
def _optimizer(f: TensoRF, cfg: SceneEditConfig) -> torch.optim.Adam:
    lr = cfg.lr if cfg.lr is not None else loop.auto_lr("radiance_field")
    app = list(f.app_planes) + list(f.app_lines)
    groups = [{"params": app, "lr": lr}, {"params": list(f.basis.parameters()), "lr": cfg.lr_basis}]
    if not cfg.freeze_geometry:
        groups.append({"params": list(f.density_planes) + list(f.density_lines), "lr": lr})
    if f.env is not None:
        groups.append({"params": [f.env], "lr": lr})
    return torch.optim.Adam(groups, betas=(0.9, 0.99))


def _clone_field(src: TensoRF) -> TensoRF:
    f = TensoRF(dataclasses.replace(src.config, resolution=list(src.config.resolution),
                                    occupancy_resolution=list(src.config.occupancy_resolution)))
    f.load_state_dict(src.state_dict())
    return f


def _grow(occ: Tensor, cells: int) -> Tensor:
    if cells <= 0:
        return occ
    k = 2 * cells + 1
    return torch.nn.functional.max_pool3d(occ[None, None].float(), k, stride=1, padding=cells)[0, 0] > 0


def refresh_occupancy(f: TensoRF, base: Tensor, step: float, generator: torch.Generator) -> float:
    """occupancy = base OR (cells where the edited field's alpha exceeds the threshold, dilated by one cell):
    the grown source grid is always kept, and cells the edit fills are added with a margin to grow into.
    Returns the occupied fraction."""
    cand = _grow(f.occupancy, 1)            # only cells next to occupied ones can have become occupied
    f.update_occupancy(step, generator=generator, candidates=cand)
    with torch.no_grad():
        f.occupancy.logical_or_(base)
    return float(f.occupancy.float().mean())


def edit_scene(prior, scene_dir, source: str, target: str, out_dir, config: SceneEditConfig | None = None, *,
               data=None, should_stop: Callable[[], bool] | None = None, progress: bool = True,
               callback: Callable | None = None, log: Callable[[str], None] | None = None) -> SceneEditResult:
    """Edit the scene in ``scene_dir`` (described by ``source``) towards ``target``; write it to ``out_dir``."""
    cfg = config or SceneEditConfig()
    prior.check_prompt(source, "source prompt")
    prior.check_prompt(target, "target prompt")
    out = Path(out_dir)
    src_scene = load_scene(scene_dir)
    if out.resolve() == Path(scene_dir).resolve():
        raise IdseditError(f"--out {out} is the source scene: the source is never modified; choose another --out")
    if out.exists() and not out.is_dir():
        raise IdseditError(f"--out {out} is a file: give a folder for the edited scene")
    ckpt_path = out / CHECKPOINT
    if is_scene(out) and not ckpt_path.is_file():
        raise IdseditError(f"{out} already holds a scene: choose another --out (or delete it to edit again)")
    views = _train_cameras(src_scene, data)
    hw = edit_resolution(views.hw, prior.resolution, prior.latent_multiple)
    intr = scale_intrinsics(views.intrinsics, views.hw, hw)
    n_cams = len(views)

    f = _clone_field(src_scene.field)
    with torch.no_grad():
        base_occ = _grow(f.occupancy, cfg.grow_cells)
        f.occupancy.copy_(base_occ)
    f.requires_grad_(True)
    if cfg.freeze_geometry:
        for p in list(f.density_planes) + list(f.density_lines):
            p.requires_grad_(False)
    opt = _optimizer(f, cfg)
    # two streams: t and eps (the step stream) apart from CDS's permutations and PDS's second noise (the method
    # stream), so every method sees the same t and eps at every step, as in `idsedit eval`
    sampler = PairedSampler(cfg.seed)
    cam_gen = torch.Generator().manual_seed(cfg.seed + 1)
    occ_gen = torch.Generator().manual_seed(cfg.seed + 2)   # its own stream: every method sees the same cameras
    start, elapsed = 0, 0.0
    key = {"source_scene": str(Path(scene_dir).resolve()), "source": source, "target": target,
           "config": json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)}
    if ckpt_path.is_file():
        try:
            ck = torch.load(ckpt_path, weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise IdseditError(f"{ckpt_path}: cannot read the edit checkpoint ({type(e).__name__}): delete it to "
                               "start over") from None
        old = json.loads(ck["key"])
        old_cfg, new_cfg = json.loads(old.pop("config")), json.loads(key["config"])
        old_cfg.pop("steps"), new_cfg.pop("steps")
        if old != {k: v for k, v in key.items() if k != "config"} or old_cfg != new_cfg:
            raise IdseditError(f"{ckpt_path} belongs to a different edit (scene, prompts or settings differ): "
                               "rerun with the same arguments to resume, or delete it to start over")
        f.load_state_dict(ck["field"])
        opt.load_state_dict(ck["optimizer"])
        sampler.generator.set_state(ck["sampler"])
        if "sampler_method" in ck:
            sampler.method_generator.set_state(ck["sampler_method"])
        cam_gen.set_state(ck["cameras"])
        occ_gen.set_state(ck["occupancy_generator"])
        start, elapsed = int(ck["step"]), float(ck["elapsed"])
        if log:
            log(f"resuming {out} from step {start}")

    edit_step = src_scene.step * cfg.step_scale
    cond_src = prior.encode_text(source, cfg.distill.negative_prompt)
    cond_trg = prior.encode_text(target, cfg.distill.negative_prompt)
    z_cache: dict[int, Tensor] = {}
    data_images = None
    if cfg.source == "data":
        data_images = load_views(data or src_scene.data["path"], "train", size=hw,
                                 holdout_every=int(src_scene.data.get("holdout_every", 8))).images

    def z_source(i: int) -> Tensor:
        if i not in z_cache:
            if data_images is not None:
                img = data_images[i]
            else:
                img = render_image(src_scene.field, views.c2w[i], intr[i], hw, edit_step, near=src_scene.near).rgb
            z_cache[i] = prior.encode(img.permute(2, 0, 1)[None].clamp(0, 1))
        return z_cache[i]

    def save_ckpt(step: int, spent: float) -> None:
        state = {"step": step, "elapsed": spent, "field": f.state_dict(), "optimizer": opt.state_dict(),
                 "sampler": sampler.generator.get_state(),
                 "sampler_method": sampler.method_generator.get_state(), "cameras": cam_gen.get_state(),
                 "occupancy_generator": occ_gen.get_state(), "key": json.dumps(key)}
        atomic_write_bytes(ckpt_path, lambda tmp: torch.save(state, tmp))

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc=f"scene {cfg.method}", unit="step", dynamic_ncols=True)
    times = {"render_s": 0.0, "encode_s": 0.0, "method_s": 0.0, "backward_s": 0.0}
    cpu = dict.fromkeys(times, 0.0)
    other = {"source_render_s": 0.0, "source_render_cpu_s": 0.0, "occupancy_s": 0.0, "samples": 0}
    calls0 = prior.calls.snapshot()
    t_run = time.perf_counter()
    step, cancelled = start, False
    try:
        while step < cfg.steps:
            if should_stop is not None and should_stop():
                cancelled = True
                break
            cams = torch.randint(0, n_cams, (cfg.views_per_step,), generator=cam_gen).tolist()
            jitter = torch.rand(cfg.views_per_step, hw[0] * hw[1], generator=cam_gen)
            s0, c0 = time.perf_counter(), time.process_time()
            z_src = torch.cat([z_source(i) for i in cams])                              # (B, C, h, w)
            t0, p0 = time.perf_counter(), time.process_time()
            other["source_render_s"] += t0 - s0
            other["source_render_cpu_s"] += p0 - c0
            outs = [render_image_grad(f, views.c2w[i], intr[i], hw, edit_step, near=src_scene.near,
                                      jitter=jitter[k], weight_eps=cfg.weight_eps, trans_eps=cfg.trans_eps)
                    for k, i in enumerate(cams)]
            imgs = torch.stack([o.rgb for o in outs])
            other["samples"] += sum(o.n_samples for o in outs)
            t1, p1 = time.perf_counter(), time.process_time()
            z_trg = prior.encode(imgs.permute(0, 3, 1, 2), grad=True)                  # (B, C, h, w)
            t2, p2 = time.perf_counter(), time.process_time()
            draw = loop.draw_step(sampler, z_src, cfg.t_min, cfg.t_max)
            loss, out_m = loop.distill_step(prior, cfg.method, z_src, z_trg, draw, cond_src, cond_trg, cfg.distill,
                                            sampler, scale=cfg.loss_scale, weight=cfg.weight)
            t3, p3 = time.perf_counter(), time.process_time()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            t4, p4 = time.perf_counter(), time.process_time()
            for k, dt, dc in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), (p1 - p0, p2 - p1, p3 - p2, p4 - p3)):
                times[k] += dt
                cpu[k] += dc
            step += 1
            if cfg.occupancy_every > 0 and not cfg.freeze_geometry and step % cfg.occupancy_every == 0 \
                    and step < cfg.steps:
                w0 = time.perf_counter()
                refresh_occupancy(f, base_occ, src_scene.step, occ_gen)
                other["occupancy_s"] += time.perf_counter() - w0
            if bar is not None:
                bar.update(1)
            if callback is not None:
                callback(step, {"cameras": cams, "t": int(draw.t.flatten()[0]), "loss": float(loss.detach()),
                                "render": imgs.detach()})
            if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                save_ckpt(step, elapsed + time.perf_counter() - t_run)
    finally:
        if bar is not None:
            bar.close()
    elapsed += time.perf_counter() - t_run
    f.requires_grad_(False)
    done_here = step - start
    record = {"kind": "edit", "method": cfg.method, "source": source, "target": target, "steps": step,
              "source_scene": str(Path(scene_dir).resolve()), "config": dataclasses.asdict(cfg)}
    scene = Scene(f, src_scene.step, dict(src_scene.data), list(src_scene.history) + [record], src_scene.near)
    if cancelled:
        save_ckpt(step, elapsed)
        return SceneEditResult(scene, out, step, True, elapsed)
    calls = {k: v - calls0[k] for k, v in prior.calls.snapshot().items()}
    report = {"source_scene": str(Path(scene_dir).resolve()), "out": str(out), "source": source, "target": target,
              "method": cfg.method, "steps": step, "seconds": elapsed, "edit_resolution": list(hw),
              "seconds_per_step_this_run": (time.perf_counter() - t_run) / max(done_here, 1) if done_here else None,
              "time_breakdown_s_per_step": {k: v / max(done_here, 1) for k, v in times.items()},
              "cpu_breakdown_s_per_step": {k: v / max(done_here, 1) for k, v in cpu.items()},
              "source_render_s": other["source_render_s"], "source_render_cpu_s": other["source_render_cpu_s"],
              "occupancy_refresh_s": other["occupancy_s"],
              "samples_per_view": other["samples"] / max(done_here * cfg.views_per_step, 1),
              "unet_calls_per_step": {k: v / max(done_here, 1) for k, v in calls.items()},
              "lr": cfg.lr if cfg.lr is not None else loop.auto_lr("radiance_field"),
              "config": dataclasses.asdict(cfg), "torch_threads": torch.get_num_threads()}
    save_scene(scene, out)
    atomic_write_json(out / REPORT, report)
    if ckpt_path.is_file():
        ckpt_path.unlink()
    return SceneEditResult(scene, out, step, False, elapsed, report)
