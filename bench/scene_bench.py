"""Scene results benchmark: fit seeded shapes-world scenes, edit each with several methods (colour and shape edits),
score every edit against the world's exact edited renders from a grid of cameras, and report means with 95%
bootstrap CIs over scenes, paired differences, and edit quality binned by camera view. A benchmark, not a test.

    # the full run (resumable: rerun the same command to continue; two processes may share --out on disjoint
    # --scene-list); docs/scene-results.md lists the exact commands of the committed run
    .venv/bin/python bench/scene_bench.py --scenes 8 --methods dds,ids,cds,sds,pds --shape-methods dds,ids,cds \
        --edit-steps 150 --model src/idsedit/assets/mini-sd --evaluator src/idsedit/assets/evaluator.safetensors \
        --out runs/scene-results-v2           # sources: 400-step fits with depth supervision (--fit-depth 0.05)
    .venv/bin/python bench/scene_bench.py --out runs/scene-results-v2 --report-only --table-methods dds,ids,cds
    .venv/bin/python bench/scene_bench.py --out runs/scene-results-v2 --figures docs/   # multi-view figures, GIFs
    .venv/bin/python bench/scene_bench.py --diagnose 4 --out runs/scene-results      # 2D gradient quality per view
    .venv/bin/python bench/scene_bench.py --memory dds,ids --out runs/scene-results  # 512x512 medium-shape step
    .venv/bin/python bench/scene_bench.py --memory-child ids --memory-part prior --out runs/scene-results  # halves

Scene i is the source scene of ``idsedit eval``'s colour case i (run seed --case-seed); its colour edit is that
case's, its shape edit is drawn from the same scene (idsedit.scene.evaluate.scene_cases). Each scene: a 56-view
64x64 dataset (every 7th view held out), one fit (cached), then every method edits it with the same cameras, t and
noise (seed --edit-seed; the step stream and the method stream of idsedit.rng.PairedSampler, which idsedit.scene.edit uses, so CDS's
permutations and PDS's second noise do not shift the t / noise that the other methods see). Every finished edit
appends one row to OUT/rows.jsonl; a rerun skips finished rows (and resumes an interrupted edit from its
checkpoint). Scores (idsedit.scene.evaluate) come from 16 cameras: elevations 20 and 45 x 8 azimuths; elevation 20
azimuth 0 is the camera the bundled prior was trained on. Times are process CPU seconds (one thread) and wall.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

FAMILIES = ("colour", "shape")
METHOD_ORDER = ("source", "sds", "dds", "cds", "pds", "ids")
COLUMNS = (("edit_success", "edit success", "pct"), ("view_edited", "views edited", "pct"),
           ("psnr_to_target", "PSNR to truth dB", "db"), ("ssim_to_target", "SSIM to truth", "ssim"),
           ("psnr_outside", "PSNR outside dB", "db"), ("depth_abs_err", "depth err", "depth"),
           ("depth_err_outside", "depth err outside", "depth"))
JUDGE = 2       # version of the per-view evaluator scoring (2: the backdrop is judged only where a view shows it)
EVAL_COLUMNS = (("eval_reached", "evaluator: edited", "pct"), ("eval_kept", "evaluator: kept", "pct"))


# --------------------------------------------------------------------------------------------------- helpers
def _floats(text: str) -> tuple:
    return tuple(float(v) for v in text.split(",") if v.strip())


def _list(text: str) -> list:
    return [v.strip() for v in text.split(",") if v.strip()]


def _append_jsonl(path: Path, row: dict) -> None:
    """Append one line in one write under an exclusive lock, then fsync: a crash leaves whole rows only, and two
    bench processes on disjoint scenes (``--scene-list``) can share one OUT folder."""
    import fcntl

    data = (json.dumps(row) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)            # closing releases the lock


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:          # a torn last line of a killed run: ignored, that edit reruns
            pass
    return rows


def _code_version() -> str:
    """git HEAD (+ "-dirty" when tracked files under src/ differ from it): which code made a row."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "src"], cwd=root).returncode != 0
        return head + ("-dirty" if dirty else "")
    except OSError:
        return "unknown"


