"""Image I/O: read any picture a user may hand us, size it for a model, write outputs atomically.

Everything here is a small pure function of PIL images and paths. Reading is strict: a file that is missing,
empty, truncated, not an image, too small or too large raises :class:`InputImageError` with one line that names
the file, what is wrong and what to do. Conversions that change what the user sees (transparency flattened on
white, an animation reduced to its first frame) are announced with ``warnings.warn``; the library never prints.

Writing is atomic: a temporary file in the destination folder, then ``os.replace``, so an interrupted or failed
write never leaves a half-written output and never clobbers the previous file with garbage.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from .errors import IdseditError, InputImageError

MIN_SIDE = 16
"""Smallest accepted width or height in pixels (below this no model sees anything useful)."""

MAX_PIXELS = 40_000_000
"""Largest accepted image area (40 MP); larger files are refused before decoding to protect memory."""

ALPHA_MODES = ("LA", "La", "PA", "RGBa", "RGBA")
"""Pillow modes with an alpha channel (premultiplied or not)."""

READ_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "BMP", "DIB", "GIF", "TIFF", "PPM", "TGA", "AVIF", "HEIF")
"""Formats ``load_image`` decodes (those Pillow has plugins for). Others, e.g. EPS/PDF, which Pillow renders with
external programs such as Ghostscript, are refused: inputs may come from anywhere."""

WHITE = (255, 255, 255)


def _image_suffixes() -> tuple[str, ...]:
    """Every file suffix Pillow registers for a format in READ_FORMATS that this installation opens."""
    readable = set(_read_formats())
    return tuple(sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in readable))


def _read_formats() -> list[str]:
    """The READ_FORMATS that this Pillow installation can open."""
    Image.init()
    return [f for f in READ_FORMATS if f in Image.OPEN]


IMAGE_SUFFIXES = _image_suffixes()
"""File suffixes that count as images when a folder is given (case-insensitive): exactly those of the formats
:func:`load_image` reads (.png, .jpg/.jpeg, .webp, .bmp, .gif, .tif/.tiff, .ppm, .tga, ...), one shared list."""


# --------------------------------------------------------------------------------------------------- reading
def load_image(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS, min_side: int = MIN_SIDE) -> Image.Image:
    """Read an image file as 8-bit RGB, upright (EXIF orientation applied), transparency flattened on white.

    Handles every Pillow mode a user is likely to produce: 1, L, LA, P (with or without transparency), RGB, RGBA,
    CMYK, YCbCr, 16-bit (I;16*) and 32-bit (I, F) greyscale. Raises InputImageError for anything unusable.
    """
    path = Path(path)
    _check_is_readable_file(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path, formats=_read_formats()) as im:
                _check_size(path, im.size, max_pixels, min_side)
                if getattr(im, "n_frames", 1) > 1:
                    warnings.warn(f"{path} has {im.n_frames} frames (an animation or several pages); using the "
                                  "first frame only")
                    im.seek(0)
                im.load()
                upright = ImageOps.exif_transpose(im)
                return to_rgb(upright, name=str(path))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InputImageError(f"{path} is too large to decode safely; downscale it to at most "
                                  f"{max_pixels / 1e6:.0f} megapixels first") from None
        except UnidentifiedImageError:
            raise InputImageError(f"{path} is not an image in a supported format ({', '.join(_read_formats())}); "
                                  "convert it to PNG or JPEG") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise InputImageError(f"{path} could not be decoded ({_one_line(e)}); the file may be truncated or "
                                  "corrupt: re-export it as PNG or JPEG") from None


def _check_is_readable_file(path: Path) -> None:
    """Raise InputImageError if ``path`` is not an existing, non-empty, readable regular file."""
    if not path.exists():
        raise InputImageError(f"{path} does not exist: check the path (relative paths start from "
                              f"{Path.cwd()})")
    if path.is_dir():
        raise InputImageError(f"{path} is a folder, not an image file")
    if not path.is_file():
        raise InputImageError(f"{path} is not a regular file")
    if not os.access(path, os.R_OK):
        raise InputImageError(f"{path} is not readable: check its permissions")
    if path.stat().st_size == 0:
        raise InputImageError(f"{path} is empty (0 bytes)")


def _check_size(path: Path, size: tuple[int, int], max_pixels: int, min_side: int) -> None:
    """Raise InputImageError for images too small to edit or too large to hold in memory."""
    w, h = size
    if min(w, h) < min_side:
        raise InputImageError(f"{path} is {w}x{h} pixels; images must be at least {min_side} px on each side: "
                              "use a larger image")
    if w * h > max_pixels:
        raise InputImageError(f"{path} is {w}x{h} pixels ({w * h / 1e6:.0f} MP), more than the "
                              f"{max_pixels / 1e6:.0f} MP limit: downscale it first (the model works at a few "
                              "hundred pixels anyway)")


def to_rgb(im: Image.Image, *, name: str = "image", background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; transparency is composited on ``background`` with a warning."""
    mode = im.mode
    if mode == "RGB":
        return im.copy()
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_high_depth_to_uint8(np.asarray(im), name)).convert("RGB")
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        return to_rgb(im, name=name, background=background)
    if mode in ALPHA_MODES:
        rgba = (im.convert("LA") if mode == "La" else im).convert("RGBA")
        alpha = rgba.getchannel("A")
        if alpha.getextrema()[0] < 255:
            warnings.warn(f"{name} has transparent pixels; they are composited on a white background")
        flat = Image.new("RGB", rgba.size, background)
        flat.paste(rgba.convert("RGB"), mask=alpha)
        return flat
    try:
        return im.convert("RGB")
    except ValueError:
        raise InputImageError(f"{name} has colour mode {mode!r}, which cannot be converted to RGB: "
                              "re-export it as an RGB PNG or JPEG") from None


