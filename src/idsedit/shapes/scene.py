"""Scene parameters of the shapes world: what is where, in which colour, seen from where.

World frame: +Y up, the floor is the disc y = 0, |(x, z)| <= FLOOR_RADIUS. Every object rests on the floor;
its ``position`` is its (x, z) footprint centre, ``size`` scales its unit primitive (a sphere of size s has
radius s), ``rotation`` turns it about +Y (radians). The default camera looks from +Z towards -Z.

Everything here is plain data: a scene is fully described by a :class:`SceneParams` (JSON round trip via
``to_dict``/``from_dict``), and the ground truth of an edit is ``render(with_changes(params, color="blue"))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import IdseditError

SHAPES: tuple[str, ...] = ("sphere", "cube", "cylinder", "cone", "torus")
"""Primitive names, in class-index order (the evaluator's shape classes use this order)."""

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.08, 0.06),
    "orange": (1.00, 0.45, 0.02),
    "yellow": (0.95, 0.85, 0.08),
    "green": (0.10, 0.62, 0.12),
    "cyan": (0.05, 0.78, 0.85),
    "blue": (0.08, 0.22, 0.92),
    "purple": (0.50, 0.12, 0.72),
    "pink": (1.00, 0.52, 0.72),
    "white": (0.95, 0.95, 0.95),
    "gray": (0.42, 0.42, 0.42),
}
"""Named colours (albedo, linear-ish RGB in [0, 1]), in class-index order; chosen to stay distinct after shading."""

SIZES: dict[str, float] = {"small": 0.66, "medium": 0.78, "large": 0.9}
"""Size words and the nominal size each stands for (``with_changes(p, size="large")`` uses these values)."""

SIZE_RANGE: tuple[float, float] = (0.6, 0.95)
"""The main object's size is drawn uniformly from this range."""

SIZE_BOUNDS: tuple[float, float] = (0.72, 0.84)
"""Size-word thresholds: size < 0.72 is "small", size >= 0.84 is "large", anything between is "medium"."""

FLOOR_RADIUS: float = 5.0
"""Radius of the floor disc (world units); beyond it rays see the background."""

MAIN_XZ_RANGE: tuple[tuple[float, float], tuple[float, float]] = ((-0.45, 0.45), (-0.9, 0.45))
"""(x range, z range) of the main object's footprint centre, keeping it well inside the default view; x is
further limited to |x| <= MAIN_HALF_WIDTH - footprint radius (at least 0.1) so wide objects stay in frame."""

MAIN_HALF_WIDTH: float = 1.35
"""Half-width (world units, at the camera target) that the main object's footprint should stay within."""


def size_word(size: float) -> str:
    """The caption word for a continuous size: "small" | "medium" | "large" (see ``SIZE_BOUNDS``)."""
    if size < SIZE_BOUNDS[0]:
        return "small"
    return "large" if size >= SIZE_BOUNDS[1] else "medium"


@dataclass(frozen=True)
class CameraParams:
    """A pinhole camera on a sphere around ``target``, looking at it with +Y up (square images)."""

    elevation: float = 20.0  # degrees above the floor plane
    azimuth: float = 0.0  # degrees about +Y; 0 puts the camera on the +Z axis, looking towards -Z
    distance: float = 5.0  # world units from target to the camera centre
    fov: float = 30.0  # full field of view in degrees (horizontal = vertical; images are square)
    target: tuple[float, float, float] = (0.0, 0.7, 0.0)  # the point the camera looks at

    def eye(self) -> np.ndarray:
        """Camera centre: target + distance * (cos(el) sin(az), sin(el), cos(el) cos(az)), shape (3,)."""
        el, az = math.radians(self.elevation), math.radians(self.azimuth)
        offset = (math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az))
        return np.array([t + self.distance * o for t, o in zip(self.target, offset)], dtype=np.float64)

    def to_dict(self) -> dict:
        return {"elevation": self.elevation, "azimuth": self.azimuth, "distance": self.distance,
                "fov": self.fov, "target": list(self.target)}

    @classmethod
    def from_dict(cls, d: dict) -> "CameraParams":
        d = dict(d)
        if "target" in d:
            d["target"] = tuple(float(v) for v in d["target"])
        return cls(**d)


DEFAULT_CAMERA = CameraParams()
"""The fixed camera of the 2D dataset."""