def _fit_config(args):
    from idsedit.scene.fit import FitConfig

    # with depth supervision the background starts gray: every pixel, the floor's included, is then painted with
    # density from the first step and the depth loss puts it in place before the first pruning (the mean-colour
    # start leaves a floor that matches it without density, so it grows slowly and pruning cuts it: scene 1
    # 27.82 dB held-out with the mean start, 32.74 dB gray, both depth-supervised; docs/scene.md)
    kw = {"holdout_every": args.holdout_every, "depth_weight": args.fit_depth}
    if args.fit_depth > 0:
        kw["env_init"] = "gray"
    if args.fit_steps:
        kw["steps"] = args.fit_steps
    if args.fit_voxels:
        kw["n_voxels"] = args.fit_voxels ** 3
    for item in args.fit_set:                       # FitConfig field=value (value parsed as JSON when it can be)
        k, v = item.split("=", 1)
        try:
            kw[k] = json.loads(v)
        except json.JSONDecodeError:
            kw[k] = v
    return FitConfig(**kw)


# --------------------------------------------------------------------------------------------------- run
def run(args) -> None:
    from idsedit.scene.edit import SceneEditConfig, edit_scene
    from idsedit.scene.evaluate import (camera_tensors, eval_cameras, render_views, scene_cases, score_renders,
                                        truths_for_cameras)
    from idsedit.scene.fit import fit_scene
    from idsedit.scene.store import is_scene, load_scene
    from idsedit.shapes import write_multiview
    from idsedit.variants import variant_config

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_path, fits_path = out / "rows.jsonl", out / "fits.jsonl"
    old_rows = _read_jsonl(rows_path)
    judge = None
    if args.evaluator:
        from idsedit.mini.evaluator import load_evaluator

        judge = load_evaluator(args.evaluator)
    # a row counts as done unless the run now judges with an evaluator and the row was not judged by it
    done = {(r["scene"], r["family"], r["label"], r.get("steps")) for r in old_rows
            if not args.evaluator or (r.get("evaluator") == str(args.evaluator) and r.get("judge") == JUDGE)}
    fams = _list(args.families)
    cases = scene_cases(args.scenes, args.case_seed, fams)
    cams = eval_cameras(_floats(args.eval_elevations), _floats(args.eval_azimuths))
    c2w, intr, hw = camera_tensors(cams, args.size)
    cam_info = [{"elevation": c.elevation, "azimuth": c.azimuth} for c in cams]
    prior = None
    t_start = time.perf_counter()
    wanted = set(int(v) for v in _list(args.scene_list)) if args.scene_list else None
    for case in cases[args.first_scene:]:
        if wanted is not None and case.index not in wanted:
            continue
        data = out / f"data-{case.index}"
        if not (data / "transforms.json").is_file():
            write_multiview(case.params, data, n_views=args.views, size=args.size)
        scene_dir = out / f"scene-{case.index}"
        if args.score_only and not is_scene(scene_dir):
            continue
        if not is_scene(scene_dir):
            t0, c0 = time.perf_counter(), time.process_time()
            res = fit_scene(data, scene_dir, _fit_config(args), progress=sys.stderr.isatty())
            rep = res.report
            hv = rep.get("heldout_views", [])
            _append_jsonl(fits_path, {"scene": case.index, "prompt": case.edits[fams[0]][1], "steps": res.steps_done,
                                      "config": dataclasses.asdict(_fit_config(args)), "code": _code_version(),
                                      "heldout_psnr": res.psnr, "wall_s": time.perf_counter() - t0,
                                      "cpu_s": time.process_time() - c0,
                                      "fit_cpu_s": rep.get("cpu_seconds_this_run"),
                                      "train_psnr_subset": rep.get("train_psnr_subset"),
                                      "heldout_psnr_views": [v["psnr"] for v in hv],
                                      "heldout_depth_abs_err": rep.get("heldout_depth_abs_err"),
                                      "surface_agreement": float(np.mean([v["surface_agreement"] for v in hv
                                                                          if "surface_agreement" in v]))
                                      if hv else None,
                                      "occupied_fraction": rep.get("occupied_fraction"),
                                      "loadavg": os.getloadavg()})
            print(f"scene {case.index}: fitted, held-out {res.psnr:.2f} dB, depth err "
                  f"{rep.get('heldout_depth_abs_err') or math.nan:.3f}, {time.process_time() - c0:.0f} CPU s, "
                  f"{time.perf_counter() - t0:.0f} s wall", flush=True)
        src = load_scene(scene_dir)
        src_renders = None
        for fam in fams:
            target, p_src, p_trg = case.edits[fam]
            methods = _list(args.shape_methods) if fam == "shape" and args.shape_methods else _list(args.methods)
            todo = [m for m in ["source"] + methods
                    if (case.index, fam, m, 0 if m == "source" else args.edit_steps) not in done]
            if not todo:
                continue
            truths = truths_for_cameras(case.params, target, cams, args.size)
            for m in todo:
                base = {"scene": case.index, "family": fam, "label": m, "case": f"{case.name}-{fam}",
                        "source_prompt": p_src, "target_prompt": p_trg}
                if m == "source":
                    if src_renders is None:
                        src_renders = render_views(src, c2w, intr, hw)
                    sc = score_renders(src_renders, truths, evaluator=judge, source=case.params, target=target)
                    row = {**base, "steps": 0}
                else:
                    edited = out / f"edit-{case.index}-{fam}-{m}-{args.edit_steps}"
                    if args.score_only and (not is_scene(edited) or (edited / "checkpoint.pt").is_file()):
                        continue
                    if args.deadline and time.time() > args.deadline and not args.score_only:
                        print("deadline reached: stopping before the next edit (rerun to continue)", flush=True)
                        return
                    v = variant_config(m)
                    cfg = SceneEditConfig(method=v.method, steps=args.edit_steps, distill=v.distill,
                                          seed=args.edit_seed, checkpoint_every=args.checkpoint_every,
                                          lr=args.edit_lr, lr_basis=1e-3, views_per_step=1, grow_cells=1)
                    t0, c0 = time.perf_counter(), time.process_time()
                    if not is_scene(edited) or (edited / "checkpoint.pt").is_file():
                        if prior is None:
                            from idsedit.prior import load_prior

                            prior = load_prior(args.model)
                        r = edit_scene(prior, scene_dir, p_src, p_trg, edited, cfg, progress=sys.stderr.isatty())
                        rep = r.report
                        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                    else:                   # a finished edit, scored again: its times are the earlier row's
                        rep = json.loads((edited / "report.json").read_text())
                        prev = [r for r in old_rows if (r["scene"], r["family"], r["label"], r.get("steps"))
                                == (case.index, fam, m, args.edit_steps) and "cpu_s" in r]
                        wall, cpu = (prev[-1]["wall_s"], prev[-1]["cpu_s"]) if prev else (math.nan, math.nan)
                    sc = score_renders(render_views(load_scene(edited), c2w, intr, hw), truths, evaluator=judge,
                                       source=case.params, target=target)
                    row = {**base, "steps": args.edit_steps, "method": v.method, "edit_seed": args.edit_seed,
                           "edit_lr": cfg.lr, "code": _code_version(),
                           "wall_s": wall, "cpu_s": cpu, "cpu_s_per_step": cpu / args.edit_steps,
                           "breakdown_s_per_step": rep.get("time_breakdown_s_per_step"),
                           "unet_calls_per_step": rep.get("unet_calls_per_step"),
                           "edit_resolution": rep.get("edit_resolution")}
                row.update(sc["mean"])
                row["evaluator"] = str(args.evaluator) if args.evaluator else None
                row["judge"] = JUDGE if args.evaluator else None
                row["model"] = str(args.model) if args.model else None
                row["views"] = [{**ci, **v} for ci, v in zip(cam_info, sc["views"])]
                _append_jsonl(rows_path, row)
                done.add((case.index, fam, m, row["steps"]))
                print(f"scene {case.index} {fam:6s} {m:6s} success {row['edit_success']:.2f} "
                      f"to-truth {row['psnr_to_target']:.2f} dB outside {row['psnr_outside']:.2f} dB depth "
                      f"{row['depth_abs_err']:.3f}" + (f"  {row['cpu_s_per_step']:.2f} CPU s/step" if m != "source"
                                                       else "") + f"  [{time.perf_counter() - t_start:.0f} s]",
                      flush=True)


