"""A fitted or edited scene on disk: ``SCENE/scene.json`` + ``SCENE/field.safetensors``.

scene.json holds everything needed to rebuild the field (``field``: :class:`FieldConfig`), to render it
(``render``: sample step, near bound), and where it came from (``data``: the dataset, split rule and image size;
``history``: the fits and edits that produced it). Writes are atomic (temporary file, then rename).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import IdseditError
from .field import FieldConfig, TensoRF

FORMAT = "idsedit-scene"
VERSION = 1
SCENE_JSON = "scene.json"
FIELD_FILE = "field.safetensors"


@dataclass
class Scene:
    """A radiance field with its render settings and provenance."""

    field: TensoRF
    step: float                       # sample spacing along rays (world units)
    data: dict = field(default_factory=dict)      # {"path", "holdout_every", "size": [H, W], "background"}
    history: list = field(default_factory=list)   # [{"kind": "fit" | "edit", ...}]
    near: float = 0.0
    path: Path | None = None

    def meta(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "field": self.field.config.to_dict(),
                "render": {"step": self.step, "near": self.near}, "data": self.data, "history": self.history}


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)          # mkstemp makes 0600 files; give them the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj) -> None:
    def w(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, allow_nan=True)
            f.write("\n")

    atomic_write_bytes(path, w)


def save_scene(scene: Scene, out_dir) -> Path:
    """Write ``out_dir/field.safetensors`` then ``out_dir/scene.json`` (the JSON last: a folder with a valid
    scene.json always has its field)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise IdseditError(f"--out {out} is a file: give a folder for the scene")
    state = {k: v.detach().contiguous().clone() for k, v in scene.field.state_dict().items()}
    state["occupancy"] = state["occupancy"].to(torch.uint8)
    atomic_write_bytes(out / FIELD_FILE, lambda tmp: save_file(state, tmp))
    atomic_write_json(out / SCENE_JSON, scene.meta())
    scene.path = out
    return out


def is_scene(path) -> bool:
    p = Path(path)
    return (p / SCENE_JSON).is_file() and (p / FIELD_FILE).is_file()


def load_scene(path) -> Scene:
    """Read a scene folder; IdseditError (one line) if it is not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.exists():
        raise IdseditError(f"{p} does not exist: give a scene folder made by `idsedit scene fit`")
    if not p.is_dir():
        raise IdseditError(f"{p} is a file, not a scene folder: give the folder made by `idsedit scene fit`")
    meta_path = p / SCENE_JSON
    if not meta_path.is_file():
        hint = " (it holds a fit checkpoint: rerun `idsedit scene fit` to finish it)" if (p / "checkpoint.pt").is_file() \
            else ""
        raise IdseditError(f"{p} is not a scene: it has no {SCENE_JSON}{hint}")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IdseditError(f"{meta_path}: not valid JSON ({e}): the scene is damaged; fit it again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise IdseditError(f"{meta_path} is not an idsedit scene file (no \"format\": \"{FORMAT}\")")
    if meta.get("version") != VERSION:
        raise IdseditError(f"{meta_path}: scene format version {meta.get('version')!r} is not supported "
                           f"(this idsedit reads version {VERSION})")
    try:
        cfg_d = dict(meta["field"])
        cfg_d["env_size"] = tuple(cfg_d.get("env_size", (16, 32)))
        cfg = FieldConfig(**cfg_d)
        step = float(meta["render"]["step"])
        near = float(meta["render"].get("near", 0.0))
    except (KeyError, TypeError, ValueError) as e:
        raise IdseditError(f"{meta_path}: missing or bad field/render settings ({e!r}): the scene is damaged") from None
    weights = p / FIELD_FILE
    if not weights.is_file():
        raise IdseditError(f"{p} is not a complete scene: {FIELD_FILE} is missing")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise IdseditError(f"{weights}: cannot read the field weights ({' '.join(str(e).split())})") from None
    state["occupancy"] = state["occupancy"].bool()
    f = TensoRF(cfg)
    try:
        f.load_state_dict(state)
    except RuntimeError as e:
        raise IdseditError(f"{weights} does not match {meta_path} ({str(e).splitlines()[0]}): the scene is damaged") \
            from None
    f.requires_grad_(False)
    return Scene(f, step, meta.get("data", {}), meta.get("history", []), near, p)
