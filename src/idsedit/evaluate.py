"""Edits with a ground truth: the shapes world's evaluation protocol (first slice: colour edits).

A case is a rendered scene plus the same scene with one attribute changed (the ground truth of the edit). Each
method edits the source render from its canonical caption ("a red cube") to the target's ("a blue cube"); the
evaluator then judges the result (see :func:`idsedit.mini.evaluator.score_edit`): did the asked attribute change,
were the others (shape, size, position, floor, background) kept, PSNR/SSIM against the ground-truth render and
outside the object against the source.

    cases = colour_edit_cases(20, seed=0)
    rows = run_cases(prior, cases, {"dds": EditConfig(method="dds"), "ids": EditConfig(method="ids")})
    print(format_table(summarize(rows)))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from .edit2d import EditConfig, edit_image


@dataclass
class ShapesEditCase:
    """One edit with its ground truth."""

    name: str
    source_params: object          # idsedit.shapes.SceneParams
    target_params: object
    source_prompt: str
    target_prompt: str
    attribute: str                 # the attribute that changes


def colour_edit_cases(n: int, seed: int = 0) -> list[ShapesEditCase]:
    """n seeded scenes, each with its main object's colour changed to a different, random named colour."""
    from .shapes import COLORS, caption, sample_scene, with_changes

    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        p = sample_scene(rng)
        new = str(rng.choice([c for c in COLORS if c != p.main.color]))
        q = with_changes(p, color=new)
        cases.append(ShapesEditCase(f"{seed}-{i:03d}", p, q, caption(p), caption(q), "color"))
    return cases


def render_image(params, size: int) -> Image.Image:
    """The scene rendered as a PIL RGB image."""
    from .shapes import render

    return Image.fromarray((render(params, size).rgb * 255).round().astype(np.uint8))


def run_cases(prior, cases: list[ShapesEditCase], configs: dict[str, EditConfig], *, evaluator=None,
              size: int | None = None, on_result: Callable | None = None, progress: bool = False) -> list[dict]:
    """Edit every case with every config; one row per (case, method) with scores, timings and UNet calls.

    ``on_result(case, method, result, row)`` sees each edit as it finishes (figures, live output).
    """
    from .mini.evaluator import load_evaluator, score_edit

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


def figure_grid(rows_of_images: list[list[Image.Image]], col_labels: list[str], cell: int = 128) -> Image.Image:
    """A labelled grid: one row per case, one column per image kind (nearest-neighbour upscaled to ``cell``)."""
    label_h = 14
    n_rows, n_cols = len(rows_of_images), len(col_labels)
    grid = Image.new("RGB", (n_cols * cell, label_h + n_rows * cell), "white")
    draw = ImageDraw.Draw(grid)
    for j, label in enumerate(col_labels):
        draw.text((j * cell + 3, 1), label[:22], fill="black")
    for i, images in enumerate(rows_of_images):
        for j, im in enumerate(images):
            grid.paste(im.resize((cell, cell), Image.Resampling.NEAREST), (j * cell, label_h + i * cell))
    return grid


def config_record(configs: dict[str, EditConfig]) -> dict:
    return {m: dataclasses.asdict(c) for m, c in configs.items()}


# ----------------------------------------------------------------------------------------------- CLI: idsedit eval
def add_arguments(p) -> None:
    p.add_argument("--edits", default="colour", choices=["colour"], help="kind of edits (default: colour)")
    p.add_argument("--n", type=int, default=20, help="number of seeded cases (default: 20)")
    p.add_argument("--case-seed", type=int, default=0, help="seed of the cases (default: 0)")
    p.add_argument("--methods", default="dds,ids", help="comma-separated methods (default: dds,ids)")
    p.add_argument("--steps", type=int, default=200, help="optimisation steps per edit (default: 200)")
    p.add_argument("--lr", type=float, default=None,
                   help="SGD learning rate (default: 0.1 scaled to the latent size as SD 1.5 at 512 px: "
                        "0.00625 for the mini prior's 16x16 latents)")
    p.add_argument("--seed", type=int, default=0, help="seed of each edit's noise draws (default: 0)")
    p.add_argument("--fpr-mode", default="exact", help="FPR mode for IDS (default: exact)")
    p.add_argument("--model", default=None, help="diffusers folder or hub id (default: the bundled mini prior)")
    p.add_argument("--out", default="idsedit-eval", help="output folder (default: ./idsedit-eval)")
    p.add_argument("--grid-cases", type=int, default=10, help="cases shown in the figure grid (default: 10)")


def cli_main(args) -> int:
    import json
    from pathlib import Path

    from .distill import DistillConfig
    from .errors import IdseditError
    from .images import save_image_atomic, save_json_atomic
    from .prior import load_prior

    if args.n < 1:
        raise IdseditError(f"--n must be >= 1, got {args.n}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    cases = colour_edit_cases(args.n, args.case_seed)
    prior = load_prior(args.model)
    lr = args.lr
    configs = {m: EditConfig(method=m, steps=args.steps, seed=args.seed, lr=lr,
                             distill=DistillConfig(fpr_mode=args.fpr_mode)) for m in methods}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images: dict[str, list] = {}

    def on_result(case, method, res, row):
        images.setdefault(case.name, []).append(res.image)
        print(f"{case.name} {method:>4}: \"{case.source_prompt}\" -> \"{case.target_prompt}\"  reached="
              f"{row['target_reached']!s:5} kept={row['identity_kept']!s:5} psnr_out={row['psnr_outside']:.2f} dB "
              f"({row['seconds']:.1f} s)", flush=True)

    rows = run_cases(prior, cases, configs, on_result=on_result)
    summary = summarize(rows)
    size = prior.resolution
    shown = cases[: args.grid_cases]
    grid = figure_grid([[render_image(c.source_params, size), render_image(c.target_params, size)] + images[c.name]
                        for c in shown], ["source", "ground truth"] + [m.upper() for m in methods])
    save_image_atomic(grid, out / "grid.png")
    save_json_atomic({"model": prior.name, "configs": config_record(configs), "summary": summary}, out / "summary.json")
    (out / "rows.jsonl").write_text("".join(json.dumps(r, default=float) + "\n" for r in rows))
    print(format_table(summary))
    print(f"wrote {out / 'summary.json'}, {out / 'rows.jsonl'} and {out / 'grid.png'}")
    return 0
