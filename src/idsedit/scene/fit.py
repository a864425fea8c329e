"""Fitting a radiance field to posed images (``idsedit scene fit``).

Each step draws ``batch_rays`` random pixels of the training views (a seeded generator), renders them with a
jittered sample offset and minimises the mean squared colour error (+ an optional L1 on density) with Adam:
the grids at ``lr_grid``, the SH basis at ``lr_basis``, both decaying exponentially to ``lr_decay`` times their
start at step ``lr_decay_steps`` (TensoRF's schedule, with a fixed horizon: a short fit is the start of a long
one); the learned background at ``lr_env`` from step ``env_start``. Coarse to fine: the grids start with
``n_voxels_init`` cells and are upsampled at the steps ``upsample_at`` (cell counts log-spaced up to ``n_voxels``;
the sample spacing follows the cell size, so early steps are cheap). The occupancy grid (``occupancy_scale`` x
the final resolution) is all-occupied until ``occupancy_start`` and rebuilt then and every ``occupancy_every``
steps (see :func:`rebuild_occupancy`).

Checkpoints (``SCENE/checkpoint.pt``: field, optimiser, generator, step; loaded with ``weights_only=True``) are
written every ``checkpoint_every`` steps and when ``should_stop()`` turns True; rerunning the same fit resumes
from it and, with the same seed, reaches the same weights as an uninterrupted run.
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

from ..errors import IdseditError
from .data import Views, has_split, load_views
from .field import FieldConfig, TensoRF
from .render import camera_rays, depth_for_files, distortion_loss, render_image, render_rays
from .store import Scene, atomic_write_bytes, atomic_write_json, is_scene, save_scene

CHECKPOINT = "checkpoint.pt"
REPORT = "report.json"


@dataclass
class FitConfig:
    """Settings of a fit (defaults: a 64x64 shapes-world scene to > 30 dB held-out in ~2.5 CPU minutes)."""

    steps: int = 400                # optimisation steps
    batch_rays: int = 4096          # rays per step
    seed: int = 0                   # seed of the ray batches, jitter and field initialisation
    n_voxels: int = 96 ** 3         # grid cells in total at the end (cubic cells, spread over the box's axes)
    density_rank: int = 16          # TensoRF density rank per component
    app_rank: int = 24              # TensoRF appearance rank per component
    sh_degree: int = 2              # view dependence of colour (0..2)
    density_shift: float = -10.0    # sigma = 25 softplus(f + shift): -10 starts empty (TensoRF); higher = foggy start
    step_ratio: float = 0.5         # sample spacing along rays, in cells
    lr_grid: float = 0.06           # Adam learning rate of the grids
    lr_basis: float = 1e-3          # Adam learning rate of the SH basis
    lr_env: float = 0.03            # Adam learning rate of the learned background (from env_start on)
    lr_decay: float = 0.1           # the learning rate reaches lr_decay x its start at step lr_decay_steps
    lr_decay_steps: int = 1500      # ... (exponential; 0 = at the last step). Independent of --steps, so a short
                                    # fit is the start of a long one (measured: a 300-step run decaying to 0.1
                                    # at its end reached 27.8 dB at step 200, this schedule 29.8 dB)
    env_start: int = 50             # the learned background's lr is 0 before this step: surfaces of uniform colour
                                    # (a floor) become geometry before the background can imitate them
    env_init: str = "gray"          # the learned background's start: "gray" = sigmoid(0) = 0.5, "mean" = the
                                    # training images' mean colour (every direction; see init_background). Neither
                                    # fits every scene from images alone (docs/scene.md: mean fixes results scenes
                                    # 0-2, 24.6 -> 33.6 dB, and breaks s113, 32.0 -> 19.1 dB)
    l1_density: float = 1e-4        # weight of mean |density plane and line values| (clears floaters)
    tv_density: float = 0.0         # weight of the density grids' total variation (0.01 made thick, foggy surfaces)
    tv_app: float = 0.001           # weight of the appearance grids' total variation
    opacity_entropy: float = 0.0    # weight of the rays' binary opacity entropy (each ray sees a surface or not)
    distortion: float = 0.0         # weight of mip-NeRF 360's distortion loss (world units): compact surfaces
    depth_weight: float = 0.0       # > 0: supervise with the dataset's depth maps (frames' depth_path, distance
                                    # along the ray, inf = background): see depth_loss
    n_voxels_init: int = 48 ** 3    # grid cells at the start (coarse to fine)
    upsample_at: tuple = (50, 150, 250)    # steps at which the grids are upsampled towards n_voxels
    occupancy_start: int = 50       # first occupancy-grid rebuild (all cells are occupied before)
    occupancy_every: int = 50       # then rebuild it every k steps
    occupancy_scale: float = 1.0    # occupancy cells per final grid cell along each axis (1 = the same size)
    occupancy_alpha: float = 1e-2   # a cell is occupied when alpha = 1 - exp(-sigma step) somewhere in it exceeds this
    eval_every: int = 0             # > 0: held-out PSNR every k steps into report["curve"] (time excluded)
    checkpoint_every: int = 250     # write checkpoint.pt every k steps
    holdout_every: int = 8          # single transforms.json without split lists: every k-th frame is held out
    size: int | None = None         # resize frames (longer side) before fitting; None: the data's resolution
    background: str = "auto"        # auto (white for RGBA data, else learned) | learned | white | black | r,g,b
    bbox: list | None = None        # [[x0,y0,z0],[x1,y1,z1]]; None: from the data (see scene_box)

    def __post_init__(self):
        for name in ("steps", "batch_rays", "n_voxels", "density_rank", "app_rank"):
            if int(getattr(self, name)) < 1:
                raise IdseditError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.sh_degree <= 2:
            raise IdseditError(f"--sh-degree must be 0, 1 or 2, got {self.sh_degree}")
        self.upsample_at = tuple(sorted(int(v) for v in self.upsample_at))
        if not (self.step_ratio > 0 and self.lr_grid > 0 and self.lr_basis > 0 and 0 < self.lr_decay <= 1):
            raise IdseditError("step ratio and learning rates must be > 0 and lr decay in (0, 1]")


@dataclass
class FitResult:
    """What a fit produced, with its numbers."""

    scene: Scene
    out_dir: Path
    steps_done: int
    cancelled: bool
    psnr: float | None              # held-out PSNR (dB), mean over views; None without a held-out split
    eval_split: str | None
    seconds: float                  # wall time of the optimisation (this run and any resumed ones)
    report: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------- box
def scene_box(views: Views, margin: float = 0.05) -> list:
    """The field's box: the file's ``aabb``; for a shapes-world dataset (its ``scene`` key) the floor disc and
    the objects; otherwise a cube around the point nearest all optical axes, half-size 0.6 x the median camera
    distance to it (NeRF-synthetic: cameras at 4 units give [-2.4, 2.4]^3)."""
    meta = views.meta
    if "aabb" in meta:
        a = meta["aabb"]
        return [[float(v) for v in a[0]], [float(v) for v in a[1]]]
    if isinstance(meta.get("scene"), dict):
        from ..shapes.scene import FLOOR_RADIUS

        objs = meta["scene"].get("objects", [])
        top = max([2.0 * float(o.get("size", 1.0)) for o in objs] + [1.0]) + 0.2
        r = FLOOR_RADIUS + margin
        return [[-r, -0.2, -r], [r, top, r]]
    c2w = views.c2w.double().numpy()
    o, d = c2w[:, :3, 3], -c2w[:, :3, 2]
    a = np.zeros((3, 3))
    b = np.zeros(3)
    for oi, di in zip(o, d):
        p = np.eye(3) - np.outer(di, di)
        a += p
        b += p @ oi
    centre = np.linalg.lstsq(a, b, rcond=None)[0]
    half = 0.6 * float(np.median(np.linalg.norm(o - centre, axis=1)))
    return [(centre - half).tolist(), (centre + half).tolist()]


def resolve_background(spec: str, views: Views) -> str:
    return ("white" if views.had_alpha else "learned") if spec == "auto" else spec


# --------------------------------------------------------------------------------------------------- setup
def resolution_schedule(cfg: FitConfig, bbox) -> list[list[int]]:
    """Grid resolution of each stage: cell counts log-spaced from n_voxels_init to n_voxels."""
    n = len(cfg.upsample_at)
    init = min(cfg.n_voxels_init, cfg.n_voxels)
    counts = [cfg.n_voxels] if n == 0 else \
        [round(math.exp(math.log(init) + (math.log(cfg.n_voxels) - math.log(init)) * k / n))
         for k in range(n + 1)]
    return [FieldConfig.for_box(bbox, c).resolution for c in counts]


def build_field(cfg: FitConfig, views: Views, generator: torch.Generator) -> TensoRF:
    bbox = cfg.bbox if cfg.bbox is not None else scene_box(views)
    stages = resolution_schedule(cfg, bbox)
    fcfg = FieldConfig(aabb=bbox, resolution=stages[0], density_rank=cfg.density_rank, app_rank=cfg.app_rank,
                       sh_degree=cfg.sh_degree, background=resolve_background(cfg.background, views),
                       density_shift=cfg.density_shift,
                       occupancy_resolution=[max(2, round(v * cfg.occupancy_scale)) for v in stages[-1]])
    return TensoRF(fcfg, generator=generator)


def init_background(f: TensoRF, views: Views, how: str = "mean") -> None:
    """Set the learned background's start: ``mean``: every texel's logit = logit(mean colour of the training
    images) (clamped to [0.02, 0.98]); ``gray``: logit 0 (0.5). While the background is held fixed (the first
    ``env_start`` steps), every pixel whose colour differs from it must be painted with density; the pixels that
    match it need none. Starting at the images' mean (mostly the floor's colour) leaves the density to the object,
    its shadow and what differs from the mean, which the views agree on; a mid-gray start made a coloured floor
    into an opaque view-dependent layer near the cameras on results scenes 0-2; on s113 (gray floor, white sky)
    the mean start fails instead (measured in docs/scene.md)."""
    if f.env is None or how == "gray":
        return
    if how != "mean":
        raise IdseditError(f"env_init {how!r}: use mean or gray")
    m = views.images.reshape(-1, 3).mean(0).clamp(0.02, 0.98)
    with torch.no_grad():
        f.env.copy_(torch.log(m / (1 - m)).view(1, 3, 1, 1).expand_as(f.env))


def make_optimizer(f: TensoRF, cfg: FitConfig) -> torch.optim.Adam:
    grids = list(f.density_planes) + list(f.density_lines) + list(f.app_planes) + list(f.app_lines)
    groups = [{"params": grids, "lr": cfg.lr_grid, "base_lr": cfg.lr_grid},
              {"params": list(f.basis.parameters()), "lr": cfg.lr_basis, "base_lr": cfg.lr_basis}]
    if f.env is not None:
        groups.append({"params": [f.env], "lr": cfg.lr_env, "base_lr": cfg.lr_env, "env": True})
    return torch.optim.Adam(groups, betas=(0.9, 0.99))


def set_lr(opt: torch.optim.Optimizer, step: int, total: int, decay: float, env_start: int = 0) -> None:
    """lr(step) = base_lr * decay ** (step / total); 0 for the background before ``env_start``."""
    for g in opt.param_groups:
        g["lr"] = 0.0 if g.get("env") and step < env_start else g["base_lr"] * decay ** (step / max(total, 1))


def opacity_entropy(opacity: Tensor, eps: float = 1e-6) -> Tensor:
    """Mean binary entropy -(o log o + (1 - o) log(1 - o)) of the rays' opacities o: pushes each ray to either
    end on a surface (o = 1) or see the background (o = 0), so that half-transparent slabs (a uniform floor
    painted as fog, with the background showing through) become surfaces."""
    o = opacity.clamp(eps, 1 - eps)
    return -(o * torch.log(o) + (1 - o) * torch.log(1 - o)).mean()


def depth_loss(weights: Tensor, t: Tensor, opacity: Tensor, gt: Tensor) -> Tensor:
    """Depth supervision of a ray batch (padded samples weights w, distances t (R, K); opacity (R,); ground-truth
    distance along the ray gt (R,), +inf where the ray sees the background), mean over rays of

        finite gt:  sum_i w_i |t_i - gt| + (1 - opacity)     (the ray ends at gt, and does end)
        inf gt:     opacity                                   (the ray sees the background)

    (world units + opacity). The first term is the expected distance of the ray's end from the truth, so density
    away from the true surface (a floor painted as fog near the cameras) is penalised even when the colour fits."""
    fin = torch.isfinite(gt)
    g = torch.where(fin, gt, torch.zeros_like(gt))
    on = (weights * (t - g[:, None]).abs()).sum(1) + (1 - opacity)
    return torch.where(fin, on, opacity).mean()


def load_depths(views: Views) -> Tensor:
    """The training views' depth maps (N, H, W) from their frames' ``depth_path`` (.npy, H x W, distance along the
    ray, inf = no surface); an error naming the frame when one is missing or has another size."""
    out = []
    for i, fr in enumerate(views.frames):
        dp = fr.get("depth_path")
        path = views.source.parent / dp if dp else None
        if path is None or not path.is_file():
            raise IdseditError(f"{views.source}: frame {views.names[i]} has no depth map (depth_path) for "
                               "depth supervision: fit without --depth-weight")
        d = np.load(path)
        if tuple(d.shape) != tuple(views.hw):
            raise IdseditError(f"{path}: depth map is {d.shape}, the frame is {tuple(views.hw)}: fit at the data's "
                               "resolution (no --size) to use depth supervision")
        out.append(torch.from_numpy(np.asarray(d, np.float32)))
    return torch.stack(out)


def rebuild_occupancy(f: TensoRF, step: float, gen: torch.Generator, alpha: float = 1e-3) -> float:
    """Rebuild the occupancy grid, evaluating only the cells within one cell of an occupied one (all cells on
    the first build); if the field is still empty everywhere (nothing would stay occupied), keep the old grid so
    that the fit can still grow density. Returns the occupied fraction."""
    old = f.occupancy.clone()
    cand = None if bool(old.all()) else \
        torch.nn.functional.max_pool3d(old[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0
    frac = f.update_occupancy(step, alpha, generator=gen, candidates=cand)
    if frac == 0.0:
        f.occupancy.copy_(old)
        return float(old.float().mean())
    return frac


def all_rays(views: Views) -> tuple[Tensor, Tensor]:
    """Origins and directions of every pixel of every view, (N H W, 3) each."""
    o, d = zip(*[camera_rays(views.c2w[i], views.intrinsics[i], views.hw) for i in range(len(views))])
    return torch.cat(o), torch.cat(d)


def psnr(a: Tensor, b: Tensor) -> float:
    """10 log10(1 / mean((a - b)^2)) for images in [0, 1]."""
    mse = float(((a.clamp(0, 1) - b) ** 2).mean())
    return math.inf if mse == 0 else -10 * math.log10(mse)


def evaluate(scene: Scene, views: Views) -> dict:
    """Per-view and mean PSNR of the scene's renders against ``views``; depth error where the data has depths."""
    rows = []
    for i in range(len(views)):
        out = render_image(scene.field, views.c2w[i], views.intrinsics[i], views.hw, scene.step, near=scene.near)
        row = {"name": views.names[i], "psnr": psnr(out.rgb, views.images[i])}
        dp = views.frames[i].get("depth_path") if views.frames else None
        if dp and (views.source.parent / dp).is_file() and tuple(np.load(views.source.parent / dp).shape) == views.hw:
            gt = torch.from_numpy(np.load(views.source.parent / dp)).float()
            pred = depth_for_files(out)
            both = torch.isfinite(gt) & torch.isfinite(pred)
            row["depth_abs_err"] = float((pred[both] - gt[both]).abs().mean()) if bool(both.any()) else None
            row["surface_agreement"] = float((torch.isfinite(gt) == torch.isfinite(pred)).float().mean())
        rows.append(row)
    out = {"psnr": float(np.mean([r["psnr"] for r in rows])), "views": rows}
    errs = [r["depth_abs_err"] for r in rows if r.get("depth_abs_err") is not None]
    if errs:
        out["depth_abs_err"] = float(np.mean(errs))
    return out