def _high_depth_to_uint8(a: np.ndarray, name: str) -> np.ndarray:
    """16/32-bit integer or float greyscale -> uint8, scaling the full range (not clipping).

    Integer data (I;16*, and I-mode images whose values fit 0..65535) is read as 16-bit: 0..65535 -> 0..255. Float
    (F) data in [0, 1] or [0, 255] is scaled to 0..255. Anything else is stretched from min..max with a warning.
    """
    kind = a.dtype.kind
    if kind == "f" and not np.isfinite(a).all():
        raise InputImageError(f"{name} contains NaN or infinite pixel values: re-export it as an 8-bit PNG")
    a = a.astype(np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if kind == "f" and lo >= 0 and hi <= 1.0:
        scaled = a * 255.0                                     # float image in [0, 1]
    elif kind == "f" and lo >= 0 and hi <= 255.0:
        scaled = a                                             # float image already in 0..255
    elif lo >= 0 and hi <= 65535:
        scaled = a / 257.0                                     # 16-bit: 65535 / 257 == 255 exactly
    else:
        warnings.warn(f"{name} has pixel values from {lo:g} to {hi:g}; stretched to 0..255")
        scaled = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def load_mask(path: str | os.PathLike, size: tuple[int, int], *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Read an edit mask as mode "L" at ``size`` (W, H): white (255) = editable, black (0) = keep.

    Colour masks are reduced to luminance; transparent pixels count as black (keep). A mask whose aspect ratio
    differs from the image's, or that is entirely black, is refused.
    """
    path = Path(path)
    _check_is_readable_file(path)
    try:
        with Image.open(path, formats=_read_formats()) as im:
            _check_size(path, im.size, max_pixels, 1)
            im.seek(0)
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ALPHA_MODES or (im.mode == "P" and "transparency" in im.info):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    mask = to_rgb(im, name=str(path), background=(0, 0, 0)).convert("L")
            elif im.mode.startswith("I;16") or im.mode in ("I", "F"):
                mask = Image.fromarray(_high_depth_to_uint8(np.asarray(im), str(path)))
            else:
                mask = im.convert("L")
    except UnidentifiedImageError:
        raise InputImageError(f"mask {path} is not an image Pillow can read; save it as a PNG") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise InputImageError(f"mask {path} could not be decoded ({_one_line(e)}); re-export it as PNG") from None
    w, h = size
    mw, mh = mask.size
    if abs(mw / mh - w / h) > 0.01 * (w / h):
        raise InputImageError(f"mask {path} is {mw}x{mh} but the image is {w}x{h}: the mask must have the "
                              "image's aspect ratio (ideally its exact size)")
    if mask.size != (w, h):
        mask = mask.resize((w, h), Image.Resampling.BILINEAR)
    if mask.getextrema()[1] == 0:
        raise InputImageError(f"mask {path} is entirely black, so nothing may change: paint the region to edit "
                              "white")
    return mask


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder`` (any suffix of IMAGE_SUFFIXES, any case), sorted by name, no hidden
    files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputImageError(f"{folder} is not a folder")
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


# --------------------------------------------------------------------------------------------------- resizing
def fit_size(size: tuple[int, int], resolution: int, multiple: int) -> tuple[int, int]:
    """(W, H) scaled so the longer side is ``resolution``, each side rounded to a multiple of ``multiple`` (>= 1x)."""
    if resolution < 1 or multiple < 1:
        raise ValueError(f"resolution and multiple must be positive, got resolution={resolution}, "
                         f"multiple={multiple}")
    w, h = size
    scale = resolution / max(w, h)

    def side(x: int) -> int:
        return max(multiple, int(math.floor(x * scale / multiple + 0.5)) * multiple)

    return side(w), side(h)


def _resample(src: tuple[int, int], dst: tuple[int, int]) -> Image.Resampling:
    """LANCZOS when shrinking (anti-aliased), BICUBIC when enlarging."""
    return Image.Resampling.LANCZOS if dst[0] * dst[1] < src[0] * src[1] else Image.Resampling.BICUBIC


def fit_to_model(img: Image.Image, resolution: int, multiple: int) -> Image.Image:
    """Resize for a model: keep the aspect ratio, longer side -> ``resolution``, sides -> multiples of ``multiple``.

    Example: a 1000x750 photo for SD 1.5 (512, 64) becomes 512x384; for the mini prior (64, 8) it becomes 64x48.
    """
    size = fit_size(img.size, resolution, multiple)
    if size == img.size:
        return img.copy()
    return img.resize(size, _resample(img.size, size))


def restore_size(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize back to the input's (W, H) (inverse of :func:`fit_to_model`, up to resampling)."""
    size = (int(size[0]), int(size[1]))
    if img.size == size:
        return img.copy()
    return img.resize(size, _resample(img.size, size))


# --------------------------------------------------------------------------------------------------- writing
@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on any failure it is removed.

    The parent folder is created if needed. Interrupts (KeyboardInterrupt) also remove the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())              # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; on success it replaces ``path`` (an existing folder there is
    removed after the swap), on any failure it is removed. Callers check that an existing ``path`` may go.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    """The process umask (read without changing it for longer than an instant)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _format_for(path: Path) -> str:
    """Pillow format name for a file suffix (".png" -> "PNG"); IdseditError for unknown suffixes."""
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise IdseditError(f"cannot tell the image format of {path}: use a .png, .jpg or .webp name")
    return fmt


def write_image(img: Image.Image, path: str | os.PathLike, fmt: str | None = None) -> Path:
    """Write ``img`` to ``path`` (not atomically: for temporaries), format from ``fmt`` or the suffix; fsync'd."""
    path = Path(path)
    fmt = fmt or _format_for(path)
    if fmt == "JPEG" and img.mode not in ("RGB", "L", "CMYK"):
        img = img.convert("RGB")
    with open(path, "wb") as f:
        img.save(f, format=fmt)
        f.flush()
        os.fsync(f.fileno())
    return path


