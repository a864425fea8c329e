"""Render-speed benchmark of the shapes world: ``python -m idsedit.shapes.bench [--n 1000] [--size 64]``.

Prints one table row per chunk size: wall-clock and CPU milliseconds per image (= seconds per 1000 images;
single process, numpy on one core; on a shared machine the CPU column is the meaningful one). Timings live here, never in tests.
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
    print(f"{'chunk':>6} {'wall ms/img':>12} {'cpu ms/img':>11}   (ms per image = s per 1000 images)")
    for chunk in (int(c) for c in args.chunks.split(",")):
        t, c = time.perf_counter(), time.process_time()
        render_batch(scenes, args.size, chunk=chunk)
        dt, dc = time.perf_counter() - t, time.process_time() - c
        print(f"{chunk:>6} {1000 * dt / args.n:>12.2f} {1000 * dc / args.n:>11.2f}")


if __name__ == "__main__":
    main()
