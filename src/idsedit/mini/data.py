"""Shapes-world data for the mini prior: a rendered cache, caption variants, token ids and a latent cache.

Everything is deterministic in ``seed``, so a lost cache is re-rendered identically on resume.
Arrays: images (N, 64, 64, 3) uint8; captions (N, 1 + K) str (column 0 is the canonical
"a <color> <shape>", columns 1..K random caption templates); latents mean/std (N, 4, 16, 16) float16.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import IdseditError


WORLDS = ("shapes", "multiview")
"""Training worlds: "shapes" (v1: the default 2D camera only), "multiview" (v2: cameras all around the scene,
see :mod:`idsedit.shapes.views`)."""


def load_world(name: str = "shapes", default_share: float | None = None):
    """A world object with sample_scene(rng), render_batch(params, size), caption(params, rng), VOCABULARY:
    the ``idsedit.shapes`` module itself for "shapes", a :class:`idsedit.shapes.views.MultiViewWorld` (with
    ``default_share`` of default-camera scenes) for "multiview"."""
    if name == "shapes":
        return importlib.import_module("idsedit.shapes")
    if name == "multiview":
        from ..shapes.views import DEFAULT_SHARE, MultiViewWorld

        return MultiViewWorld(DEFAULT_SHARE if default_share is None else default_share)
    raise IdseditError(f"unknown training world {name!r}; use one of {', '.join(WORLDS)}")


@dataclass
class SceneCache:
    """Rendered scenes with their captions."""

    images: np.ndarray  # (N, H, W, 3) uint8 renders
    captions: np.ndarray  # (N, 1 + K) str; [:, 0] canonical caption, [:, 1:] random templates
    caption_version: int = 1  # the world's CAPTION_VERSION the captions were made with

    def __len__(self) -> int:
        return len(self.images)


def caption_version(world) -> int:
    """The world's caption version (1 when it declares none, e.g. the v1 shapes world)."""
    return int(getattr(world, "CAPTION_VERSION", 1))


def _scene_stream(world, n: int, seed: int, n_captions: int, chunk: int):
    """Yield (params chunk, captions chunk) exactly as :func:`render_scenes` draws them from default_rng(seed)."""
    rng = np.random.default_rng(seed)
    for start in range(0, n, chunk):
        params = [world.sample_scene(rng) for _ in range(min(chunk, n - start))]
        caps = [[world.caption(p)] + [world.caption(p, rng) for _ in range(n_captions)] for p in params]
        yield params, caps


def render_scenes(world, n: int, seed: int, size: int = 64, n_captions: int = 8, chunk: int = 128,
                  progress: Callable[[int], None] | None = None) -> SceneCache:
    """Sample ``n`` scenes from ``default_rng(seed)`` and render them in chunks."""
    if n <= 0:
        raise IdseditError(f"number of scenes must be positive, got {n}; pass e.g. --scenes 20000")
    images = np.empty((n, size, size, 3), np.uint8)
    captions = []
    start = 0
    for params, caps in _scene_stream(world, n, seed, n_captions, chunk):
        rgb = world.render_batch(params, size=size)  # (B, H, W, 3) float in [0, 1]
        images[start:start + len(params)] = np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
        captions.extend(caps)
        start += len(params)
        if progress is not None:
            progress(len(params))
    return SceneCache(images, np.array(captions, dtype=str), caption_version(world))


def recaption(cache: SceneCache, world, seed: int, n_captions: int, chunk: int = 128, check: int = 4) -> SceneCache:
    """The same images with captions made by ``world``'s current caption function (the scene draws are replayed
    without rendering; the first ``check`` scenes are rendered again and must equal the cached images exactly,
    else IdseditError: the cache was made by another sampler and must be deleted)."""
    n, size = len(cache), cache.images.shape[1]
    captions, first = [], None
    for params, caps in _scene_stream(world, n, seed, n_captions, chunk):
        first = first if first is not None else params[:check]
        captions.extend(caps)
    rgb = world.render_batch(first, size=size)
    if not np.array_equal(np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8), cache.images[:len(first)]):
        raise IdseditError("the scene cache does not match the scene sampler (its images differ from a re-render): "
                           "delete the state's cache/ folder so that the scenes are rendered again")
    return SceneCache(cache.images, np.array(captions, dtype=str), caption_version(world))


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """Write arrays to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_scene_cache(path: str | Path) -> SceneCache:
    """Read a cache written by :func:`save_scene_cache` (no pickle)."""
    with np.load(path, allow_pickle=False) as f:
        version = int(f["caption_version"]) if "caption_version" in f.files else 1
        return SceneCache(f["images"], f["captions"], version)


def save_scene_cache(path: str | Path, cache: SceneCache) -> None:
    """Write a scene cache as .npz."""
    save_npz(path, images=cache.images, captions=cache.captions, caption_version=np.array(cache.caption_version))


def images_to_tensor(images: np.ndarray):
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [-1, 1]."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def tensor_to_images(x) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    x = ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round()
    return x.permute(0, 2, 3, 1).to(dtype=__import__("torch").uint8).cpu().numpy()


def tokenize(tokenizer, captions: list[str]) -> np.ndarray:
    """Captions -> (B, max_length) int32 ids, padded/truncated exactly as StableDiffusionPipeline does."""
    ids = tokenizer(list(captions), padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="np").input_ids
    return ids.astype(np.int32)


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB of uint8 images (B, H, W, 3): 10 log10(255^2 / MSE)."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(axis=1)
    return 10.0 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))