def save_image_atomic(img: Image.Image, path: str | os.PathLike) -> Path:
    """Write ``img`` to ``path`` (format from the suffix) via a temporary file and ``os.replace``."""
    path = Path(path)
    fmt = _format_for(path)
    with atomic_path(path) as tmp:
        write_image(img, tmp, fmt)
    return path


def to_jsonable(obj):
    """Recursively turn configs and results into JSON values: dataclasses, paths, tuples, numpy/torch scalars.

    Non-finite floats (e.g. an infinite PSNR for identical images) become ``None`` so the file is strict JSON.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        return to_jsonable(obj.item())                         # numpy / torch scalars
    if hasattr(obj, "tolist"):
        return to_jsonable(obj.tolist())
    return str(obj)


def json_text(obj) -> str:
    """``obj`` (made JSON-able by :func:`to_jsonable`) as indented strict JSON text with a final newline."""
    return json.dumps(to_jsonable(obj), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_text(text: str, path: str | os.PathLike) -> Path:
    """Write UTF-8 ``text`` to ``path`` (not atomically: for temporaries); fsync'd."""
    path = Path(path)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return path


def save_json_atomic(obj, path: str | os.PathLike) -> Path:
    """Write ``obj`` (made JSON-able by :func:`to_jsonable`) as indented UTF-8 JSON, atomically."""
    path = Path(path)
    text = json_text(obj)
    with atomic_path(path) as tmp:
        write_text(text, tmp)
    return path


