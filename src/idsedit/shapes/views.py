"""Multi-view training data of the shapes world (mini prior v2): scenes seen from cameras all around.

A v2 training scene is a :func:`~idsedit.shapes.sample_scene` scene whose ``camera`` is either the default 2D
camera (probability ``default_share``) or a random camera from :func:`sample_camera`:

    azimuth    ~ U[0, 360) degrees (all around the scene)
    elevation  ~ U[5, 55] degrees
    fov        ~ U[24, 40] degrees
    distance   = clip(half_width / tan(fov / 2), 3.5, 6.5), half_width ~ U[1.15, 1.6] world units (the half
                 extent of the view at the target; the default camera's is 5 tan(15 deg) = 1.34), so the main
                 object keeps about the same size in the image whatever the field of view
    target     = (x_main + U[-0.25, 0.25], U[0.4, 0.9], z_main + U[-0.25, 0.25]) (near the main object)

Distractors were placed by ``sample_scene`` so that they neither overlap nor hide the main object from the
default camera; for a random camera, the distractors that could hide it (:func:`hides_main`) or that stand
within 0.5 units of the camera are removed from that scene. The captions are the world's templates plus
view-independent phrasings (:data:`VIEW_TEMPLATES`: "a scene with a red cube", "a red cube with a blue
background", ...) that say what is there, not from where it is seen. One exception: seen from high up, the
floor fills the whole image and the background is not visible; a caption of such a view never names the
background (the phrase "in front of a ... background" / "with a ... background" is dropped from the drawn
template; no extra random draw, so scenes and captions stay in lockstep). See :func:`background_visible`.

``MULTIVIEW_WORLD`` is a drop-in "world" for :mod:`idsedit.mini.data` (``sample_scene``, ``render_batch``,
``caption``, ``VOCABULARY``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from ..errors import IdseditError
from .captions import TEMPLATES, VOCABULARY, attributes, parse_caption
from .raycast import pixel_rays, trace_floor
from .render import render_batch
from .scene import DEFAULT_CAMERA, CameraParams, ObjectParams, SceneParams, footprint_radius, sample_scene


@dataclass(frozen=True)
class ViewRanges:
    """The ranges :func:`sample_camera` draws from (see the module docstring)."""

    azimuth: tuple[float, float] = (0.0, 360.0)  # degrees, uniform
    elevation: tuple[float, float] = (5.0, 55.0)  # degrees, uniform
    fov: tuple[float, float] = (24.0, 40.0)  # degrees, uniform
    half_width: tuple[float, float] = (1.15, 1.6)  # world units at the target, uniform
    distance: tuple[float, float] = (3.5, 6.5)  # clip range of the distance (world units)
    target_offset: float = 0.25  # |target x/z - main object x/z| <= this (uniform per axis)
    target_height: tuple[float, float] = (0.4, 0.9)  # target y, uniform


VIEW_RANGES = ViewRanges()
"""The v2 training ranges."""

DEFAULT_SHARE = 0.25
"""Fraction of v2 training scenes seen from the default 2D camera (elevation 20, azimuth 0)."""


def sample_camera(rng: np.random.Generator, main: ObjectParams, ranges: ViewRanges = VIEW_RANGES) -> CameraParams:
    """A random camera looking at a point near ``main`` (draw order: azimuth, elevation, fov, half-width,
    target x, z, y)."""
    az = float(rng.uniform(*ranges.azimuth)) % 360.0
    el = float(rng.uniform(*ranges.elevation))
    fov = float(rng.uniform(*ranges.fov))
    half = float(rng.uniform(*ranges.half_width))
    dist = float(np.clip(half / math.tan(math.radians(fov) / 2), *ranges.distance))
    o = ranges.target_offset
    tx = main.position[0] + float(rng.uniform(-o, o))
    tz = main.position[1] + float(rng.uniform(-o, o))
    ty = float(rng.uniform(*ranges.target_height))
    return CameraParams(elevation=el, azimuth=az, distance=dist, fov=fov, target=(tx, ty, tz))


def hides_main(cam: CameraParams, main: ObjectParams, other: ObjectParams, margin: float = 0.35) -> bool:
    """Whether ``other`` may hide part of ``main`` from ``cam`` (conservative, floor-plane test): seen from the
    camera's (x, z), ``other`` is not further than the main object's centre + 0.1 and its footprint circle comes
    within ``margin`` of the main object's across the line of sight. (The default-camera rule of
    ``sample_scene`` is this test for a camera far away on +Z.)"""
    eye = cam.eye()
    e = np.array([eye[0], eye[2]])
    m, p = np.asarray(main.position, float), np.asarray(other.position, float)
    axis = m - e
    dist_main = float(np.linalg.norm(axis))
    if dist_main < 1e-9:
        return True
    axis /= dist_main
    along = float((p - e) @ axis)
    across = abs(float((p - e) @ np.array([-axis[1], axis[0]])))
    # across-distance at the other object's depth, scaled back to the main object's depth (perspective)
    across_at_main = across * dist_main / max(along, 1e-6)
    near = along < dist_main + 0.1
    return near and min(across, across_at_main) < footprint_radius(main) + footprint_radius(other) + margin


def too_close(cam: CameraParams, other: ObjectParams, clearance: float = 0.5) -> bool:
    """Whether the camera centre stands within ``clearance`` of ``other``'s footprint (floor-plane distance)."""
    eye = cam.eye()
    return math.dist((eye[0], eye[2]), other.position) < footprint_radius(other) + clearance