# --------------------------------------------------------------------------------------------------- report
def _fmt(v: float, kind: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return {"pct": f"{100 * v:.0f}%", "db": f"{v:.2f}", "ssim": f"{v:.3f}", "depth": f"{v:.3f}",
            "s": f"{v:.2f}"}[kind]


def _ci(t, kind: str, signed: bool = False) -> str:
    m, lo, hi = t
    if m is None or math.isnan(m):
        return "-"
    f = (lambda x: ("+" if x > 0 else "") + _fmt(x, kind)) if signed else (lambda x: _fmt(x, kind))
    return f"{f(m)} [{f(lo)}, {f(hi)}]"


def _order(labels):
    return sorted(labels, key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER))


def report(args) -> str:
    from idsedit.scene.evaluate import by_view, paired, summarise

    out = Path(args.out)
    rows = [r for r in _read_jsonl(out / "rows.jsonl") if r["label"] == "source" or r["steps"] == args.edit_steps]
    rows = list({(r["scene"], r["family"], r["label"]): r for r in rows}.values())    # a rerun's duplicate: the last
    if args.table_methods:          # only these methods, on the scenes where every one of them ran (paired table)
        keep = set(_list(args.table_methods))
        have = {}
        for r in rows:
            have.setdefault((r["family"], r["scene"]), set()).add(r["label"])
        rows = [r for r in rows if r["label"] in keep | {"source"} and keep <= have[(r["family"], r["scene"])]]
        if not rows:
            return "no scene has every method of --table-methods yet"
    if not rows:
        return "no rows yet"
    fits = _read_jsonl(out / "fits.jsonl")
    summ = summarise(rows)
    cols = (EVAL_COLUMNS if any("eval_reached" in r for r in rows) else ()) + COLUMNS
    lines = ["Scenes per family: " + ", ".join(f"{fam}: {sorted({r['scene'] for r in rows if r['family'] == fam})}"
                                                 for fam in dict.fromkeys(r["family"] for r in rows)) + "\n"]
    if fits:
        fits = list({f["scene"]: f for f in fits}.values())       # a refit's row replaces the earlier one
        p = [f["heldout_psnr"] for f in fits]
        lines.append(f"Source fits: {len(fits)} scenes, held-out PSNR {np.mean(p):.2f} dB (min {min(p):.2f}, max "
                     f"{max(p):.2f}), {np.mean([f['cpu_s'] for f in fits]):.0f} CPU s per fit.\n")
        if all("train_psnr_subset" in f for f in fits):
            lines.append("| scene | source | steps | held-out PSNR dB (worst view) | train PSNR dB | depth err | "
                         "surface agreement | CPU s (optimisation / whole fit) | wall s | load avg |")
            lines.append("|---|---|---|---|---|---|---|---|---|---|")
            for f in sorted(fits, key=lambda f: f["scene"]):
                lines.append(f"| {f['scene']} | {f['prompt']} | {f['steps']} | {f['heldout_psnr']:.2f} "
                             f"({min(f['heldout_psnr_views']):.2f}) | {f['train_psnr_subset']:.2f} | "
                             f"{f['heldout_depth_abs_err']:.3f} | {f['surface_agreement']:.2f} | "
                             f"{f['fit_cpu_s']:.0f} / {f['cpu_s']:.0f} | {f['wall_s']:.0f} | {f['loadavg'][0]:.1f} |")
            lines.append("")
    for fam in dict.fromkeys(r["family"] for r in rows):
        labels = _order({lab for (f, lab) in summ if f == fam})
        lines.append(f"**{fam} edits** (mean over scenes [95% bootstrap CI]; {args.edit_steps} steps)\n")
        lines.append("| method | scenes | " + " | ".join(c[1] for c in cols) + " | CPU s/step |")
        lines.append("|---|---|" + "---|" * len(cols) + "---|")
        for lab in labels:
            s = summ[(fam, lab)]
            sps = [r["cpu_s_per_step"] for r in rows if r["family"] == fam and r["label"] == lab
                   and "cpu_s_per_step" in r]
            lines.append(f"| {'source (no edit)' if lab == 'source' else lab.upper()} | {s['n']} | "
                         + " | ".join(_ci(s[k], kind) for k, _, kind in cols)
                         + f" | {_fmt(float(np.mean(sps)), 's') if sps else '-'} |")
        lines.append("")
        pairs = [(a, b) for a, b in (("ids", "dds"), ("ids", "cds"), ("cds", "dds"), ("ids", "pds"), ("ids", "sds"), ("dds", "sds"))
                 if a in labels and b in labels]
        if pairs:
            lines.append(f"Paired differences, {fam} edits (same scenes, cameras, t and noise; mean [95% CI])\n")
            lines.append("| difference | scenes | " + " | ".join(c[1] for c in cols) + " |")
            lines.append("|---|---|" + "---|" * len(cols))
            for a, b in pairs:
                d = paired(rows, a, b, fam)
                lines.append(f"| {a.upper()} - {b.upper()} | {d['n']} | "
                             + " | ".join(_ci(d[k], kind, signed=True) for k, _, kind in cols) + " |")
            lines.append("")
    bv = by_view(rows)
    for fam in dict.fromkeys(r["family"] for r in rows):
        labels = [lab for lab in _order({k[1] for k in bv if k[0] == fam}) if lab != "source"]
        if not labels:
            continue
        lines.append(f"**By view, {fam} edits**: edit success / PSNR outside the object minus the unedited source "
                     "scene's on the same views (dB), mean over scenes [95% CI]; azimuth = angular distance from "
                     "the prior's training azimuth 0 (45-135 average the two sides)\n")
        lines.append("| elevation | azimuth | " + " | ".join(lab.upper() for lab in labels) + " |")
        lines.append("|---|---|" + "---|" * len(labels))
        bins = sorted({(k[2], k[3]) for k in bv if k[0] == fam})
        for el, az in bins:
            cells = []
            for lab in labels:
                c = bv.get((fam, lab, el, az))
                if c is None:
                    cells.append("-")
                    continue
                d = c.get("psnr_outside_vs_source", (math.nan,) * 3)
                cells.append(f"{_fmt(c['edit_success'][0], 'pct')} [{_fmt(c['edit_success'][1], 'pct')}, "
                             f"{_fmt(c['edit_success'][2], 'pct')}] / {_ci(d, 'db', signed=True)}")
            mark = " (prior's camera)" if el == 20.0 and az == 0.0 else ""
            lines.append(f"| {el:.0f} | {az:.0f}{mark} | " + " | ".join(cells) + " |")
        lines.append("")
    text = "\n".join(lines)
    (out / "results.md").write_text(text)
    if args.doc:
        Path(args.doc).write_text(text + "\n")
    return text


