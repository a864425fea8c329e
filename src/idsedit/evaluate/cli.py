"""`idsedit eval`: the evidence engine (see docs/eval.md).

    idsedit eval                                   # the quick preset: 6 cases, every method, 4 steps (seconds)
    idsedit eval --preset standard --out eval-std  # 60 cases x every method + ablations, 200 steps (hours on CPU)
    idsedit eval --families colour --n 20 --methods dds,ids --steps 200
    idsedit eval --methods ids --fpr-iters 3,0,1,2,5 --fpr-lambda 1,0.25,4    # first value: every run's; rest: ablations
    idsedit eval --model PATH --pairs pairs.jsonl  # your own images (image, source, target[, mask] per line)

Outputs in ``--out``: rows.jsonl (one line per edit, appended as it finishes; a rerun skips finished edits),
rows.csv, summary.md, summary.json, grid.png, images/, and the plots metrics.png, drift.png, residual_vs_t.png,
ablations.png, frontier.png.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from ..errors import IdseditError
from .methods import ABLATION_KEYS
from .presets import PRESETS


def _list(kind):
    def parse(text: str):
        try:
            values = [kind(v.strip()) for v in str(text).split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
        if not values:
            raise argparse.ArgumentTypeError("the list is empty")
        return values

    parse.__name__ = f"list of {kind.__name__}"
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to run")
    g.add_argument("--preset", default="quick", choices=list(PRESETS),
                   help="quick (CI-sized, default) | standard (60 edits, 200 steps) | full (150) | frontier "
                        "(cost-quality sweep); the flags below override the preset")
    g.add_argument("--families", default=None,
                   help="comma-separated edit families: colour, shape, size, floor, background, colour+shape "
                        "(default: all)")
    g.add_argument("--n", type=int, default=None, help="cases per family")
    g.add_argument("--case-seed", type=int, default=0, help="seed of the cases (default: 0)")
    g.add_argument("--view", default="default", choices=["default", "around"],
                   help="camera of the cases: the default 2D view, or one drawn around each scene (the v2 prior's "
                        "training cameras; same scenes, edits and t/noise draws as the default view)")
    g.add_argument("--methods", default=None,
                   help="comma-separated runs: any method of `idsedit edit --method`, pds@authors, sds@authors, "
                        "or 'all' (default: all)")
    g.add_argument("--steps", type=_list(int), default=None,
                   help="optimisation steps; a list 200,100 means 200 for every run plus 100-step ablation runs")
    g.add_argument("--fpr-iters", type=_list(int), default=None, help="FPR iterations N (list: first for every "
                   "run, the rest as ablations of the IDS runs), e.g. 3,0,1,2,5")
    g.add_argument("--fpr-lambda", type=_list(float), default=None, help="FPR step lambda (list as --fpr-iters)")
    g.add_argument("--guidance", type=_list(float), default=None, help="CFG scale (list as --fpr-iters)")
    g.add_argument("--lr-schedule", type=_list(str), default=None,
                   help="lr decay over the steps: constant, linear, cosine (list as --fpr-iters)")
    g.add_argument("--t-anneal-to", type=_list(int), default=None,
                   help="anneal t's upper end from 949 to this over the steps, 0 = fixed (list as --fpr-iters)")
    g.add_argument("--ablate-methods", default=None, help="runs the ablations vary (default: dds,ids)")
    g.add_argument("--lr", type=float, default=None, help="SGD learning rate (default: the automatic rule)")
    g.add_argument("--no-invert", action="store_true", help="skip the A -> B -> A edit (halves the time)")
    g.add_argument("--ablation-n", type=int, default=None,
                   help="cases per family the ablation runs edit (0: all; standard: 2, full: 5, others: all)")
    g.add_argument("--invert-ablations", default=None,
                   help="ablated settings whose runs also get A -> B -> A: 'all', 'none' or a list such as "
                        "fpr_iters,fpr_lambda (standard and full: none; others: all)")
    g.add_argument("--invert-methods", default=None,
                   help="main runs that also get A -> B -> A: 'all' or a list such as dds,ids (standard and full: "
                        "no-edit,dds,cds,ids,ids-jf; others: all)")
    g.add_argument("--shard", default=None, metavar="I/K",
                   help="run only this process's share (I of K, e.g. 1/2) of the edits into --out, next to the "
                        "other K - 1 processes started with the same flags; once all are done, run the same "
                        "command without --shard to merge the rows and write the report")
    g.add_argument("--batch", type=int, default=None,
                   help="cases that share each UNet call (SDS, DDS, PDS, IDS exact/JF; each case keeps its own t, "
                        "noise and step); 1: one case at a time (default: the preset's, 8; quick 3)")
    g.add_argument("--trace-every", type=int, default=None,
                   help="decode every k steps for the drift curve (0: never)")
    g.add_argument("--residual-cases", type=int, default=None,
                   help="cases whose FPR residual-vs-t curves are measured (0: none)")
    g.add_argument("--baseline", default="dds", help="paired differences are run minus this run (default: dds)")
    g.add_argument("--grid-cases", type=int, default=None, help="cases shown in grid.png")
    g.add_argument("--pairs", default=None,
                   help="your own edits: a JSONL file with image, source, target[, mask] per line (no ground "
                        "truth: PSNR/SSIM to the source, invertibility, LPIPS/CLIP when available)")
    g.add_argument("--lpips", default=None, help="LPIPS weights (safetensors, see docs/eval.md); default: skip")
    g.add_argument("--clip", default=None, help="local CLIP model folder or cached hub id for the CLIP score")
    m = p.add_argument_group("model and output")
    m.add_argument("--model", default=None, help="diffusers folder or hub id (default: the bundled mini prior)")
    m.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")
    m.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"], help="UNet dtype (default: by device)")
    m.add_argument("--evaluator", default=None,
                   help="evaluator weights that judge the edits (default: the bundled assets/evaluator.safetensors)")
    m.add_argument("--out", default="idsedit-eval", help="output folder (default: ./idsedit-eval)")
    m.add_argument("--overwrite", action="store_true",
                   help="discard the folder's earlier rows instead of resuming from them")
    m.add_argument("--quiet", action="store_true", help="no progress bar; print only the summary")


def resolve(args, preset_ablations: bool = True) -> dict:
    """The preset's values with the command line's overrides: {families, per_family, methods, steps, ...}.
    ``preset_ablations=False`` keeps only the ablations the command line asks for (``--pairs``)."""
    pre = PRESETS[args.preset]
    first = lambda v, d: v[0] if v else d  # noqa: E731
    rest = lambda v: v[1:] if v else []     # noqa: E731
    ablations = dict(pre.ablations) if preset_ablations else {}
    for key, values in (("fpr_iters", args.fpr_iters), ("fpr_lambda", args.fpr_lambda), ("steps", args.steps),
                        ("guidance", args.guidance), ("lr_schedule", args.lr_schedule),
                        ("t_anneal_to", args.t_anneal_to)):
        if values is not None:
            ablations[key] = rest(values)
    s = {
        "preset": args.preset,
        "families": [f for f in (args.families.split(",") if args.families else pre.families) if f.strip()],
        "per_family": args.n if args.n is not None else pre.per_family,
        "methods": args.methods or pre.methods,
        "steps": first(args.steps, pre.steps),
        "fpr_iters": first(args.fpr_iters, None), "fpr_lambda": first(args.fpr_lambda, None),
        "guidance": first(args.guidance, None),
        "lr_schedule": first(args.lr_schedule, None), "t_anneal_to": first(args.t_anneal_to, None),
        "ablations": {k: v for k, v in ablations.items() if v},
        "ablate_methods": args.ablate_methods or pre.ablate_methods,
        "product": pre.product,
        "trace_every": args.trace_every if args.trace_every is not None else pre.trace_every,
        "residual_cases": args.residual_cases if args.residual_cases is not None else pre.residual_cases,
        "residual_ts": list(pre.residual_ts), "n_boot": pre.n_boot,
        "grid_cases": args.grid_cases if args.grid_cases is not None else pre.grid_cases,
        "invert": not args.no_invert and pre.invert, "batch": args.batch if args.batch is not None else pre.batch,
        "ablation_per_family": args.ablation_n if args.ablation_n is not None else pre.ablation_per_family,
        "invert_ablations": _invert_ablations(args.invert_ablations, pre.invert_ablations),
        "invert_methods": _invert_methods(args.invert_methods, pre.invert_methods),
        "lr": args.lr, "case_seed": args.case_seed, "baseline": args.baseline,
        "view": getattr(args, "view", "default"), "evaluator": getattr(args, "evaluator", None),
    }
    if s["per_family"] < 1:
        raise IdseditError(f"--n must be >= 1, got {s['per_family']}")
    if s["steps"] < 1 or any(v < 1 for v in s["ablations"].get("steps", [])):
        raise IdseditError("--steps values must be >= 1")
    if s["batch"] < 1:
        raise IdseditError(f"--batch must be >= 1, got {s['batch']}")
    if s["ablation_per_family"] < 0:
        raise IdseditError(f"--ablation-n must be >= 0, got {s['ablation_per_family']}")
    if s["trace_every"] < 0 or s["residual_cases"] < 0:
        raise IdseditError("--trace-every and --residual-cases must be >= 0")
    return s


def _invert_ablations(text: str | None, preset_value):
    """--invert-ablations -> None (every ablation) or a list of setting names."""
    if text is None:
        return list(preset_value) if preset_value is not None else None
    key = text.strip().lower()
    if key == "all":
        return None
    if key == "none":
        return []
    names = [k.strip() for k in key.split(",") if k.strip()]
    bad = [k for k in names if k not in ABLATION_KEYS]
    if bad:
        raise IdseditError(f"--invert-ablations: unknown setting(s) {', '.join(bad)}; use all, none or some of "
                           f"{', '.join(ABLATION_KEYS)}")
    return names


def _invert_methods(text: str | None, preset_value):
    """--invert-methods -> None (every main run) or a list of run labels."""
    if text is None:
        return list(preset_value) if preset_value is not None else None
    if text.strip().lower() == "all":
        return None
    from .methods import canonical_key

    return [canonical_key(m) for m in text.split(",") if m.strip()]


def base_config(s: dict):
    """The EditConfig every run starts from (the shared loop's settings plus the first values of the lists)."""
    import dataclasses

    from ..edit2d import EditConfig

    cfg = EditConfig(steps=s["steps"], lr=s["lr"], lr_schedule=s["lr_schedule"] or "constant",
                     t_anneal_to=s["t_anneal_to"] or None)
    over = {k: s[k] for k in ("fpr_iters", "fpr_lambda", "guidance") if s[k] is not None}
    return dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, **over)) if over else cfg


