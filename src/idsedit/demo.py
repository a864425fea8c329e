"""`idsedit demo`: render a shapes scene, edit it with IDS and DDS side by side, score both against the truth.

    idsedit demo                              # "a red cube" -> "a blue cube" with the bundled mini prior
    idsedit demo --shape torus --color red --target-color green --steps 100 --out demo-out
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shape", default="cube", help="shape of the main object (default: cube)")
    p.add_argument("--color", default="red", help="its colour in the source scene (default: red)")
    p.add_argument("--target-color", default="blue", help="the colour the edit asks for (default: blue)")
    p.add_argument("--methods", default="dds,ids",
                   help="comma-separated method variants to compare (any name of idsedit.variants, e.g. ids-jf, "
                        "ids+cut; default: dds,ids)")
    p.add_argument("--steps", type=int, default=200, help="optimisation steps per edit (default: 200)")
    p.add_argument("--scene-seed", type=int, default=0, help="seed of the random scene layout (default: 0)")
    p.add_argument("--lr", type=float, default=None,
                   help="SGD learning rate (default: 0.1 scaled to the latent size as SD 1.5 at 512 px: "
                        "0.00625 for the mini prior's 16x16 latents)")
    p.add_argument("--seed", type=int, default=0, help="seed of the edit's noise draws (default: 0)")
    p.add_argument("--model", default=None, help="diffusers folder or hub id (default: the bundled mini prior)")
    p.add_argument("--out", default="idsedit-demo", help="output folder (default: ./idsedit-demo)")
    p.add_argument("--quiet", action="store_true", help="print only the result table")


def demo_case(shape: str, color: str, target_color: str, scene_seed: int):
    """A seeded scene whose main object is a `color` `shape`, and the same scene with it in `target_color`.

    The shapes world never draws an object the colour of its floor (the prior has not seen one), so where the seed's
    floor has the source or the target colour it is repainted in the first colour (COLORS order) that is neither
    of them nor the backdrop's; e.g. scene 0's red floor under the default red cube becomes yellow."""
    from .errors import IdseditError
    from .evaluate import ShapesEditCase
    from .shapes import COLORS, SHAPES, caption, sample_scene, with_changes

    for kind, value, allowed in (("shape", shape, SHAPES), ("colour", color, COLORS),
                                 ("target colour", target_color, COLORS)):
        if value not in allowed:
            raise IdseditError(f"unknown {kind} {value!r}: use one of {', '.join(allowed)}")
    if color == target_color:
        raise IdseditError(f"the target colour equals the source colour ({color}): nothing to edit")
    p = with_changes(sample_scene(np.random.default_rng(scene_seed)), shape=shape, color=color)
    if p.floor_color in (color, target_color):
        p = with_changes(p, floor=next(c for c in COLORS if c not in (color, target_color, p.background)))
    q = with_changes(p, color=target_color)
    return ShapesEditCase(f"demo-{scene_seed}", p, q, caption(p), caption(q), "color")


def cli_main(args: argparse.Namespace) -> int:
    from .evaluate import figure_grid, format_table, render_image, run_cases, summarize
    from .images import json_text, replace_together, temp_near, write_image, write_text
    from .prior import load_prior
    from .variants import canonical_variant, variant_config

    t0 = time.perf_counter()
    methods = list(dict.fromkeys(canonical_variant(m) for m in args.methods.split(",") if m.strip()))
    configs = {m: variant_config(m, steps=args.steps, seed=args.seed, lr=args.lr) for m in methods}  # checked
    case = demo_case(args.shape, args.color, args.target_color, args.scene_seed)
    prior = load_prior(args.model)
    if not args.quiet:
        print(f"model: {prior.name}\nedit: \"{case.source_prompt}\" -> \"{case.target_prompt}\", "
              f"{args.steps} steps, methods: {', '.join(methods)}")
    edited = {}

    def on_result(_case, method, res, row):
        edited[method] = res.image
        if not args.quiet:
            print(f"  {method}: {res.timings['total_s']:.1f} s, target reached: {row['target_reached']}, "
                  f"identity kept: {row['identity_kept']}, PSNR outside object: {row['psnr_outside']:.2f} dB")

    rows = run_cases(prior, [case], configs, on_result=on_result, progress=not args.quiet)
    size = prior.resolution
    images = [render_image(case.source_params, size), render_image(case.target_params, size)]
    grid = figure_grid([images + [edited[m] for m in methods]],
                       ["source", "ground truth"] + [m.upper() for m in methods])
    out = Path(args.out)
    record = {"case": {"source": case.source_params.to_dict(), "target": case.target_params.to_dict(),
                       "source_prompt": case.source_prompt, "target_prompt": case.target_prompt},
              "model": prior.name, "rows": rows}
    png, js = temp_near(out / "demo.png"), temp_near(out / "demo.json")
    try:
        write_image(grid, png, "PNG")
        write_text(json_text(record), js)
    except BaseException:
        png.unlink(missing_ok=True)
        js.unlink(missing_ok=True)
        raise
    replace_together([(png, out / "demo.png"), (js, out / "demo.json")])   # both or neither
    print(format_table(summarize(rows)))
    print(f"wrote {out / 'demo.png'} and {out / 'demo.json'} in {time.perf_counter() - t0:.0f} s")
    return 0