# --------------------------------------------------------------------------------------------------- figures
def _up(a: np.ndarray, k: int) -> np.ndarray:
    return np.repeat(np.repeat(a, k, 0), k, 1)


def _label(img: np.ndarray, text: str, width: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    pad = Image.new("RGB", (width, img.shape[0]), "white")
    ImageDraw.Draw(pad).text((4, img.shape[0] // 2 - 6), text, fill="black")
    return np.concatenate([np.asarray(pad), img], 1)


def figures(args) -> None:
    """docs: scene-results-multiview-<family>.png (source | DDS | IDS | truth from 4 azimuths, colour and depth)
    and scene-results-orbit.gif / scene-results-orbit-depth.gif (DDS | IDS)."""
    import shutil
    import tempfile

    from PIL import Image

    from idsedit.scene.evaluate import camera_tensors, eval_cameras, render_views, scene_cases, truths_for_cameras
    from idsedit.scene.outputs import depth_colour, depth_range, render_orbit
    from idsedit.scene.store import load_scene

    out, docs = Path(args.out), Path(args.figures)
    i = args.figure_scene
    case = scene_cases(i + 1, args.case_seed, _list(args.families))[i]
    cams = eval_cameras((args.figure_elevation,), (0.0, 90.0, 180.0, 270.0))
    c2w, intr, hw = camera_tensors(cams, args.size)
    k = 3
    for fam in _list(args.families):
        target, p_src, p_trg = case.edits[fam]
        scenes = {"source": out / f"scene-{i}", "DDS": out / f"edit-{i}-{fam}-dds-{args.edit_steps}",
                  "IDS": out / f"edit-{i}-{fam}-ids-{args.edit_steps}"}
        if not all(p.is_dir() for p in scenes.values()):
            print(f"figures: {fam}: missing {[str(p) for p in scenes.values() if not p.is_dir()]}")
            continue
        rend = {name: render_views(load_scene(p), c2w, intr, hw) for name, p in scenes.items()}
        truths = truths_for_cameras(case.params, target, cams, args.size)
        rend["truth"] = [(t.trg_rgb, t.trg_depth, None) for t in truths]
        lo, hi = depth_range(*[np.stack([d for _, d, _ in v]) for v in rend.values()])
        rows = []
        for name, views in rend.items():
            col = [_up((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8), k) for rgb, _, _ in views]
            dep = [_up(depth_colour(d, lo, hi), k) for _, d, _ in views]
            gap = np.full((col[0].shape[0], 6, 3), 255, np.uint8)
            parts = []
            for x in col + [np.full((col[0].shape[0], 16, 3), 255, np.uint8)] + dep:
                parts += [x, gap]
            rows.append(_label(np.concatenate(parts[:-1], 1), name, 60))
        head = np.full((18, rows[0].shape[1], 3), 255, np.uint8)
        img = Image.fromarray(np.concatenate([head] + [np.pad(r, [(0, 4), (0, 0), (0, 0)], constant_values=255)
                                                       for r in rows], 0))
        from PIL import ImageDraw

        d = ImageDraw.Draw(img)
        w = 64 * k + 6
        for j, c in enumerate(cams):
            d.text((60 + j * w + 4, 3), f"colour az {c.azimuth:.0f}", fill="black")
            d.text((60 + 4 * w + 16 + j * w + 4, 3), f"depth az {c.azimuth:.0f}", fill="black")
        path = docs / f"scene-results-multiview-{fam}.png"
        img.save(path)
        print(f"wrote {path}  ({p_src!r} -> {p_trg!r}, elevation {args.figure_elevation:.0f})")
    fam = _list(args.families)[0]
    dds, ids = out / f"edit-{i}-{fam}-dds-{args.edit_steps}", out / f"edit-{i}-{fam}-ids-{args.edit_steps}"
    if dds.is_dir() and ids.is_dir():
        with tempfile.TemporaryDirectory() as tmp:
            render_orbit(load_scene(ids), args.orbit_frames, tmp, compare=load_scene(dds), upscale=2, progress=False)
            for a, b in (("orbit.gif", "scene-results-orbit.gif"), ("orbit_depth.gif", "scene-results-orbit-depth.gif")):
                shutil.copyfile(Path(tmp) / a, docs / b)
                print(f"wrote {docs / b} ({(docs / b).stat().st_size / 1024:.0f} KiB)")


# --------------------------------------------------------------------------------------------------- diagnosis
def diagnose(args) -> str:
    """Per view, on the exact renders (no radiance field): the method's first-step latent update at z = E(source)
    against the direction to the edited truth E(target): cosine(-grad, z_gt - z_src), and the share of the
    update's energy outside the edited object (the latent-resolution mask). Same (t, noise) for every method."""
    from idsedit import loop
    from idsedit.evaluate.runner import PairedSampler
    from idsedit.prior import load_prior
    from idsedit.scene.evaluate import azimuth_offset, eval_cameras, scene_cases, truths_for_cameras
    from idsedit.variants import variant_config

    prior = load_prior(args.model)
    cams = eval_cameras(_floats(args.eval_elevations), _floats(args.eval_azimuths))
    res = {}
    methods = _list(args.diagnose_methods)
    for case in scene_cases(args.diagnose, args.case_seed, ("colour",)):
        target, p_src, p_trg = case.edits["colour"]
        truths = truths_for_cameras(case.params, target, cams, args.size)
        x_src = torch.tensor(np.stack([t.src_rgb for t in truths]), dtype=torch.float32).permute(0, 3, 1, 2)
        x_trg = torch.tensor(np.stack([t.trg_rgb for t in truths]), dtype=torch.float32).permute(0, 3, 1, 2)
        masks = torch.tensor(np.stack([t.mask for t in truths]), dtype=torch.float32)[:, None]
        with torch.no_grad():
            z_src, z_gt = prior.encode(x_src.clamp(0, 1)), prior.encode(x_trg.clamp(0, 1))
        lm = torch.nn.functional.adaptive_max_pool2d(masks, z_src.shape[-2:]) > 0
        cs, ct = prior.encode_text(p_src), prior.encode_text(p_trg)
        for m in methods:
            v = variant_config(m)
            for vi, cam in enumerate(cams):
                sampler = PairedSampler(args.edit_seed * 1000 + case.index)
                for _ in range(args.diagnose_draws):
                    zs, zg = z_src[vi:vi + 1], z_gt[vi:vi + 1]
                    draw = loop.draw_step(sampler, zs)
                    zt = zs.clone().requires_grad_(True)
                    _, o = loop.distill_step(prior, v.method, zs, zt, draw, cs, ct, v.distill, sampler)
                    g = -o.grad.detach()[0]
                    want = (zg - zs)[0]
                    cos = float((g * want).sum() / (g.norm() * want.norm() + 1e-12))
                    out_share = float((g * g * (~lm[vi]).float()).sum() / ((g * g).sum() + 1e-12))
                    key = (m, cam.elevation, azimuth_offset(cam.azimuth))
                    res.setdefault(key, []).append((case.index, cos, out_share))
    lines = ["| method | elevation | azimuth | cos(update, to truth) | update energy outside the object |",
             "|---|---|---|---|---|"]
    from idsedit.metrics import bootstrap_ci

    summary = {}
    for (m, el, az), vals in sorted(res.items()):
        per_scene = {}
        for s, c, o in vals:
            per_scene.setdefault(s, []).append((c, o))
        cos = [float(np.mean([c for c, _ in v])) for v in per_scene.values()]
        sh = [float(np.mean([o for _, o in v])) for v in per_scene.values()]
        cc, oc = bootstrap_ci(cos), bootstrap_ci(sh)
        summary[f"{m} {el:.0f} {az:.0f}"] = {"cos": cc, "outside_share": oc, "n_scenes": len(per_scene)}
        lines.append(f"| {m.upper()} | {el:.0f} | {az:.0f} | {_ci(cc, 'ssim')} | {_ci(oc, 'pct')} |")
    text = "\n".join(lines)
    (Path(args.out) / "diagnose.json").write_text(json.dumps(summary, indent=1))
    (Path(args.out) / "diagnose.md").write_text(text + "\n")
    return text


# --------------------------------------------------------------------------------------------------- memory
def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return math.nan


def memory_child(args) -> int:
    """One 512x512 scene edit step with the random-weight "medium" shape (SD-1.5-sized latents 64x64x4): print
    {rss before the step, peak RSS of the process (ru_maxrss), seconds} as JSON."""
    import tempfile

    from idsedit.models_from_config import build_prior
    from idsedit.scene.edit import SceneEditConfig, edit_scene
    from idsedit.variants import variant_config

    torch.set_num_threads(1)
    prior = build_prior(args.memory_shape)
    scene_dir = Path(args.out) / f"scene-{args.figure_scene}"
    v = variant_config(args.memory_child)
    cfg = SceneEditConfig(method=v.method, steps=1, distill=v.distill, seed=0, checkpoint_every=10)
    with tempfile.TemporaryDirectory() as tmp:
        # the source view (render + encode, no gradient) is made once before the timed step, as in a long edit
        import gc

        gc.collect()
        rss0 = _rss_mib()
        peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t0, c0 = time.perf_counter(), time.process_time()
        r = edit_scene(prior, scene_dir, "a red cone", "a gray cone", Path(tmp) / "e", cfg, progress=False)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"method": args.memory_child, "shape": args.memory_shape, "rss_before_mib": rss0,
                      "peak_before_mib": peak0, "peak_rss_mib": peak, "wall_s": time.perf_counter() - t0,
                      "cpu_s": time.process_time() - c0, "edit_resolution": r.report.get("edit_resolution"),
                      "breakdown_s": r.report.get("time_breakdown_s_per_step"),
                      "unet_calls": r.report.get("unet_calls_per_step")}))
    return 0


