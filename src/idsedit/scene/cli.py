"""``idsedit scene``: fit, edit and render radiance-field scenes (a command module of :mod:`idsedit.cli`).

    idsedit scene fit DATA --out SCENE [--steps N] [--seed S]
    idsedit scene edit SCENE --source "a red cube" --target "a blue cube" --method ids --out EDITED
    idsedit scene render SCENE --cameras FILE.json --out DIR       # DIR/<name>.png + DIR/<name>.depth.npy
    idsedit scene render SCENE --orbit 48 --out DIR [--compare OTHER_SCENE]

Ctrl-C or SIGTERM during fit/edit finishes the current step, writes a checkpoint and exits with code 130;
running the same command again continues from it (a second Ctrl-C stops at once, without a checkpoint).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import IdseditError

INTERRUPTED = 130


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} is too small: use a number >= 1")
    return v


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{v} must be 0 or more")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (v > 0 and v < float("inf")):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number > 0")
    return v


def _int_list(text: str) -> tuple:
    try:
        v = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give whole numbers separated by commas") from None
    if any(x < 0 for x in v):
        raise argparse.ArgumentTypeError(f"{text!r}: steps must be >= 0")
    return v


def _bbox(text: str) -> list:
    try:
        v = [float(x) for x in text.split(",")]
    except ValueError:
        v = []
    if len(v) != 6:
        raise argparse.ArgumentTypeError(f"{text!r}: give six numbers x0,y0,z0,x1,y1,z1")
    return [v[:3], v[3:]]


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="scene_command", metavar="fit|edit|render")
    from ..variants import VARIANTS
    from .fit import FitConfig
    from .edit import SceneEditConfig

    fd, ed = FitConfig(), SceneEditConfig()

    f = sub.add_parser("fit", help="reconstruct a radiance field from posed images",
                       description="Fit a TensoRF field to a Blender/nerfstudio dataset; resumable.")
    f.add_argument("data", metavar="DATA", help="dataset folder (transforms.json or transforms_train.json) or file")
    f.add_argument("--out", metavar="SCENE", required=True, help="folder for the fitted scene")
    f.add_argument("--steps", type=_positive_int, default=fd.steps, help=f"optimisation steps (default {fd.steps})")
    f.add_argument("--seed", type=int, default=fd.seed, help=f"random seed (default {fd.seed})")
    f.add_argument("--batch-rays", type=_positive_int, default=fd.batch_rays, help="rays per step")
    f.add_argument("--voxels", type=_positive_int, default=fd.n_voxels, help="grid cells at the end (default 96^3)")
    f.add_argument("--size", type=_positive_int, default=None,
                   help="resize frames so the longer side is this (default: the data's resolution)")
    f.add_argument("--holdout-every", type=_nonneg_int, default=fd.holdout_every,
                   help="single transforms.json without split lists: hold out every k-th frame for testing "
                        "(0: none)")
    f.add_argument("--background", default=fd.background,
                   help="auto (white for RGBA data, else learned), learned, white, black or r,g,b")
    f.add_argument("--bbox", type=_bbox, default=None, metavar="X0,Y0,Z0,X1,Y1,Z1",
                   help="the field's box (default: from the data)")
    f.add_argument("--lr", type=_positive_float, default=fd.lr_grid, help=f"Adam lr of the grids (default {fd.lr_grid})")
    f.add_argument("--upsample-at", type=_int_list, default=fd.upsample_at, metavar="S1,S2,...",
                   help="steps at which the grids are upsampled (default " + ",".join(map(str, fd.upsample_at)) + ")")
    f.add_argument("--occupancy-start", type=_nonneg_int, default=fd.occupancy_start,
                   help=f"first occupancy-grid rebuild (default {fd.occupancy_start})")
    f.add_argument("--occupancy-every", type=_positive_int, default=fd.occupancy_every,
                   help=f"then rebuild it every k steps (default {fd.occupancy_every})")
    f.add_argument("--env-start", type=_nonneg_int, default=fd.env_start,
                   help=f"the learned background starts learning at this step (default {fd.env_start})")
    f.add_argument("--depth-weight", type=float, default=fd.depth_weight,
                   help="supervise with the dataset's depth maps (frames' depth_path) at this weight (default off)")
    f.add_argument("--env-init", choices=("mean", "gray"), default=fd.env_init,
                   help="the learned background's start: the training images' mean colour, or 0.5 gray "
                        f"(default {fd.env_init})")
    f.add_argument("--opacity-entropy", type=float, default=fd.opacity_entropy,
                   help=f"weight of the rays' opacity entropy (default {fd.opacity_entropy})")
    f.add_argument("--eval-every", type=_nonneg_int, default=fd.eval_every,
                   help="held-out PSNR every k steps into report.json's curve (default off)")
    f.add_argument("--tv-density", type=float, default=fd.tv_density, help=f"default {fd.tv_density}")
    f.add_argument("--tv-app", type=float, default=fd.tv_app, help=f"default {fd.tv_app}")
    f.add_argument("--l1-density", type=float, default=fd.l1_density, help=f"default {fd.l1_density}")
    f.add_argument("--checkpoint-every", type=_positive_int, default=fd.checkpoint_every)
    f.add_argument("--quiet", action="store_true", help="no progress bar")

    e = sub.add_parser("edit", help="edit a fitted scene towards a target prompt",
                       description="Edit a scene with a distillation method (the 2D methods, the same code).")
    e.add_argument("scene", metavar="SCENE", help="a scene folder made by `idsedit scene fit`")
    e.add_argument("--source", required=True, metavar="TEXT", help="prompt describing the scene")
    e.add_argument("--target", required=True, metavar="TEXT", help="prompt describing the wanted result")
    e.add_argument("--out", required=True, metavar="EDITED", help="folder for the edited scene")
    e.add_argument("--method", default=ed.method, type=str.lower, help=f"one of {', '.join(VARIANTS)}")
    e.add_argument("--steps", type=_positive_int, default=ed.steps, help=f"edit steps (default {ed.steps})")
    e.add_argument("--lr", type=_positive_float, default=None,
                   help="Adam learning rate of the grids (default: the radiance_field rule, 0.01)")
    e.add_argument("--seed", type=int, default=ed.seed)
    e.add_argument("--views-per-step", type=_positive_int, default=ed.views_per_step)
    e.add_argument("--source-images", choices=("render", "data"), default=ed.source,
                   help="z_src from the frozen source scene's render (default) or the dataset image")
    e.add_argument("--freeze-geometry", action="store_true", help="optimise colour only (density frozen)")
    e.add_argument("--data", metavar="DATA", help="the scene's dataset, if it moved since the fit")
    e.add_argument("--guidance", type=_positive_float, default=None, help="classifier-free guidance scale")
    e.add_argument("--fpr-iters", type=_nonneg_int, default=None, help="IDS fixed-point iterations")
    e.add_argument("--fpr-lambda", type=float, default=None, help="IDS fixed-point step size")
    e.add_argument("--fpr-mode", default=None, help="exact, jacobian-free or adaptive")
    e.add_argument("--fpr-attention-backward", choices=("bf16", "fp32"), default=None,
                   help="UNet attention backward inside exact FPR: bf16 (default; CPU fp32 only) or fp32")
    e.add_argument("--with-cut", action="store_true", default=None, help="IDS + CDS's PatchNCE term")
    e.add_argument("--cut-weight", type=float, default=None, help="weight of the PatchNCE term")
    e.add_argument("--negative-prompt", default=None, help="unconditional prompt of CFG")
    e.add_argument("--checkpoint-every", type=_positive_int, default=ed.checkpoint_every)
    e.add_argument("--model", metavar="PATH_OR_HUB_ID", help="diffusers model (default: the bundled mini prior)")
    e.add_argument("--device", help="cpu, cuda, mps (default: the best available)")
    e.add_argument("--dtype", help="fp32, fp16 or bf16")
    e.add_argument("--allow-pickle", action="store_true", help="allow pickle weights (only for trusted sources)")
    e.add_argument("--quiet", action="store_true")

    r = sub.add_parser("render", help="render a scene: frames of a cameras file, or an orbit video",
                       description="Render a scene to PNG + depth .npy files, or orbit GIF/MP4 videos.")
    r.add_argument("scene", metavar="SCENE")
    r.add_argument("--out", required=True, metavar="DIR")
    r.add_argument("--cameras", metavar="FILE.json", help="a transforms file: one PNG + .depth.npy per frame")
    r.add_argument("--orbit", type=_positive_int, metavar="N", help="an orbit of N frames (GIF and MP4)")
    r.add_argument("--compare", metavar="OTHER_SCENE", help="orbit: show OTHER_SCENE | SCENE side by side")
    r.add_argument("--size", type=_positive_int, default=None, help="longer image side (default: the data's)")
    r.add_argument("--fps", type=_positive_int, default=12)
    r.add_argument("--upscale", type=_positive_int, default=1, help="orbit: enlarge frames k times (nearest)")
    r.add_argument("--quiet", action="store_true")


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An Event set by the first SIGINT/SIGTERM (the loop finishes its step and checkpoints); a second SIGINT
    raises KeyboardInterrupt at once. Handlers are restored on exit (only installed on the main thread)."""
    ev = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield ev
        return

    def handler(signum, frame):
        if ev.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        ev.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield ev
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _print(text: str) -> None:
    print(text, flush=True)