# --------------------------------------------------------------------------------------------------- checkpoint
def _save_checkpoint(path: Path, f: TensoRF, opt, gen: torch.Generator, step: int, elapsed: float, cfg: FitConfig,
                     data: dict) -> None:
    state = {"step": step, "elapsed": elapsed, "field": f.state_dict(), "optimizer": opt.state_dict(),
             "generator": gen.get_state(), "config": json.dumps(dataclasses.asdict(cfg)),
             "field_config": json.dumps(f.config.to_dict()), "data": json.dumps(data)}
    atomic_write_bytes(path, lambda tmp: torch.save(state, tmp))


def _load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, weights_only=True)
    except Exception as e:  # noqa: BLE001  (any unreadable checkpoint is the same user problem)
        raise IdseditError(f"{path}: cannot read the fit checkpoint ({type(e).__name__}): delete it to start over") \
            from None


def _resume_key(cfg: FitConfig) -> dict:
    """The settings a resumed fit must share with the interrupted one (steps may grow)."""
    d = json.loads(json.dumps(dataclasses.asdict(cfg)))     # as stored (tuples become lists)
    for k in ("steps", "checkpoint_every", "eval_every"):
        d.pop(k)
    return d


# --------------------------------------------------------------------------------------------------- fit
def fit_scene(data, out_dir, config: FitConfig | None = None, *, should_stop: Callable[[], bool] | None = None,
              progress: bool = True, log: Callable[[str], None] | None = None,
              callback: Callable[[int, dict], None] | None = None) -> FitResult:
    """Fit a field to the training split of ``data`` and write the scene to ``out_dir`` (resuming from its
    checkpoint when there is one). Returns a :class:`FitResult`; ``cancelled`` when ``should_stop`` ended it.
    ``callback(step, info)`` after each step (info: loss, samples, sample_step)."""
    cfg = config or FitConfig()
    out = Path(out_dir)
    data_path = Path(data).resolve()
    if out.exists() and not out.is_dir():
        raise IdseditError(f"--out {out} is a file: give a folder for the scene")
    if out.resolve() == data_path or (data_path.is_dir() and out.resolve() in data_path.parents) \
            or (out.resolve() == data_path.parent):
        raise IdseditError(f"--out {out} would mix the scene with the dataset: choose a separate folder")
    ckpt_path = out / CHECKPOINT
    if is_scene(out) and not ckpt_path.is_file():
        raise IdseditError(f"{out} already holds a fitted scene: choose another --out (or delete it to refit)")
    train = load_views(data_path, "train", size=cfg.size, holdout_every=cfg.holdout_every)
    eval_split = next((s for s in ("test", "val") if has_split(data_path, s, cfg.holdout_every)), None)
    held = load_views(data_path, eval_split, size=train.hw, holdout_every=cfg.holdout_every) if eval_split else None
    data_info = {"path": str(data_path), "holdout_every": cfg.holdout_every, "size": list(train.hw),
                 "background": list(train.background), "eval_split": eval_split}

    gen = torch.Generator().manual_seed(cfg.seed)
    f = build_field(cfg, train, gen)
    init_background(f, train, cfg.env_init)
    opt = make_optimizer(f, cfg)
    start, elapsed = 0, 0.0
    if ckpt_path.is_file():
        ck = _load_checkpoint(ckpt_path)
        old = json.loads(ck["config"])
        if {k: old.get(k) for k in _resume_key(cfg)} != _resume_key(cfg):
            diff = [k for k, v in _resume_key(cfg).items() if old.get(k) != v]
            raise IdseditError(f"{ckpt_path} was made with different settings ({', '.join(diff)}): rerun with the "
                               "same flags to resume, or delete it to start over")
        fcfg = FieldConfig(**{**json.loads(ck["field_config"]),
                              "env_size": tuple(json.loads(ck["field_config"])["env_size"])})
        f = TensoRF(fcfg)
        f.load_state_dict(ck["field"])
        opt = make_optimizer(f, cfg)
        opt.load_state_dict(ck["optimizer"])
        gen.set_state(ck["generator"])
        start, elapsed = int(ck["step"]), float(ck["elapsed"])
        if log:
            log(f"resuming {out} from step {start}")
    stages = resolution_schedule(cfg, f.config.aabb)
    final_step = FieldConfig(aabb=f.config.aabb, resolution=stages[-1]).voxel_size * cfg.step_ratio
    o_all, d_all = all_rays(train)
    rgb_all = train.images.reshape(-1, 3)
    depth_all = load_depths(train).reshape(-1) if cfg.depth_weight > 0 else None
    n_rays = o_all.shape[0]

    def stopping() -> bool:
        return should_stop is not None and should_stop()

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc="fit", unit="step", dynamic_ncols=True)
    cancelled = False
    t_run = time.perf_counter()
    cpu_run = time.process_time()
    paused = [0.0, 0.0]             # wall and CPU seconds of the held-out evaluations of the curve
    curve = []
    step = start
    loss_ema = None
    try:
        while step < cfg.steps:
            if stopping():
                cancelled = True
                break
            if step in cfg.upsample_at:
                f.upsample(stages[cfg.upsample_at.index(step) + 1])
                opt = make_optimizer(f, cfg)
            st = f.config.voxel_size * cfg.step_ratio
            set_lr(opt, step, cfg.lr_decay_steps or cfg.steps, cfg.lr_decay, cfg.env_start)
            idx = torch.randint(0, n_rays, (cfg.batch_rays,), generator=gen)
            jitter = torch.rand(cfg.batch_rays, generator=gen)
            res = render_rays(f, o_all[idx], d_all[idx], st, jitter=jitter, near=0.0)
            mse = ((res.rgb - rgb_all[idx]) ** 2).mean()
            loss = mse
            if cfg.l1_density > 0:
                loss = loss + cfg.l1_density * f.l1_density()
            if cfg.tv_density > 0:
                loss = loss + cfg.tv_density * f.tv("density")
            if cfg.tv_app > 0:
                loss = loss + cfg.tv_app * f.tv("app")
            if cfg.distortion > 0 and res.weights is not None:
                loss = loss + cfg.distortion * distortion_loss(res.weights, res.t, st)
            if depth_all is not None and res.weights is not None:
                loss = loss + cfg.depth_weight * depth_loss(res.weights, res.t, res.opacity, depth_all[idx])
            if cfg.opacity_entropy > 0:
                loss = loss + cfg.opacity_entropy * opacity_entropy(res.opacity)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step == cfg.occupancy_start or (step > cfg.occupancy_start and (
                    (step - cfg.occupancy_start) % cfg.occupancy_every == 0 or step in cfg.upsample_at)):
                rebuild_occupancy(f, final_step, gen, cfg.occupancy_alpha)
            lv = float(mse.detach())
            loss_ema = lv if loss_ema is None else 0.9 * loss_ema + 0.1 * lv
            if bar is not None:
                bar.update(1)
                bar.set_postfix(psnr=f"{-10 * math.log10(max(loss_ema, 1e-10)):.1f}", samples=res.n_samples,
                                refresh=False)
            if callback is not None:
                callback(step, {"loss": lv, "samples": res.n_samples, "sample_step": st})
            if cfg.eval_every > 0 and held is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
                w0, c0 = time.perf_counter(), time.process_time()
                probe = Scene(f, final_step, data_info)
                with torch.no_grad():
                    pe = evaluate(probe, held)["psnr"]
                curve.append({"step": step, "heldout_psnr": pe,
                              "wall_s": elapsed + w0 - t_run - paused[0], "cpu_s": c0 - cpu_run - paused[1],
                              "occupied_fraction": float(f.occupancy.float().mean())})
                if log:
                    log(f"step {step}: held-out PSNR {pe:.2f} dB, {curve[-1]['wall_s']:.0f} s wall, "
                        f"{curve[-1]['cpu_s']:.0f} CPU s")
                paused[0] += time.perf_counter() - w0
                paused[1] += time.process_time() - c0
            if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                _save_checkpoint(ckpt_path, f, opt, gen, step, elapsed + time.perf_counter() - t_run, cfg, data_info)
    finally:
        if bar is not None:
            bar.close()
    elapsed += time.perf_counter() - t_run - paused[0]
    cpu_spent = time.process_time() - cpu_run - paused[1]
    f.requires_grad_(False)
    scene = Scene(f, final_step, data_info, [{"kind": "fit", "steps": step, "config": dataclasses.asdict(cfg)}])
    if cancelled:
        _save_checkpoint(ckpt_path, f, opt, gen, step, elapsed, cfg, data_info)
        return FitResult(scene, out, step, True, None, eval_split, elapsed)
    train_eval = evaluate(scene, train.subset(range(0, len(train), max(1, len(train) // 8))))
    held_eval = evaluate(scene, held) if held is not None else None
    report = {"data": str(data_path), "out": str(out), "steps": step, "seconds": elapsed,
              "seconds_per_step": elapsed / max(step - 0, 1), "cpu_seconds_this_run": cpu_spent,
              "curve": curve, "train_views": len(train), "image_size": list(train.hw),
              "train_psnr_subset": train_eval["psnr"], "eval_split": eval_split,
              "heldout_psnr": held_eval["psnr"] if held_eval else None,
              "heldout_depth_abs_err": held_eval.get("depth_abs_err") if held_eval else None,
              "heldout_views": held_eval["views"] if held_eval else [],
              "field": f.config.to_dict(), "config": dataclasses.asdict(cfg),
              "occupied_fraction": float(f.occupancy.float().mean()), "torch_threads": torch.get_num_threads()}
    scene.history[-1].update({"heldout_psnr": report["heldout_psnr"], "seconds": elapsed})
    save_scene(scene, out)
    atomic_write_json(out / REPORT, report)
    if ckpt_path.is_file():
        ckpt_path.unlink()
    return FitResult(scene, out, step, False, report["heldout_psnr"], eval_split, elapsed, report)