def view_scene(params: SceneParams, cam: CameraParams) -> SceneParams:
    """``params`` seen from ``cam``: the camera set, distractors that may hide the main object or crowd the
    camera removed (the main object stays ``objects[0]``)."""
    keep = [o for o in params.objects[1:] if not hides_main(cam, params.main, o) and not too_close(cam, o)]
    return replace(params, objects=(params.main, *keep), camera=cam)


def sample_view_scene(rng: np.random.Generator, default_share: float = DEFAULT_SHARE,
                      ranges: ViewRanges = VIEW_RANGES) -> SceneParams:
    """A v2 training scene: ``sample_scene(rng)``, then with probability ``default_share`` the default camera,
    else :func:`view_scene` from :func:`sample_camera`."""
    if not 0.0 <= default_share <= 1.0:
        raise IdseditError(f"default_share must be in [0, 1], got {default_share!r}")
    p = sample_scene(rng)
    if rng.random() < default_share:
        return p
    return view_scene(p, sample_camera(rng, p.main, ranges))


def sample_scenes(rng: np.random.Generator, n: int, views: str = "multiview") -> list[SceneParams]:
    """``n`` scenes seen from the mini prior v2's cameras (``views="multiview"``: :func:`sample_view_scene`) or from
    the default camera only (``"default"``: v1's world)."""
    if views == "multiview":
        return [sample_view_scene(rng) for _ in range(n)]
    if views == "default":
        return [sample_scene(rng) for _ in range(n)]
    raise IdseditError(f"views must be 'multiview' or 'default', got {views!r}")


def is_default_view(params: SceneParams) -> bool:
    """True when the scene is seen from the default 2D camera."""
    return params.camera == DEFAULT_CAMERA


BACKGROUND_MIN_FRACTION = 0.04
"""A view shows the background when at least this fraction of its pixels miss the floor disc."""


@lru_cache(maxsize=4096)
def background_fraction(cam: CameraParams, size: int = 32) -> float:
    """Fraction of the ``size`` x ``size`` pixel-centre rays of ``cam`` that miss the floor disc (they see the
    background unless an object is in the way; objects are ignored here)."""
    o, d = pixel_rays(cam, size)
    t = trace_floor(o[:, None], d)
    return float(np.mean(~np.isfinite(t)))


def background_visible(cam: CameraParams) -> bool:
    """Whether a view of ``cam`` shows enough background to name it: background_fraction >= 4%."""
    return background_fraction(cam) >= BACKGROUND_MIN_FRACTION