def cli_main(args: argparse.Namespace) -> int:
    cmd = getattr(args, "scene_command", None)
    if cmd is None:
        args.parser.print_help(sys.stderr)
        return 2
    return {"fit": _fit, "edit": _edit, "render": _render}[cmd](args)


def _fit(args) -> int:
    from .fit import FitConfig, fit_scene

    cfg = FitConfig(steps=args.steps, seed=args.seed, batch_rays=args.batch_rays, n_voxels=args.voxels,
                    size=args.size, holdout_every=args.holdout_every, background=args.background, bbox=args.bbox,
                    checkpoint_every=args.checkpoint_every, lr_grid=args.lr, upsample_at=args.upsample_at,
                    occupancy_start=args.occupancy_start, tv_density=args.tv_density, tv_app=args.tv_app,
                    l1_density=args.l1_density, occupancy_every=args.occupancy_every, env_start=args.env_start,
                    env_init=args.env_init, depth_weight=args.depth_weight, opacity_entropy=args.opacity_entropy, eval_every=args.eval_every)
    with stop_on_signals() as stop:
        res = fit_scene(args.data, args.out, cfg, should_stop=stop.is_set, progress=not args.quiet, log=_print)
    if res.cancelled:
        print(f"interrupted at step {res.steps_done}: checkpoint saved in {res.out_dir}; run the same command again "
              "to continue", file=sys.stderr)
        return INTERRUPTED
    r = res.report
    held = f"held-out PSNR {r['heldout_psnr']:.2f} dB on {r['eval_split']}" if r["heldout_psnr"] is not None \
        else "no held-out split"
    _print(f"fitted {res.out_dir}: {res.steps_done} steps in {res.seconds:.0f} s, {held}, "
           f"train PSNR {r['train_psnr_subset']:.2f} dB; report: {Path(res.out_dir) / 'report.json'}")
    return 0


