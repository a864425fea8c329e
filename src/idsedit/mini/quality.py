"""Quality checks of the mini prior: VAE PSNR on held-out renders, text-to-image samples, their accuracy.

Samples use the settings the brief fixes: DDIM, 50 steps, classifier-free guidance 7.5, 64x64.
Accuracy comes from the shapes evaluator (``idsedit.mini.evaluator``) when it is available, else from
:func:`palette_colour`, a crude colour check (the dominant palette colour of the central region,
ignoring the colours seen on the image border, i.e. floor and background).

Usage::

    python -m idsedit.mini.quality --model src/idsedit/assets/mini-sd --grid docs/mini-samples.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

GRID_PROMPTS = ["a red cube", "a blue sphere", "a green cone", "a yellow torus", "a purple cylinder",
                "a white sphere", "an orange cube", "a cyan cone", "a pink torus", "a gray cylinder"]
"""Prompts of the sample grid (rows)."""


def load_pipeline(model: str | Path):
    """StableDiffusionPipeline from a folder with a DDIM scheduler (same betas), eval mode, no progress bar."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(model), local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, prompts: list[str], seeds: list[int], steps: int = 50, guidance: float = 7.5,
           batch: int = 32) -> np.ndarray:
    """Images (len(prompts), len(seeds), H, W, 3) uint8; image (i, j) uses prompt i and seed j."""
    import torch

    pairs = [(p, s) for p in prompts for s in seeds]
    out = []
    for k in range(0, len(pairs), batch):
        chunk = pairs[k:k + batch]
        gens = [torch.Generator().manual_seed(s) for _, s in chunk]
        with torch.no_grad():
            im = pipe([p for p, _ in chunk], num_inference_steps=steps, guidance_scale=guidance,
                      generator=gens, output_type="np").images
        out.append(np.clip(np.round(im * 255), 0, 255).astype(np.uint8))
    ims = np.concatenate(out)
    return ims.reshape(len(prompts), len(seeds), *ims.shape[1:])


