"""The first evaluation's API, kept for `idsedit demo`, API users and reproducing the v1-era first signal
(docs/first-signal-* in git history up to 4526b4b): colour_edit_cases (its 20 cases), run_cases (edit_image per
case and config, flat rows), summarize (plain rates and means per method) and format_table. New code uses
:func:`idsedit.evaluate.run_evaluation` and :func:`idsedit.evaluate.report.summarize` (bootstrap CIs).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..edit2d import EditConfig, edit_image
from .cases import ShapesEditCase, render_image


def colour_edit_cases(n: int, seed: int = 0) -> list[ShapesEditCase]:
    """The first evaluation's n colour edits (that first signal): scenes drawn in sequence from one generator
    seeded ``seed``, each main object recoloured to a different random named colour. New code uses
    :func:`idsedit.evaluate.cases.make_cases` (a seed per case, six families)."""
    from ..shapes import COLORS, caption, sample_scene, with_changes

    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        p = sample_scene(rng)
        new = str(rng.choice([c for c in COLORS if c != p.main.color]))
        q = with_changes(p, color=new)
        cases.append(ShapesEditCase(f"{seed}-{i:03d}", p, q, caption(p), caption(q), "color"))
    return cases


def run_cases(prior, cases: list[ShapesEditCase], configs: dict[str, EditConfig], *, evaluator=None,
              size: int | None = None, on_result: Callable | None = None, progress: bool = False) -> list[dict]:
    """Edit every case with every config; one row per (case, method) with scores, timings and UNet calls.

    ``on_result(case, method, result, row)`` sees each edit as it finishes (figures, live output).
    """
    from ..mini.evaluator import load_evaluator, score_edit

    evaluator = evaluator or load_evaluator()
    size = size or prior.resolution
    rows = []
    for case in cases:
        src = render_image(case.source_params, size)
        src_arr = np.asarray(src, np.float32) / 255.0
        for method, cfg in configs.items():
            res = edit_image(prior, src, case.source_prompt, case.target_prompt, cfg, progress=progress)
            score = score_edit(src_arr, np.asarray(res.image, np.float32) / 255.0, source_params=case.source_params,
                               target_params=case.target_params, evaluator=evaluator)
            row = {"case": case.name, "method": method, "attribute": case.attribute,
                   "source_prompt": case.source_prompt, "target_prompt": case.target_prompt,
                   **{k: v for k, v in score.items() if k != "pred"}, "pred": score["pred"],
                   "seconds": res.timings["total_s"], "unet_calls": res.unet_calls, "diagnostics": res.diagnostics}
            rows.append(row)
            if on_result is not None:
                on_result(case, method, res, row)
    return rows


def summarize(rows: list[dict]) -> dict[str, dict]:
    """Per method: success and identity rates, kept rate per attribute, mean PSNR/SSIM, mean seconds per edit."""
    out = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        kept_attrs = sorted({a for r in rs for a in r["kept"]})
        out[method] = {
            "n": len(rs),
            "target_reached": float(np.mean([r["target_reached"] for r in rs])),
            "identity_kept": float(np.mean([r["identity_kept"] for r in rs])),
            **{f"kept_{a}": float(np.mean([r["kept"][a] for r in rs if a in r["kept"]])) for a in kept_attrs},
            "psnr_outside": float(np.mean([r["psnr_outside"] for r in rs])),
            "ssim_outside": float(np.mean([r["ssim_outside"] for r in rs])),
            "psnr_target": float(np.mean([r["psnr_target"] for r in rs])),
            "ssim_target": float(np.mean([r["ssim_target"] for r in rs])),
            "seconds_per_edit": float(np.mean([r["seconds"] for r in rs])),
        }
    return out


def format_table(summary: dict[str, dict]) -> str:
    """A fixed-width text table of :func:`summarize`'s output (rates in %, PSNR in dB)."""
    cols = [k for k in next(iter(summary.values())) if k != "n"]
    head = ["method", "n"] + cols
    lines = [" | ".join(f"{h:>14}" for h in head)]
    for m, s in summary.items():
        cells = [f"{m:>14}", f"{s['n']:>14}"]
        for k in cols:
            v = s[k]
            pct = k in ("target_reached", "identity_kept") or k.startswith("kept_")
            cells.append(f"{100 * v:>13.0f}%" if pct else f"{v:>14.3f}" if "ssim" in k else f"{v:>14.2f}")
        lines.append(" | ".join(cells))
    return "\n".join(lines)