def memory_parts_child(args) -> int:
    """The two halves of a 512x512 step measured apart (when the whole step does not fit the memory allowed):
    "prior": a 512x512 image tensor WITH grad -> VAE encode -> the method's step -> loss.backward() to the image,
    random-weight ``--memory-shape``; "render": render + backward of every ``--ray-stride``-th ray of a 512x512
    view of the scene (memory is linear in the samples, so the whole view = stride x this, reported as such)."""
    from idsedit import loop
    from idsedit.models_from_config import build_prior
    from idsedit.rng import Sampler
    from idsedit.scene.edit import _train_cameras, scale_intrinsics
    from idsedit.scene.render import camera_rays, render_rays
    from idsedit.scene.store import load_scene
    from idsedit.variants import variant_config

    torch.set_num_threads(1)
    import gc

    res = {"part": args.memory_part, "method": args.memory_child, "shape": args.memory_shape}
    if args.memory_part == "prior":
        prior = build_prior(args.memory_shape)
        v = variant_config(args.memory_child)
        g = torch.Generator().manual_seed(0)
        x_src = torch.rand(1, 3, prior.resolution, prior.resolution, generator=g)
        x = x_src.clone().requires_grad_(True)
        cs, ct = prior.encode_text("a red cone"), prior.encode_text("a gray cone")
        gc.collect()
        res["rss_before_mib"], res["peak_before_mib"] = _rss_mib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t0, c0 = time.perf_counter(), time.process_time()
        z_src = prior.encode(x_src)
        z = prior.encode(x, grad=True)
        sampler = Sampler.seeded(0)
        loss, _ = loop.distill_step(prior, v.method, z_src, z, loop.draw_step(sampler, z_src), cs, ct, v.distill, sampler)
        loss.backward()
        res.update(latents=list(z.shape), image_grad_finite=bool(torch.isfinite(x.grad).all()))
    else:
        scene = load_scene(Path(args.out) / f"scene-{args.figure_scene}")
        views = _train_cameras(scene)
        hw = (512, 512)
        intr = scale_intrinsics(views.intrinsics, views.hw, hw)
        o, d = camera_rays(views.c2w[0], intr[0], hw)
        o, d = o[::args.ray_stride], d[::args.ray_stride]
        f = scene.field
        f.requires_grad_(True)
        gc.collect()
        res["rss_before_mib"], res["peak_before_mib"] = _rss_mib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t0, c0 = time.perf_counter(), time.process_time()
        out = render_rays(f, o, d, scene.step, near=scene.near, jitter=torch.rand(o.shape[0], generator=torch.Generator().manual_seed(0)))
        out.rgb.sum().backward()
        res.update(rays=int(o.shape[0]), ray_stride=args.ray_stride, samples=int(out.n_samples),
                   samples_per_ray=out.n_samples / o.shape[0])
    res.update(peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0)
    print(json.dumps(res))
    return 0