# ------------------------------------------------------------------------------------------------ captions
VIEW_TEMPLATES: tuple[str, ...] = (
    "scene with {a_color} {shape}",
    "scene with {a_color} {shape} on a {floor} floor",
    "{color} {shape} with a {background} background",
    "{color} {shape} on a {floor} floor with a {background} background",
    "{size} {color} {shape} standing on a {floor} floor",
)
"""View-independent phrasings added for v2 (bodies prefixed with "a"/"an"): they say what is in the scene, not
where the camera is; "{a_color}" is the colour with its own article ("an orange")."""

ALL_TEMPLATES: tuple[str, ...] = TEMPLATES + VIEW_TEMPLATES
"""v2 caption templates, drawn uniformly (TEMPLATES[0] is still the canonical caption)."""

VIEW_VOCABULARY: list[str] = sorted(set(VOCABULARY) | {"scene", "with", "standing"})
"""Every word a v2 caption can contain."""


def _an(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


_BACKGROUND_PHRASE = re.compile(r" (?:in front of|with) a \{background\} background")


def view_caption(params: SceneParams, rng: np.random.Generator | None = None, *, template: str | None = None) -> str:
    """A v2 caption: rng=None and template=None -> the canonical "a <color> <shape>"; with rng, a uniform draw
    from :data:`ALL_TEMPLATES`. When the view shows no background (:func:`background_visible`), the background
    phrase is dropped from the template."""
    if template is None:
        template = ALL_TEMPLATES[0] if rng is None else ALL_TEMPLATES[int(rng.integers(len(ALL_TEMPLATES)))]
    if "{background}" in template and not background_visible(params.camera):
        template = _BACKGROUND_PHRASE.sub("", template)
    a = attributes(params)
    try:
        body = template.format(a_color=_an(a["color"]), **a)
    except (KeyError, IndexError) as e:
        raise IdseditError(f"caption template {template!r} uses an unknown field {e}") from e
    return _an(body)


_REWRITES = ((re.compile(r"^a scene with (an? )"), r"\1"), (re.compile(r" standing on "), " on "),
             (re.compile(r" with an? (\w+) background$"), r" in front of a \1 background"))


def parse_view_caption(text: str) -> dict[str, str]:
    """Attributes named by a v2 caption (any of :data:`ALL_TEMPLATES`), as :func:`parse_caption` gives them."""
    norm = " ".join(text.lower().strip().rstrip(".").split())
    for pat, rep in _REWRITES:
        norm = pat.sub(rep, norm)
    return parse_caption(norm)


class MultiViewWorld:
    """The shapes world as :mod:`idsedit.mini.data` uses it, with v2 scenes and captions."""

    CAPTION_VERSION = 2  # 2: no background named where none is visible (a scene cache of another version is recaptioned)

    def __init__(self, default_share: float = DEFAULT_SHARE, ranges: ViewRanges = VIEW_RANGES):
        self.default_share, self.ranges = default_share, ranges
        self.VOCABULARY = VIEW_VOCABULARY

    def sample_scene(self, rng: np.random.Generator) -> SceneParams:
        return sample_view_scene(rng, self.default_share, self.ranges)

    @staticmethod
    def render_batch(params_list, size: int = 64):
        return render_batch(params_list, size=size)

    @staticmethod
    def caption(params: SceneParams, rng: np.random.Generator | None = None) -> str:
        return view_caption(params, rng)


MULTIVIEW_WORLD = MultiViewWorld()
"""The v2 training world (25% default view)."""

__all__ = ["ViewRanges", "VIEW_RANGES", "DEFAULT_SHARE", "sample_camera", "hides_main", "too_close", "view_scene",
           "sample_view_scene", "is_default_view", "VIEW_TEMPLATES", "ALL_TEMPLATES", "VIEW_VOCABULARY",
           "view_caption", "parse_view_caption", "background_fraction", "background_visible",
           "BACKGROUND_MIN_FRACTION", "MultiViewWorld", "MULTIVIEW_WORLD", "DEFAULT_CAMERA",
           "CameraParams"]