def save_grid(images: np.ndarray, labels: list[str], path: str | Path, scale: int = 2, label_w: int = 110) -> Path:
    """Save a (rows, cols, H, W, 3) uint8 grid with a text label per row (PNG, atomic)."""
    import os

    from PIL import Image, ImageDraw

    rows, cols, h, w, _ = images.shape
    canvas = Image.new("RGB", (label_w + cols * w * scale, rows * h * scale), "white")
    draw = ImageDraw.Draw(canvas)
    for i in range(rows):
        draw.text((4, i * h * scale + h * scale // 2 - 6), labels[i], fill="black")
        for j in range(cols):
            tile = Image.fromarray(images[i, j]).resize((w * scale, h * scale), Image.NEAREST)
            canvas.paste(tile, (label_w + j * w * scale, i * h * scale))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    canvas.save(tmp)
    os.replace(tmp, path)
    return path


def palette_colour(image: np.ndarray, colours: dict[str, tuple[float, float, float]]) -> str:
    """Crude main-object colour of one (H, W, 3) uint8 image.

    Each pixel gets its nearest palette colour after dividing out brightness (chromaticity + a
    lightness term, so shading matters less); colours frequent on the 4-pixel border (floor,
    background) are excluded; the most frequent remaining colour in the central 60% wins.
    """
    names = list(colours)
    pal = np.array([colours[n] for n in names], np.float32)  # (C, 3)
    x = image.astype(np.float32) / 255.0

    def feats(c):  # chromaticity (r, g, b) / (r + g + b) and a value term
        s = c.sum(-1, keepdims=True) + 1e-3
        return np.concatenate([c / s, 0.35 * c.max(-1, keepdims=True)], -1)

    d = ((feats(x)[..., None, :] - feats(pal)[None, None]) ** 2).sum(-1)  # (H, W, C)
    lab = d.argmin(-1)
    h, w = lab.shape
    border = np.concatenate([lab[:4].ravel(), lab[-4:].ravel(), lab[:, :4].ravel(), lab[:, -4:].ravel()])
    counts_b = np.bincount(border, minlength=len(names)) / border.size
    centre = lab[int(0.2 * h):int(0.8 * h) + 1, int(0.2 * w):int(0.8 * w) + 1].ravel()
    counts = np.bincount(centre, minlength=len(names)).astype(np.float64)
    counts[counts_b > 0.15] = 0.0
    return names[int(counts.argmax())]


def accuracy(images: np.ndarray, prompts: list[str]) -> dict:
    """Colour/shape accuracy of (P, S, H, W, 3) samples against their prompts ('a <colour> <shape>')."""
    from idsedit.shapes import COLORS, parse_caption

    flat = images.reshape(-1, *images.shape[2:])
    S = images.shape[1]
    want = [parse_caption(p) for p in prompts for _ in range(images.shape[1])]
    from ..errors import ModelLoadError

    try:
        from .evaluator import load_evaluator

        ev = load_evaluator()
    except (ImportError, ModelLoadError):
        ev = None
    if ev is not None:
        pred = ev.predict(flat.astype(np.float32) / 255.0)
        got_c, got_s = ev.names(pred, "color"), ev.names(pred, "shape")
        return {"judge": "idsedit.mini.evaluator", "n": len(flat),
                "colour_acc": float(np.mean([g == w["color"] for g, w in zip(got_c, want)])),
                "shape_acc": float(np.mean([g == w["shape"] for g, w in zip(got_s, want)])),
                "predicted": {p: [f"{c} {sh}" for c, sh in zip(got_c[i * S:(i + 1) * S], got_s[i * S:(i + 1) * S])]
                              for i, p in enumerate(prompts)}}
    got = [palette_colour(im, COLORS) for im in flat]
    return {"judge": "palette_colour (crude fallback, no evaluator)", "n": len(flat),
            "colour_acc": float(np.mean([g == w["color"] for g, w in zip(got, want)])), "shape_acc": None}


ATTRIBUTE_TEMPLATES = (
    "{color} {shape}",
    "{color} {shape} on a {floor} floor",
    "{color} {shape} in front of a {background} background",
    "{color} {shape} on a {floor} floor in front of a {background} background",
)
"""Prompt forms of the per-attribute check: colour and shape always named, floor and/or background sometimes."""


def attribute_prompts(n: int, seed: int = 31337) -> list[tuple[str, dict]]:
    """``n`` prompts with the attributes they name, cycling through ATTRIBUTE_TEMPLATES with random colours and
    shapes under the world's constraints (floor colour != object colour, background != floor)."""
    from idsedit.shapes import COLORS, SHAPES
    from idsedit.shapes.captions import parse_caption

    rng = np.random.default_rng(seed)
    colors = list(COLORS)
    out = []
    for i in range(n):
        c = colors[rng.integers(len(colors))]
        sh = SHAPES[rng.integers(len(SHAPES))]
        fl = [x for x in colors if x != c][rng.integers(len(colors) - 1)]
        bg = [x for x in colors if x != fl][rng.integers(len(colors) - 1)]
        body = ATTRIBUTE_TEMPLATES[i % len(ATTRIBUTE_TEMPLATES)].format(color=c, shape=sh, floor=fl, background=bg)
        text = ("an " if body[0] in "aeiou" else "a ") + body
        out.append((text, parse_caption(text)))
    return out


def attribute_accuracy(ev, images: np.ndarray, named: list[dict]) -> dict:
    """Per-attribute accuracy of uint8 images (N, H, W, 3) judged by evaluator ``ev``: for each of colour, shape,
    floor, background, the fraction of the images whose prompt names it that show it; plus the fraction with
    every named attribute right."""
    pred = ev.predict(images.astype(np.float32) / 255.0)
    got = {k: ev.names(pred, "color" if k == "color" else k) for k in ("color", "shape", "floor", "background")}
    res, all_ok = {}, np.ones(len(images), dtype=bool)
    for k in ("color", "shape", "floor", "background"):
        sel = [i for i, d in enumerate(named) if k in d]
        ok = np.array([got[k][i] == named[i][k] for i in sel], dtype=bool)
        res[f"{k}_acc"] = float(ok.mean()) if sel else None
        res[f"{k}_n"] = len(sel)
        all_ok[sel] &= ok
    res["all_named_acc"] = float(all_ok.mean())
    res["n"] = len(images)
    return res


def heldout_psnr(vae, n: int, seed: int = 12345, views: str = "default") -> float:
    """Mean VAE reconstruction PSNR (dB, posterior mean) on ``n`` fresh renders never seen in training: the default
    camera (``views="default"``, v1's set) or the mini prior v2's cameras (``"multiview"``: 25% default camera)."""
    from idsedit.shapes import render_batch
    from idsedit.shapes.views import sample_scenes

    from .train import vae_psnr

    scenes = sample_scenes(np.random.default_rng(seed), n, views)
    images = np.clip(np.round(render_batch(scenes, size=64) * 255), 0, 255)
    return vae_psnr(vae, images.astype(np.uint8))


def attribute_samples(pipe_fn, prompts: list[str], seeds: int, steps: int, guidance: float,
                      path: Path | None) -> np.ndarray:
    """The attribute-check samples (P, S, H, W, 3) uint8: read from ``path`` (.npz) when it holds the same prompts,
    seeds, steps and guidance, else sampled with ``pipe_fn()`` and (with a path) saved there, so that a sample set
    can be judged again by another evaluator without re-sampling."""
    import os

    from ..errors import IdseditError

    key = {"prompts": np.array(prompts), "seeds": np.array(seeds), "steps": np.array(steps),
           "guidance": np.array(guidance)}
    if path is not None and path.exists():
        with np.load(path, allow_pickle=False) as f:
            same = all(k in f and f[k].shape == v.shape and (f[k] == v).all() for k, v in key.items())
            if not same:
                raise IdseditError(f"{path} holds samples of other prompts/seeds/steps/guidance: use another "
                                   f"--samples path or delete it")
            return f["images"]
    ims = sample(pipe_fn(), prompts, list(range(seeds)), steps, guidance)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, images=ims, **key)
        os.replace(tmp, path)
    return ims


def main(argv: list[str] | None = None) -> int:
    """Sample the grid + an accuracy set, print JSON."""
    p = argparse.ArgumentParser(prog="python -m idsedit.mini.quality")
    p.add_argument("--model", type=Path, required=True, help="diffusers folder (e.g. src/idsedit/assets/mini-sd)")
    p.add_argument("--grid", type=Path, default=None, help="PNG of the sample grid (prompts x seeds)")
    p.add_argument("--seeds", type=int, default=8, help="seeds per prompt")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--guidance", type=float, default=7.5, help="CFG scale")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    p.add_argument("--psnr-scenes", type=int, default=256, help="held-out renders for the VAE PSNR (seed 12345)")
    p.add_argument("--attributes", type=int, default=0,
                   help="also: this many prompts naming colour/shape/floor/background (x --seeds samples), judged "
                        "per attribute (0 = skip)")
    p.add_argument("--attributes-only", action="store_true",
                   help="only the --attributes check (no 50-prompt colour/shape set, no VAE PSNR); --grid then "
                        "samples the grid prompts alone")
    p.add_argument("--samples", type=Path, default=None,
                   help="npz of the --attributes samples: read when it exists (same prompts/seeds/steps/guidance), "
                        "else written, so another --evaluator can judge the same samples without re-sampling")
    p.add_argument("--attributes-grid", type=Path, default=None,
                   help="PNG of the first 12 --attributes prompts x their seeds")
    p.add_argument("--evaluator", type=Path, default=None, help="evaluator weights (default: the shipped one)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    pipes = []

    def pipe_fn():
        if not pipes:
            pipes.append(load_pipeline(a.model))
        return pipes[0]

    from idsedit.shapes import COLORS, SHAPES

    res = {"model": str(a.model), "seeds": a.seeds, "steps": a.steps, "guidance": a.guidance}
    prompts = [f"{'an' if c[0] in 'aeiou' else 'a'} {c} {s}" for c in COLORS for s in SHAPES]
    ims = None
    if not a.attributes_only:
        ims = sample(pipe_fn(), prompts, list(range(a.seeds)), a.steps, a.guidance)
        res.update(accuracy(ims, prompts))
        res.update(prompts=len(prompts))
        res["vae_psnr_db"] = heldout_psnr(pipe_fn().vae, a.psnr_scenes)
    if a.attributes > 0:
        from .evaluator import load_evaluator

        ev = load_evaluator(a.evaluator) if a.evaluator else load_evaluator()
        pairs = attribute_prompts(a.attributes)
        ims_a = attribute_samples(pipe_fn, [t for t, _ in pairs], a.seeds, a.steps, a.guidance, a.samples)
        named = [d for _, d in pairs for _ in range(a.seeds)]
        res["attributes"] = attribute_accuracy(ev, ims_a.reshape(-1, *ims_a.shape[2:]), named)
        res["attributes"]["evaluator"] = str(a.evaluator or "shipped")
        if a.attributes_grid is not None:
            k = min(12, len(pairs))
            save_grid(ims_a[:k], [t for t, _ in pairs[:k]], a.attributes_grid, label_w=360)
    if a.grid is not None:
        if ims is None:
            grid = sample(pipe_fn(), GRID_PROMPTS, list(range(a.seeds)), a.steps, a.guidance)
            labels = GRID_PROMPTS
        else:
            rows = [prompts.index(g) if g in prompts else None for g in GRID_PROMPTS]
            grid = np.stack([ims[r] for r in rows if r is not None])
            labels = [g for g, r in zip(GRID_PROMPTS, rows) if r is not None]
        save_grid(grid, labels, a.grid)
    print(json.dumps(res, indent=2))
    if a.json is not None:
        a.json.write_text(json.dumps(res, indent=2))
    return 0


def cli(argv: list[str] | None = None) -> int:
    """:func:`main` with user errors (bad sample file, missing evaluator) as one ``error:`` line, exit 2."""
    from ..errors import IdseditError

    try:
        return main(argv)
    except IdseditError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