def temp_near(path: str | os.PathLike, *, folder: bool = False) -> Path:
    """A new hidden temporary file (or folder) next to ``path``, made with the usual permissions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        os.chmod(tmp, 0o777 & ~_umask())
        return tmp
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(name, 0o666 & ~_umask())
    return Path(name)


def _remove(path: Path) -> None:
    """Delete a file, link or folder tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def replace_together(moves: Sequence[tuple[Path, Path]], remove: Sequence[Path] = ()) -> None:
    """Move every temporary ``tmp`` onto its ``dest`` and delete ``remove``, all or nothing.

    Existing destinations (and the paths in ``remove``) are first renamed to hidden backups; then the temporaries
    are renamed into place in order (put the file whose presence marks a complete set, e.g. the JSON record, last).
    If any rename fails (or is interrupted), the ones already done are undone and the backups renamed back, so the
    previous set is intact; the temporaries are deleted and the error re-raised. On success the backups go.
    Files and folders alike; every rename stays within its folder (same file system, atomic on POSIX).
    """
    moves = [(Path(t), Path(d)) for t, d in moves]
    backups: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    try:
        for dest in [d for _, d in moves] + [Path(r) for r in remove]:
            if dest.exists() or dest.is_symlink():
                bak = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".bak"))
                backups.append((dest, bak))
                os.replace(dest, bak / dest.name)
        for tmp, dest in moves:
            os.replace(tmp, dest)
            placed.append(dest)
    except BaseException:
        for dest in reversed(placed):
            _remove(dest)
        for dest, bak in reversed(backups):
            if (bak / dest.name).exists() or (bak / dest.name).is_symlink():
                os.replace(bak / dest.name, dest)
            shutil.rmtree(bak, ignore_errors=True)
        for tmp, _ in moves:
            _remove(tmp)
        raise
    for _, bak in backups:
        shutil.rmtree(bak, ignore_errors=True)


# --------------------------------------------------------------------------------------------------- figures
def comparison_image(source: Image.Image, edited: Image.Image, labels: Sequence[str] = ("source", "edited"),
                     *more: Image.Image, min_height: int = 256) -> Image.Image:
    """Panels side by side, each under a small text label (Pillow's default font).

    ``more`` appends further panels (e.g. the inverse edit); ``labels`` has one entry per panel. Panels are scaled
    to a common height, at least ``min_height`` pixels (small images are enlarged with NEAREST so pixels stay
    visible); long labels are cut with an ellipsis to fit their panel.
    """
    panels = [source, edited, *more]
    if len(labels) != len(panels):
        raise ValueError(f"comparison_image got {len(panels)} images but {len(labels)} labels")
    height = max(min_height, max(p.height for p in panels))
    scaled = [_to_height(to_rgb(p) if p.mode != "RGB" else p, height) for p in panels]
    band = max(16, height // 16)
    font = _font(int(band * 0.7))
    gap = 4
    width = sum(p.width for p in scaled) + gap * (len(scaled) - 1)
    canvas = Image.new("RGB", (width, height + band), WHITE)
    draw = ImageDraw.Draw(canvas)
    x = 0
    for panel, label in zip(scaled, labels):
        canvas.paste(panel, (x, band))
        text = _fit_text(draw, str(label), font, panel.width - 6)
        draw.text((x + 3, band // 2), text, fill=(0, 0, 0), font=font, anchor="lm")
        x += panel.width + gap
    return canvas


def _to_height(img: Image.Image, height: int) -> Image.Image:
    """Scale to ``height`` keeping the aspect ratio; whole-number enlargements use NEAREST (crisp pixels)."""
    if img.height == height:
        return img
    width = max(1, round(img.width * height / img.height))
    exact = height % img.height == 0 and height > img.height
    method = Image.Resampling.NEAREST if exact else _resample(img.size, (width, height))
    return img.resize((width, height), method)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled default font at ``size`` pixels (bitmap fallback without FreeType)."""
    try:
        return ImageFont.load_default(size=max(8, size))
    except (TypeError, OSError, ImportError):                 # Pillow without FreeType support
        return ImageFont.load_default()


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text`` cut with an ellipsis so it renders within ``width`` pixels."""
    text = " ".join(text.split())
    if not isinstance(font, ImageFont.FreeTypeFont):          # the bitmap fallback font only knows Latin-1
        text = text.encode("latin-1", "replace").decode("latin-1")
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..." if text else ""


def _one_line(e: BaseException) -> str:
    """An exception as one short line of text."""
    msg = " ".join(str(e).split()) or type(e).__name__
    return msg[:200]