@dataclass(frozen=True)
class ObjectParams:
    """One primitive resting on the floor."""

    shape: str  # one of SHAPES
    color: str  # one of COLORS
    position: tuple[float, float]  # (x, z) of the footprint centre on the floor plane
    size: float  # scale of the unit primitive (sphere radius); the main object's is in SIZE_RANGE
    rotation: float = 0.0  # radians about +Y (matters for the cube only; the others are symmetric)

    def to_dict(self) -> dict:
        return {"shape": self.shape, "color": self.color, "position": list(self.position),
                "size": self.size, "rotation": self.rotation}

    @classmethod
    def from_dict(cls, d: dict) -> "ObjectParams":
        return cls(shape=d["shape"], color=d["color"], position=tuple(float(v) for v in d["position"]),
                   size=float(d["size"]), rotation=float(d.get("rotation", 0.0)))


@dataclass(frozen=True)
class SceneParams:
    """A whole scene; ``objects[0]`` is THE main object (the one captions talk about and edits change)."""

    objects: tuple[ObjectParams, ...]  # main object first, then 0-2 distractors
    floor_color: str = "gray"  # a COLORS name for the floor albedo
    background: str = "white"  # a COLORS name for the backdrop gradient
    light: tuple[float, float, float] = (0.4, 0.8, 0.45)  # direction TOWARDS the light (normalised on use)
    camera: CameraParams = field(default_factory=CameraParams)  # the default 2D-dataset camera

    def __post_init__(self):
        object.__setattr__(self, "objects", tuple(self.objects))
        validate_scene(self)

    @property
    def main(self) -> ObjectParams:
        return self.objects[0]

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (``SceneParams.from_dict`` inverts it exactly)."""
        return {"objects": [o.to_dict() for o in self.objects], "floor_color": self.floor_color,
                "background": self.background, "light": list(self.light), "camera": self.camera.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "SceneParams":
        try:
            return cls(objects=tuple(ObjectParams.from_dict(o) for o in d["objects"]),
                       floor_color=d.get("floor_color", "gray"), background=d.get("background", "white"),
                       light=tuple(float(v) for v in d.get("light", (0.4, 0.8, 0.45))),
                       camera=CameraParams.from_dict(d.get("camera", {})))
        except (KeyError, TypeError) as e:
            raise IdseditError(f"scene dict is missing or has a bad field ({e!r}); "
                               f"expected keys objects, floor_color, background, light, camera") from e


def _check_name(kind: str, value, allowed) -> None:
    if value not in allowed:
        raise IdseditError(f"unknown {kind} {value!r}; use one of {', '.join(allowed)}")


def validate_scene(p: SceneParams) -> None:
    """Raise IdseditError naming the first bad field of ``p`` (unknown names, no objects, bad numbers)."""
    if len(p.objects) == 0:
        raise IdseditError("a scene needs at least one object (objects[0] is the main object)")
    for i, o in enumerate(p.objects):
        _check_name(f"shape of objects[{i}]", o.shape, SHAPES)
        _check_name(f"color of objects[{i}]", o.color, COLORS)
        if not (math.isfinite(o.size) and o.size > 0):
            raise IdseditError(f"objects[{i}].size must be a positive number, got {o.size!r}")
        if len(o.position) != 2 or not all(math.isfinite(v) for v in o.position):
            raise IdseditError(f"objects[{i}].position must be two finite numbers (x, z), got {o.position!r}")
    _check_name("floor_color", p.floor_color, COLORS)
    _check_name("background", p.background, COLORS)
    if len(p.light) != 3 or math.hypot(*p.light) == 0 or p.light[1] <= 0:
        raise IdseditError(f"light must be a 3-vector pointing upwards (y > 0), got {p.light!r}")


# --- footprints: radius of the circle (x, z) that contains each unit primitive (used to avoid overlaps) ---
FOOTPRINT: dict[str, float] = {"sphere": 1.0, "cube": 0.82 * math.sqrt(2.0), "cylinder": 0.8,
                               "cone": 1.05, "torus": 1.42}


def footprint_radius(o: ObjectParams) -> float:
    """Radius of the floor-plane circle containing object ``o``: FOOTPRINT[shape] * size."""
    return FOOTPRINT[o.shape] * o.size


def _occludes_main(main: ObjectParams, other: ObjectParams, margin: float = 0.35) -> bool:
    """Whether ``other`` may hide part of ``main`` from the default camera (it is nearer and laterally close)."""
    dx = abs(other.position[0] - main.position[0])
    nearer = other.position[1] > main.position[1] - 0.1
    return nearer and dx < footprint_radius(main) + footprint_radius(other) + margin


def _in_view(x: float, z: float, cam: CameraParams = DEFAULT_CAMERA, limit: float = 1.05) -> bool:
    """Whether the floor point (x, 0, z) projects within ``limit`` (NDC units) of the default image centre."""
    eye = cam.eye()
    fwd = np.asarray(cam.target) - eye
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    v = np.array([x, 0.3, z]) - eye
    depth = float(v @ fwd)
    tan = math.tan(math.radians(cam.fov) / 2)
    return depth > 0 and abs(float(v @ right) / depth / tan) < limit and abs(float(v @ up) / depth / tan) < limit


def sample_light(rng: np.random.Generator) -> tuple[float, float, float]:
    """A unit direction towards the light: elevation U[35, 70] deg, azimuth U[-100, 100] deg from +Z."""
    el = math.radians(rng.uniform(35.0, 70.0))
    az = math.radians(rng.uniform(-100.0, 100.0))
    return (math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az))


def sample_scene(rng: np.random.Generator, *, n_distractors: tuple[int, int] = (0, 2),
                 camera: CameraParams | None = None) -> SceneParams:
    """A random scene: main object (uniform shape/colour, size ~ U(SIZE_RANGE), position in MAIN_XZ_RANGE,
    rotation ~ U[0, 2 pi)), n ~ U{n_distractors} distractors that neither overlap nor hide it, a floor colour
    different from the main colour, a background different from the floor, and a random light."""
    lo, hi = n_distractors
    if not (0 <= lo <= hi):
        raise IdseditError(f"n_distractors must be (min, max) with 0 <= min <= max, got {n_distractors!r}")
    colors = list(COLORS)
    (x0, x1), (z0, z1) = MAIN_XZ_RANGE
    shape, color = SHAPES[rng.integers(len(SHAPES))], colors[rng.integers(len(colors))]
    size = float(rng.uniform(*SIZE_RANGE))
    x_max = min(max(MAIN_HALF_WIDTH - FOOTPRINT[shape] * size, 0.1), x1)
    main = ObjectParams(shape=shape, color=color, size=size,
                        position=(float(rng.uniform(max(x0, -x_max), x_max)), float(rng.uniform(z0, z1))),
                        rotation=float(rng.uniform(0.0, 2 * math.pi)))
    objects = [main]
    n = int(rng.integers(lo, hi + 1))
    for _ in range(200):
        if len(objects) == n + 1:
            break
        cand = ObjectParams(shape=SHAPES[rng.integers(len(SHAPES))], color=colors[rng.integers(len(colors))],
                            position=(float(rng.uniform(-3.2, 3.2)), float(rng.uniform(-3.5, 1.2))),
                            size=float(rng.uniform(0.4, 0.75)), rotation=float(rng.uniform(0.0, 2 * math.pi)))
        ok = _in_view(*cand.position) and math.hypot(*cand.position) + footprint_radius(cand) < FLOOR_RADIUS
        ok = ok and not _occludes_main(main, cand)
        for o in objects:
            gap = math.dist(o.position, cand.position) - footprint_radius(o) - footprint_radius(cand)
            ok = ok and gap > 0.15
        if ok:
            objects.append(cand)
    floor = [c for c in colors if c != main.color][rng.integers(len(colors) - 1)]
    background = [c for c in colors if c != floor][rng.integers(len(colors) - 1)]
    return SceneParams(objects=tuple(objects), floor_color=floor, background=background, light=sample_light(rng),
                       camera=camera if camera is not None else DEFAULT_CAMERA)


_EDITABLE = ("color", "shape", "size", "position", "rotation", "floor_color", "floor", "background")


def with_changes(params: SceneParams, **changes) -> SceneParams:
    """A new scene equal to ``params`` except the edited attributes.

    Main-object attributes: ``color=``, ``shape=``, ``size=`` (a number or a SIZES word), ``position=`` (x, z),
    ``rotation=`` (radians); scene attributes: ``floor_color=`` (alias ``floor=``), ``background=``.
    Overlaps a changed shape/size/position may create with distractors are NOT resolved (the ground truth stays
    well defined: it is simply this scene rendered).
    """
    bad = [k for k in changes if k not in _EDITABLE]
    if bad:
        raise IdseditError(f"with_changes got unknown attribute(s) {bad}; editable: {', '.join(_EDITABLE)}")
    main = params.main
    obj = {}
    for key in ("color", "shape", "rotation", "position", "size"):
        if key in changes:
            obj[key] = changes[key]
    if isinstance(obj.get("size"), str):
        _check_name("size word", obj["size"], SIZES)
        obj["size"] = SIZES[obj["size"]]
    if "size" in obj:
        obj["size"] = float(obj["size"])
    if "rotation" in obj:
        obj["rotation"] = float(obj["rotation"])
    if "position" in obj:
        obj["position"] = tuple(float(v) for v in obj["position"])
    scene = {}
    if "floor" in changes or "floor_color" in changes:
        scene["floor_color"] = changes.get("floor_color", changes.get("floor"))
    if "background" in changes:
        scene["background"] = changes["background"]
    new_main = replace(main, **obj)
    return replace(params, objects=(new_main,) + tuple(params.objects[1:]), **scene)