def _edit_config(args):
    from ..distill import DistillConfig
    from ..variants import get_variant
    from .edit import SceneEditConfig

    v = get_variant(args.method)
    over = {k: getattr(args, k) for k in ("guidance", "fpr_iters", "fpr_lambda", "fpr_mode", "fpr_attention_backward",
                                           "with_cut", "cut_weight", "negative_prompt") if getattr(args, k) is not None}
    clash = [k for k, val in over.items() if k in v.distill and v.distill[k] != val]
    if clash:
        raise IdseditError(f"--method {args.method} sets {', '.join(clash)} itself: drop --{clash[0].replace('_', '-')}"
                           " or pick another method")
    distill = DistillConfig(**{**v.distill, **over})
    return SceneEditConfig(method=v.method, steps=args.steps, lr=args.lr, seed=args.seed,
                           views_per_step=args.views_per_step, source=args.source_images,
                           freeze_geometry=args.freeze_geometry, checkpoint_every=args.checkpoint_every,
                           distill=distill)


def _edit(args) -> int:
    from ..prior import load_prior
    from .edit import edit_scene
    from .store import load_scene

    cfg = _edit_config(args)
    load_scene(args.scene)                                    # a bad SCENE fails before the model loads
    prior = load_prior(args.model, device=args.device, dtype=args.dtype, allow_pickle=args.allow_pickle)
    with stop_on_signals() as stop:
        res = edit_scene(prior, args.scene, args.source, args.target, args.out, cfg, data=args.data,
                         should_stop=stop.is_set, progress=not args.quiet, log=_print)
    if res.cancelled:
        print(f"interrupted at step {res.steps_done}: checkpoint saved in {res.out_dir}; run the same command again "
              "to continue", file=sys.stderr)
        return INTERRUPTED
    r = res.report
    _print(f"edited {args.scene} -> {res.out_dir} with {args.method}: {res.steps_done} steps in {res.seconds:.0f} s "
           f"({r['seconds_per_step_this_run'] or 0:.2f} s/step); report: {Path(res.out_dir) / 'report.json'}")
    return 0


def _render(args) -> int:
    from .outputs import render_cameras, render_orbit
    from .store import load_scene

    if (args.cameras is None) == (args.orbit is None):
        raise IdseditError("give exactly one of --cameras FILE.json or --orbit N")
    if args.compare and args.orbit is None:
        raise IdseditError("--compare works with --orbit: give --orbit N")
    scene = load_scene(args.scene)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise IdseditError(f"--out {out} is a file: give a folder")
    if out.resolve() == Path(args.scene).resolve():
        raise IdseditError(f"--out {out} is the scene folder: choose another folder for the renders")
    if args.cameras:
        frames = render_cameras(scene, args.cameras, out, size=args.size, progress=not args.quiet)
        _print(f"rendered {len(frames.names)} frames to {out} (<name>.png, <name>.depth.npy)")
        return 0
    other = load_scene(args.compare) if args.compare else None
    paths = render_orbit(scene, args.orbit, out, compare=other, size=args.size, fps=args.fps, upscale=args.upscale,
                         progress=not args.quiet)
    _print(f"orbit of {args.orbit} frames: " + ", ".join(sorted(Path(p).name for p in paths.values())) + f" in {out}")
    return 0