def cli_main(args) -> int:
    try:
        return _main(args)
    except OSError as e:
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        raise IdseditError(f"could not read or write{where}: {e.strerror or e}: check the path, permissions and free "
                           "disk space (--out)") from None


def _main(args) -> int:
    from ..images import save_json_atomic
    from .cases import make_cases
    from .methods import build_runs, limit_ablations, parse_methods
    from .runner import parse_shard

    if args.pairs:
        from .pairs import run_pairs_cli

        return run_pairs_cli(args)
    s = resolve(args)
    cases = make_cases(s["families"], s["per_family"], s["case_seed"], s["view"])
    runs = build_runs(parse_methods(s["methods"]), base_config(s), s["ablations"],
                      [m for m in s["ablate_methods"].split(",") if m.strip()], product=s["product"])
    runs = limit_ablations(runs, cases, s["ablation_per_family"], s["invert_ablations"], s["invert_methods"])
    shard = parse_shard(args.shard)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise IdseditError(f"--out {out} is a file: name a folder")
    if args.overwrite:
        for name in ("rows.jsonl", "run.json"):
            (out / name).unlink(missing_ok=True)
        for path in out.glob("rows.shard*of*.jsonl") if out.is_dir() else ():
            path.unlink()
        shutil.rmtree(out / "images", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    from ..prior import load_prior

    prior = load_prior(args.model, device=args.device, dtype=args.dtype)
    n_edits = sum(len(r.cases) if r.cases is not None else len(cases) for r in runs)
    if not args.quiet:
        part = f", shard {shard[0] + 1} of {shard[1]}" if shard else ""
        print(f"model: {prior.name}\n{len(cases)} cases x {len(runs)} runs: {n_edits} edits "
              f"({'with' if s['invert'] else 'without'} A->B->A), preset {s['preset']}{part}: {out}", flush=True)
    if shard is None or not (out / "run.json").is_file():   # shards write it only if no run has
        save_json_atomic({"argv": sys.argv[1:], "settings": s, "model": prior.name,
                          "runs": [r.record() for r in runs], "cases": [c.record() for c in cases]}, out / "run.json")
    from ..mini.evaluator import load_evaluator
    from .runner import run_evaluation

    evaluator = load_evaluator(s["evaluator"])
    t0 = time.perf_counter()
    rows = run_evaluation(prior, cases, runs, out, evaluator=evaluator, invert=s["invert"],
                          trace_every=s["trace_every"], progress=not args.quiet, log=print, batch=s["batch"],
                          judge=str(Path(s["evaluator"]).resolve()) if s["evaluator"] else None, shard=shard)
    if shard is not None:
        print(f"shard {shard[0] + 1} of {shard[1]} done: {len(rows)} edits of {n_edits} are in {out}. When every "
              "shard is done, run the same command without --shard to merge the rows and write the report.")
        return 0
    residuals = None
    if s["residual_cases"]:
        residuals = _residuals(prior, cases, s, out)
    write_report(out, rows, cases, runs, s, prior.name, residuals, time.perf_counter() - t0)
    print((out / "summary.md").read_text().split("\n## Per edit family")[0])
    print(f"wrote {out}/: summary.md, summary.json, rows.csv, rows.jsonl, grid.png and plots")
    return 0


def _residuals(prior, cases, s: dict, out: Path) -> dict:
    """FPR residual curves, cached in residuals.json (same cases and settings: reused on resume)."""
    import json

    from ..images import save_json_atomic
    from .diagnostics import fpr_residual_curves
    from .runner import model_identity

    chosen = cases[: s["residual_cases"]]
    n_iters = max([3] + [int(v) for v in s["ablations"].get("fpr_iters", [])])
    lam = s["fpr_lambda"] if s["fpr_lambda"] is not None else 1.0
    guidance = s["guidance"] if s["guidance"] is not None else 7.5
    path = out / "residuals.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("cases") == [c.name for c in chosen] and old.get("t") == s["residual_ts"] and \
                old.get("iters") == n_iters and old.get("lambda") == lam and old.get("model") == model_identity(prior):
            return old
    curves = fpr_residual_curves(prior, chosen, s["residual_ts"], iters=n_iters, lam=lam, guidance=guidance)
    curves["model"] = model_identity(prior)
    save_json_atomic(curves, path)
    return curves


def write_report(out: Path, rows: list[dict], cases, runs, s: dict, model: str, residuals: dict | None,
                 seconds: float) -> None:
    """summary.md / summary.json / rows.csv / grid.png and the plots, all from ``rows`` (atomic writes)."""
    import datetime

    from PIL import Image

    from ..images import atomic_path, save_image_atomic, save_json_atomic
    from . import figures
    from .cases import render_image
    from .claims import claims_markdown, judge_claims
    from .report import (ablation_differences, family_table, frontier, markdown_summary, paired_differences,
                         rows_by_case, rows_csv, summarize)

    summary = summarize(rows, n_boot=s["n_boot"])
    labels = list(summary)
    baseline = s["baseline"] if s["baseline"] in labels else None
    diffs = paired_differences(rows, baseline, n_boot=s["n_boot"]) if baseline else {}
    fams = family_table(rows)
    argv = sys.argv[1:]
    command = "idsedit " + " ".join(argv) if argv[:1] == ["eval"] else "idsedit eval (called from Python)"
    header = {"command": command, "model": model, "preset": s["preset"],
              "cases": f"{len(cases)} ({', '.join(s['families'])}; {s['per_family']} per family, seed {s['case_seed']}"
                       f"; {s.get('view', 'default')} view)",
              "judge": s.get("evaluator") or "the bundled evaluator",
              "steps": s["steps"], "A->B->A": _invert_note(s, runs),
              "VAE round trip, PSNR outside (the ceiling)": _mean_vae(rows),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "wall time of this invocation": f"{seconds:.0f} s"}
    abl_cases = next((r.cases for r in runs if r.ablation is not None and r.cases is not None), None)
    abl_summary = summary
    if abl_cases is not None:   # ablations on a subset: their base runs are summarised on the same cases
        abl_summary = summarize([r for r in rows if r["case"] in abl_cases], n_boot=s["n_boot"])
        header["ablations"] = (f"on {len(abl_cases)} cases ({s['ablation_per_family']} per family); their table and "
                               "plot compare each with its base run on the same cases")
    claims = judge_claims(rows, n_boot=s["n_boot"])
    measured = [c for c in claims if c["verdict"] != "not measured"]
    md = markdown_summary(summary, diffs, fams, baseline=baseline, header=header, cases=[c.record() for c in cases],
                          ablation_summary=abl_summary if abl_cases is not None else None,
                          ablation_diffs=ablation_differences(rows, n_boot=s["n_boot"]),
                          claims=claims_markdown(claims) if measured else None)
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(md)
    with atomic_path(out / "rows.csv") as tmp:
        tmp.write_text(rows_csv(rows))
    save_json_atomic({"settings": s, "model": model, "baseline": baseline, "summary": summary,
                      "paired_differences": diffs, "families": fams, "frontier": frontier(summary), "claims": claims,
                      "runs": [r.record() for r in runs],
                      "cases": [c.record() for c in cases]}, out / "summary.json")
    size = 64
    by = rows_by_case(rows)
    main = [r.label for r in runs if not r.ablation]
    shown = _grid_cases(cases, s["grid_cases"])
    grid_rows = []
    for c in shown:
        imgs = [render_image(c.source_params, size), render_image(c.target_params, size)]
        for lab in main:
            r = by.get((c.name, lab))
            imgs.append(Image.open(out / r["image"]).convert("RGB") if r and (out / r["image"]).is_file() else None)
        grid_rows.append(imgs)
    grid = figures.figure_grid(grid_rows, ["source", "ground truth"] + main, row_labels=[c.name for c in shown])
    save_image_atomic(grid, out / "grid.png")
    figures.plot_metrics(summary, out / "metrics.png")
    figures.plot_drift(rows, out / "drift.png")
    if residuals:
        figures.plot_residuals(residuals, out / "residual_vs_t.png")
    figures.plot_ablations(abl_summary, out / "ablations.png")
    figures.plot_frontier(summary, out / "frontier.png")


def _invert_note(s: dict, runs) -> str:
    if not s["invert"]:
        return "no"
    if all(r.invert for r in runs):
        return "yes"
    main = [r.label for r in runs if r.ablation is None and r.invert]
    what = "every main run" if all(r.invert for r in runs if r.ablation is None) else ", ".join(main)
    return what + (f", and the {', '.join(s['invert_ablations'])} ablations" if s["invert_ablations"] else "")


def _grid_cases(cases, k: int):
    """Up to k cases, cycling over families so each appears."""
    fams = list(dict.fromkeys(c.attribute for c in cases))
    by_f = {f: [c for c in cases if c.attribute == f] for f in fams}
    out, i = [], 0
    while len(out) < min(k, len(cases)):
        for f in fams:
            if i < len(by_f[f]) and len(out) < k:
                out.append(by_f[f][i])
        i += 1
    return out


def _mean_vae(rows) -> str:
    import numpy as np

    v = [r["vae_psnr_outside"] for r in rows if r.get("vae_psnr_outside") is not None]
    return f"{np.mean(v):.2f} dB" if v else "-"