def memory(args) -> list:
    res = []
    for m in _list(args.memory):
        cmd = [sys.executable, __file__, "--memory-child", m, "--out", args.out, "--figure-scene",
               str(args.figure_scene), "--memory-shape", args.memory_shape]
        p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if p.returncode != 0:
            print(p.stderr[-3000:])
            continue
        res.append(json.loads(p.stdout.strip().splitlines()[-1]))
        print(json.dumps(res[-1]), flush=True)
    (Path(args.out) / "memory.json").write_text(json.dumps(res, indent=1))
    return res


# --------------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=8, help="number of seeded scenes")
    ap.add_argument("--first-scene", type=int, default=0)
    ap.add_argument("--scene-list", default="", help="only these scene indices (e.g. 0,2,4,6); two processes on "
                    "disjoint lists may share --out")
    ap.add_argument("--case-seed", type=int, default=0, help="run seed of idsedit eval's colour cases")
    ap.add_argument("--families", default="colour,shape")
    ap.add_argument("--methods", default="dds,ids,cds,sds,pds", help="variants (colour edits; shape edits too unless "
                    "--shape-methods)")
    ap.add_argument("--shape-methods", default="", help="variants for shape edits (default: --methods)")
    ap.add_argument("--views", type=int, default=56)
    ap.add_argument("--holdout-every", type=int, default=7)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--fit-steps", type=int, default=0, help="fit steps (0: FitConfig's default, 400)")
    ap.add_argument("--fit-depth", type=float, default=0.05, help="depth supervision weight of the source fits "
                    "(FitConfig.depth_weight; the world's depth maps): without it, uniform floors fit as fog near the "
                    "cameras on some scenes (docs/scene.md); 0 = images only")
    ap.add_argument("--fit-voxels", type=int, default=0, help="final grid cells per side (0: FitConfig's default)")
    ap.add_argument("--fit-set", nargs="*", default=[], metavar="FIELD=VALUE", help="other FitConfig fields")
    ap.add_argument("--edit-steps", type=int, default=150)
    ap.add_argument("--edit-seed", type=int, default=0)
    ap.add_argument("--edit-lr", type=float, default=0.01, help="Adam lr of the grids (the radiance_field rule's)")
    ap.add_argument("--checkpoint-every", type=int, default=50)
    ap.add_argument("--eval-elevations", default="20,45")
    ap.add_argument("--eval-azimuths", default="0,45,90,135,180,225,270,315")
    ap.add_argument("--deadline", type=float, default=0.0, help="unix time after which no new edit starts")
    ap.add_argument("--model", default=None, help="prior folder (default: the bundled prior)")
    ap.add_argument("--evaluator", default=None, help="shapes-world evaluator weights (.safetensors with its .json) "
                    "to judge every view with (eval_reached / eval_kept columns); rows judged otherwise are redone")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/scene-results")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--score-only", action="store_true", help="(re)score finished fits and edits only: no new fit "
                    "or edit starts (e.g. after a change of --evaluator or of the scoring)")
    ap.add_argument("--doc", default=None, help="also write the markdown tables to this file")
    ap.add_argument("--table-methods", default="", help="report only these methods, on the scenes all of them ran")
    ap.add_argument("--figures", default=None, help="folder for the figures (from the cached edits)")
    ap.add_argument("--figure-scene", type=int, default=0)
    ap.add_argument("--figure-elevation", type=float, default=30.0)
    ap.add_argument("--orbit-frames", type=int, default=24)
    ap.add_argument("--diagnose", type=int, default=0, help="per-view 2D gradient diagnosis on this many scenes")
    ap.add_argument("--diagnose-methods", default="dds,ids")
    ap.add_argument("--diagnose-draws", type=int, default=2)
    ap.add_argument("--memory", default="", help="methods whose 512x512 medium-shape edit step memory to measure")
    ap.add_argument("--memory-child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--memory-shape", default="medium")
    ap.add_argument("--memory-part", default="", help="prior | render: measure one half of the step (see code)")
    ap.add_argument("--ray-stride", type=int, default=16)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child and args.memory_part:
        return memory_parts_child(args)
    if args.memory_child:
        return memory_child(args)
    if args.memory:
        memory(args)
        return 0
    if args.diagnose:
        print(diagnose(args))
        return 0
    if args.figures:
        figures(args)
        return 0
    if not args.report_only:
        run(args)
    print(report(args))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    sys.exit(main())
