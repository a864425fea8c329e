"""Scene benchmark: fit a shapes-world scene, edit it with several methods, score every edit against the exact
ground truth (idsedit.scene.evaluate). Prints a table and writes JSON; a benchmark, not a test.

    .venv/bin/python bench/scene_bench.py --seeds 113 --views 56 --holdout-every 7 --size 64 \
        --fit-steps 1500 --methods dds,ids --edit-steps 300 --edit color=blue --out bench-out/scene

56 views with every 7th held out = 48 training views + 8 test views. Timings are wall-clock and process CPU
seconds (the CPU seconds tell what one idle core would take when the machine is shared). The source prompt is the
scene's canonical caption ("a red cube"), the target the caption of the edited scene ("a blue cube").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch


def _edits(spec: str) -> dict:
    out = {}
    for part in spec.split(","):
        k, v = part.split("=")
        out[k.strip()] = v.strip()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="113", help="comma-separated shapes-world scene seeds")
    ap.add_argument("--views", type=int, default=56)
    ap.add_argument("--holdout-every", type=int, default=7)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--fit-steps", type=int, default=1500)
    ap.add_argument("--methods", default="", help="comma-separated variants to edit with (empty: fit only)")
    ap.add_argument("--edit-steps", type=int, default=300)
    ap.add_argument("--edit", default="color=blue", help="with_changes arguments, e.g. color=blue or shape=sphere")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default="bench-out/scene")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from idsedit.scene.data import load_views
    from idsedit.scene.edit import edit_scene
    from idsedit.scene.evaluate import ground_truth, mean_ci, score_scene
    from idsedit.scene.fit import FitConfig, fit_scene
    from idsedit.scene.store import is_scene, load_scene
    from idsedit.shapes import caption, sample_scene, with_changes, write_multiview
    from idsedit.variants import variant_config

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    methods = [m for m in args.methods.split(",") if m]
    prior = None
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        params = sample_scene(np.random.default_rng(seed))
        target = with_changes(params, **_edits(args.edit))
        data = out / f"data-{seed}"
        if not (data / "transforms.json").is_file():
            write_multiview(params, data, n_views=args.views, size=args.size)
        scene_dir = out / f"scene-{seed}"
        row = {"seed": seed, "source": caption(params), "target": caption(target)}
        if not is_scene(scene_dir):
            t0, c0 = time.perf_counter(), time.process_time()
            res = fit_scene(data, scene_dir, FitConfig(steps=args.fit_steps, holdout_every=args.holdout_every),
                            progress=sys.stderr.isatty())
            row["fit"] = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                          "heldout_psnr": res.psnr, "depth_abs_err": res.report.get("heldout_depth_abs_err")}
        else:
            row["fit"] = json.loads((scene_dir / "report.json").read_text())
            row["fit"] = {"wall_s": row["fit"]["seconds"], "heldout_psnr": row["fit"]["heldout_psnr"]}
        test = load_views(data, "test", holdout_every=args.holdout_every)
        truths = ground_truth(params, target, test, args.views, args.size)
        row["source_scene"] = score_scene(load_scene(scene_dir), test, truths)["mean"]
        for m in methods:
            if prior is None:
                from idsedit.prior import load_prior

                prior = load_prior(args.model)
            cfg2d = variant_config(m)
            from idsedit.scene.edit import SceneEditConfig

            cfg = SceneEditConfig(method=cfg2d.method, steps=args.edit_steps, distill=cfg2d.distill)
            edited = out / f"edit-{seed}-{m}"
            t0, c0 = time.perf_counter(), time.process_time()
            if not is_scene(edited):
                r = edit_scene(prior, scene_dir, row["source"], row["target"], edited, cfg, progress=sys.stderr.isatty())
                rep = r.report
            else:
                rep = json.loads((edited / "report.json").read_text())
            row[m] = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                      "s_per_step": rep.get("seconds_per_step_this_run"),
                      "breakdown": rep.get("time_breakdown_s_per_step"),
                      "scores": score_scene(load_scene(edited), test, truths)["mean"]}
        rows.append(row)
        (out / "results.json").write_text(json.dumps(rows, indent=1))
    print(f"{'seed':>5} {'fit dB':>7} {'fit s':>7} | " + " | ".join(f"{m}: success / dB to target / dB outside / "
                                                                       "depth err" for m in methods))
    for r in rows:
        cells = [f"{r[m]['scores']['edit_success']:.2f} / {r[m]['scores']['psnr_to_target']:.1f} / "
                 f"{r[m]['scores']['psnr_outside']:.1f} / {r[m]['scores']['depth_abs_err']:.3f}" for m in methods]
        print(f"{r['seed']:>5} {r['fit']['heldout_psnr']:>7.2f} {r['fit']['wall_s']:>7.0f} | " + " | ".join(cells))
    if len(rows) > 1:
        for m in methods:
            for k in ("edit_success", "psnr_to_target", "psnr_outside", "depth_abs_err"):
                mu, hw = mean_ci([r[m]["scores"][k] for r in rows])
                print(f"{m} {k}: {mu:.3f} +- {hw:.3f} (95% CI over {len(rows)} scenes)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
