"""`idsedit eval --pairs pairs.jsonl`: the evaluation on your own images (no ground truth).

Each line (or CSV row, the same format as `idsedit edit`'s manifests) names ``image``, ``source``, ``target`` and
optionally ``mask`` (white = editable). Every run edits every pair with the same seeded draws (pairing as in the
shapes evaluation) and is scored by:

    psnr_source, ssim_source   edited vs the input (outside the mask when there is one: what should not change)
    invert_psnr, invert_latent_psnr   A -> B -> A against A (pixels at the input size, latents)
    lpips_source               LPIPS(input, edited) when ``--lpips`` weights are given (lower = closer)
    clip_target, clip_gain     CLIP score of the edit to the target prompt, and its gain over the input's, when a
                               CLIP model is on disk (``--clip``)

Rows, resume, summary (bootstrap CIs, paired differences) and the image grid work as for the shapes cases.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import IdseditError
from ..metrics import capped_psnr, clip_score, latent_psnr, load_clip, load_lpips, lpips_distance, psnr, ssim
from .runner import (INVERT_SEED_OFFSET, PairedSampler, count_unet, model_identity, peak_memory, read_rows,
                     run_fingerprint, store_row)


def pair_seed(index: int, seed: int = 0) -> int:
    return int(np.random.SeedSequence([int(seed), 99, int(index)]).generate_state(1)[0] >> 1)


def _arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), np.float32) / 255.0


def edit_pair(prior, image: Image.Image, source: str, target: str, config, *, seed: int, t_grid=None,
              mask: Image.Image | None = None, invert: bool = True, noop: bool = False) -> dict:
    """One pair, one run: {"edited": PIL, "seconds", "unet", "fe", peak memory, and the A->B->A fields}."""
    from ..edit2d import edit_latents, image_to_tensor, latent_mask, tensor_to_image
    from ..images import fit_to_model, restore_size

    fitted = fit_to_model(image, prior.resolution, prior.latent_multiple)
    z_src = prior.encode(image_to_tensor(fitted))
    cs, ct = prior.encode_text(source), prior.encode_text(target)
    m_lat = latent_mask(mask.resize(fitted.size), tuple(z_src.shape[-2:]), z_src.device) if mask else None
    m_img = mask.convert("L").resize(image.size, Image.Resampling.BILINEAR) if mask else None

    def finish(z):
        out = restore_size(tensor_to_image(prior.decode(z)), image.size)
        return Image.composite(out, image, m_img) if m_img is not None else out

    with peak_memory(prior.device) as mem, count_unet(prior.unet) as cost:
        t0 = time.perf_counter()
        z = z_src if noop else edit_latents(prior, z_src, cs, ct, config, sampler=PairedSampler(seed, t_grid), mask=m_lat)
        edited = finish(z)
        seconds = time.perf_counter() - t0
    res = {"edited": edited, "seconds": round(seconds, 4), "unet": cost.record(), "fe": cost.forward_equivalents,
           **mem}
    if invert:
        z_back = z_src if noop else edit_latents(prior, z, ct, cs, config, sampler=PairedSampler(seed + INVERT_SEED_OFFSET, t_grid),
                              mask=m_lat)
        res.update(invert_psnr=capped_psnr(psnr(_arr(finish(z_back)), _arr(image))),
                   invert_latent_psnr=latent_psnr(z_src.cpu().numpy(), z_back.cpu().numpy()))
    return res


def run_pairs(prior, jobs, runs, out: Path, *, invert: bool = True, lpips=None, clip=None, seed: int = 0,
              progress: bool = True, on_row=None) -> list[dict]:
    """Edit every pair with every run; rows appended to ``out/rows.jsonl`` (resume as :func:`run_evaluation`)."""
    from ..images import load_image

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    done = {(r["case"], r["label"]): r for r in read_rows(rows_path)}
    plan = []
    for i, job in enumerate(jobs):
        name = f"{i:03d}-{Path(job.image).stem}"
        record = {"image": str(job.image), "source": job.source, "target": job.target,
                  "mask": str(job.mask) if job.mask else None, "seed": pair_seed(i, seed)}
        for run in runs:
            fp = run_fingerprint(run.record(), record, model_identity(prior), invert)
            prev = done.get((name, run.label))
            if prev is not None and prev.get("fingerprint") != fp:
                raise IdseditError(f"{rows_path} holds a result for {name} / {run.label} made with other settings: "
                                   "use another --out, or --overwrite to start over")
            plan.append((i, name, job, record, run, fp, prev))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(plan), initial=sum(p[-1] is not None for p in plan), unit="edit", desc="eval")
    rows, cache = [], {}
    try:
        for i, name, job, record, run, fp, prev in plan:
            if prev is not None:
                rows.append(prev)
                continue
            if i not in cache:
                cache.clear()
                img = load_image(job.image)
                msk = load_image(job.mask).convert("L") if job.mask else None
                cache[i] = (img, msk)
            img, msk = cache[i]
            cfg = dataclasses.replace(run.config, seed=record["seed"])
            res = edit_pair(prior, img, job.source, job.target, cfg, seed=record["seed"], t_grid=run.t_grid,
                            mask=msk, invert=invert, noop=run.variant == "none")
            a, e = _arr(img), _arr(res["edited"])
            keep = None if msk is None else np.asarray(msk.resize(img.size), np.float32) < 128
            row = {"case": name, "family": "pairs", "label": run.label, "variant": run.variant,
                   "base": run.base or run.label, "ablation": list(run.ablation) if run.ablation else None,
                   "seed": record["seed"], "source_prompt": job.source, "target_prompt": job.target,
                   "steps": cfg.steps, "input": str(job.image),
                   "psnr_source": capped_psnr(psnr(e, a, mask=keep)),
                   "ssim_source": _ssim_or_nan(e, a, keep),
                   **{k: v for k, v in res.items() if k != "edited"}}
            if lpips is not None:
                row["lpips_source"] = lpips_distance(lpips, a, e)
            if clip is not None:
                row["clip_target"] = clip_score(clip, res["edited"], job.target)
                row["clip_gain"] = row["clip_target"] - clip_score(clip, img, job.target)
            img_name = f"images/{name}.{run.label}.png".replace("[", "_").replace("]", "_").replace(",", "_")
            store_row(out, rows_path, rows, row, res["edited"], img_name, fp, f"{name}|{run.label}", bar=bar,
                      on_row=on_row)
    finally:
        if bar is not None:
            bar.close()
    return rows


def _ssim_or_nan(a, b, mask) -> float:
    try:
        v = ssim(a, b, mask=mask)
    except IdseditError:   # smaller than the SSIM window
        return float("nan")
    return float(v)


def run_pairs_cli(args) -> int:
    """`idsedit eval --pairs FILE`: the CLI path (see :mod:`idsedit.evaluate.cli`)."""
    import shutil

    from ..images import atomic_path, save_json_atomic
    from ..manifest import read_manifest
    from ..prior import load_prior
    from .cli import base_config, resolve
    from .methods import build_runs, parse_methods
    from .report import markdown_summary, paired_differences, rows_csv, summarize

    s = resolve(args, preset_ablations=False)
    jobs = read_manifest(args.pairs)
    if not jobs:
        raise IdseditError(f"{args.pairs} lists no pairs")
    runs = build_runs(parse_methods(s["methods"] if args.methods else "dds,ids"), base_config(s), s["ablations"],
                      [m for m in s["ablate_methods"].split(",") if m.strip()], product=s["product"])
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise IdseditError(f"--out {out} is a file: name a folder")
    if args.overwrite:
        (out / "rows.jsonl").unlink(missing_ok=True)
        shutil.rmtree(out / "images", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    lpips, clip = None, None
    if args.lpips:
        lpips, why = load_lpips(args.lpips)
        if why:
            print(why, file=sys.stderr)
    else:
        print("LPIPS skipped: no --lpips weights given (see docs/eval.md)", file=sys.stderr)
    if args.clip:
        clip, why = load_clip(args.clip)
        if why:
            print(why, file=sys.stderr)
    else:
        print("CLIP score skipped: no --clip model given", file=sys.stderr)
    prior = load_prior(args.model, device=args.device, dtype=args.dtype)
    rows = run_pairs(prior, jobs, runs, out, invert=s["invert"], lpips=lpips, clip=clip, seed=s["case_seed"],
                     progress=not args.quiet)
    summary = summarize(rows, n_boot=s["n_boot"])
    baseline = s["baseline"] if s["baseline"] in summary else None
    diffs = paired_differences(rows, baseline, n_boot=s["n_boot"]) if baseline else {}
    cases = [{"name": r["case"], "seed": r["seed"], "source_prompt": r["source_prompt"],
              "target_prompt": r["target_prompt"]} for r in rows if r["label"] == runs[0].label]
    md = markdown_summary(summary, diffs, {}, baseline=baseline, cases=cases,
                          header={"pairs": str(args.pairs), "model": prior.name, "steps": s["steps"]})
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(md)
    with atomic_path(out / "rows.csv") as tmp:
        tmp.write_text(rows_csv(rows))
    save_json_atomic({"settings": s, "model": prior.name, "summary": summary, "paired_differences": diffs,
                      "runs": [r.record() for r in runs]}, out / "summary.json")
    print(md.split("\n## Per edit family")[0])
    print(f"wrote {out}/: summary.md, summary.json, rows.csv, rows.jsonl, images/")
    return 0
