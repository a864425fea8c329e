"""Render-speed benchmark of the shapes world: ``python -m idsedit.shapes.bench [--n 1000] [--size 64]``.

Prints one table row per chunk size: milliseconds per image, which is also seconds per 1000 images
(single process, numpy on one core). Timings live here, never in tests.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from .render import render_batch
from .scene import sample_scene


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="scenes to render")
    ap.add_argument("--size", type=int, default=64, help="image size")
    ap.add_argument("--chunks", default="1,32", help="comma-separated chunk sizes to time")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng) for _ in range(args.n)]
    render_batch(scenes[:8], args.size)  # warm the ray cache
    print(f"{'chunk':>6} {'ms/img (= s per 1000 images)':>30}")
    for chunk in (int(c) for c in args.chunks.split(",")):
        t = time.perf_counter()
        render_batch(scenes, args.size, chunk=chunk)
        dt = time.perf_counter() - t
        print(f"{chunk:>6} {1000 * dt / args.n:>30.2f}")


if __name__ == "__main__":
    main()
