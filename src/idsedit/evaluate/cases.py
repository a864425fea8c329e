"""Edit cases with a ground truth, from the shapes world.

A case is a rendered scene, the same scene with one or two attributes changed (the ground truth of the edit), the
two captions that name them, and a seed. Every method edits the same cases with the same seed, so the t and
noise draws are identical across methods (see :mod:`idsedit.evaluate.runner`).

Families (prompts use the caption template that names exactly the edited attributes):

    colour        "a red cube"                          -> "a blue cube"
    shape         "a red cube"                          -> "a red sphere"
    size          "a small red cube"                    -> "a large red cube"       (nominal SIZES value)
    floor         "a red cube on a gray floor"          -> "a red cube on a green floor"
    background    "a red cube in front of a white background" -> "... a pink background"
    colour+shape  "a red cube"                          -> "a blue sphere"          (two attributes)

    cases = make_cases(FAMILIES, per_family=10, seed=0)     # 60 cases, names like "shape-0-003"

Views: ``view="default"`` renders every case from the default 2D camera (the v1 prior's only camera);
``view="around"`` renders the same scene and edit from a camera drawn around it (``idsedit.shapes.views``: azimuth
0-360, elevation ~5-50 degrees; the mini prior v2's training cameras), named "<family>-<seed>-<index>-around", with
the same seed as its default-view twin, so the two views of a case are edited with the same t and noise draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..errors import IdseditError

FAMILIES: tuple[str, ...] = ("colour", "shape", "size", "floor", "background", "colour+shape")
"""Edit families in the order they are listed in reports."""

VIEWS: tuple[str, ...] = ("default", "around")
"""Camera choices of the cases (see the module docstring)."""

FAMILY_ALIASES = {"color": "colour", "two": "colour+shape", "color+shape": "colour+shape", "bg": "background"}

_TEMPLATES = {  # caption template (see idsedit.shapes.captions) naming the edited attributes
    "colour": "{color} {shape}", "shape": "{color} {shape}", "size": "{size} {color} {shape}",
    "floor": "{color} {shape} on a {floor} floor",
    "background": "{color} {shape} in front of a {background} background", "colour+shape": "{color} {shape}",
}


@dataclass
class ShapesEditCase:
    """One edit with its ground truth."""

    name: str                      # "<family>-<seed>-<index>", unique within a run
    source_params: object          # idsedit.shapes.SceneParams
    target_params: object          # the same scene with the edited attribute(s) changed: the ground truth
    source_prompt: str
    target_prompt: str
    attribute: str                 # the family ("colour", "shape", ...)
    seed: int = 0                  # seed of every method's t / noise draws on this case

    def record(self) -> dict:
        """A JSON-able description (scene parameters, prompts, seed)."""
        return {"name": self.name, "family": self.attribute, "seed": self.seed, "source_prompt": self.source_prompt,
                "target_prompt": self.target_prompt, "source": self.source_params.to_dict(),
                "target": self.target_params.to_dict()}


def canonical_family(name: str) -> str:
    key = FAMILY_ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in FAMILIES:
        raise IdseditError(f"unknown edit family {name!r}: use one of {', '.join(FAMILIES)}")
    return key


def case_seed(seed: int, family: str, index: int) -> int:
    """A 31-bit seed for case ``index`` of ``family`` under the run seed (stable across versions and runs)."""
    return int(np.random.SeedSequence([int(seed), FAMILIES.index(family), int(index)]).generate_state(1)[0] >> 1)


def _pick(rng: np.random.Generator, options) -> str:
    options = list(options)
    return str(options[int(rng.integers(len(options)))])


def family_change(family: str, p, rng: np.random.Generator) -> dict:
    """The attribute changes of one edit of ``family`` on scene ``p`` (a ``with_changes`` keyword dict).

    New values always differ from the old ones; a floor never takes the object's or the backdrop's colour and a
    backdrop never the floor's (the renderer's scenes keep them apart, and so do the edits).
    """
    from ..shapes import COLORS, SHAPES, SIZES, size_word

    m = p.main
    if family == "colour":
        return {"color": _pick(rng, [c for c in COLORS if c not in (m.color, p.floor_color)])}
    if family == "shape":
        return {"shape": _pick(rng, [s for s in SHAPES if s != m.shape])}
    if family == "size":
        return {"size": _pick(rng, [w for w in SIZES if w not in (size_word(m.size), "medium")] or ["small"])}
    if family == "floor":
        return {"floor": _pick(rng, [c for c in COLORS if c not in (p.floor_color, m.color, p.background)])}
    if family == "background":
        return {"background": _pick(rng, [c for c in COLORS if c not in (p.background, p.floor_color)])}
    if family == "colour+shape":
        return {"color": _pick(rng, [c for c in COLORS if c not in (m.color, p.floor_color)]),
                "shape": _pick(rng, [s for s in SHAPES if s != m.shape])}
    raise IdseditError(f"unknown edit family {family!r}")


def around_view(p, q, seed: int):
    """The source ``p`` and its edit ``q`` seen from one camera drawn around the main object (from ``seed``'s own
    stream, so the scene and the edit stay those of the default-view case): the distractors that would hide the
    main object or crowd the camera are dropped from both alike; a background edit gets a camera that shows the
    background."""
    from dataclasses import replace

    from ..shapes.views import background_visible, sample_camera, view_scene

    rng = np.random.default_rng([int(seed), 1])
    for _ in range(100):
        cam = sample_camera(rng, p.main)
        if p.background == q.background or background_visible(cam):
            break
    else:  # pragma: no cover - 4% of the pixels miss the floor for most cameras
        raise IdseditError(f"no camera around case seed {seed} shows the background")
    seen = view_scene(p, cam)
    return seen, replace(q, objects=(q.main, *seen.objects[1:]), camera=cam)


def make_case(family: str, seed: int, index: int, view: str = "default") -> ShapesEditCase:
    """Case ``index`` of ``family``: a random scene from its own seed and one edit of that family, seen from the
    default camera or (``view="around"``) from a camera around the scene."""
    from ..shapes import SIZES, caption, sample_scene, size_word, with_changes

    if view not in VIEWS:
        raise IdseditError(f"unknown view {view!r}: use one of {', '.join(VIEWS)}")
    family = canonical_family(family)
    s = case_seed(seed, family, index)
    rng = np.random.default_rng(s)
    p = sample_scene(rng)
    if family == "size" and size_word(p.main.size) == "medium":  # the source's size word must be unambiguous
        p = with_changes(p, size=_pick(rng, ["small", "large"]))
    elif family == "size":
        p = with_changes(p, size=SIZES[size_word(p.main.size)])
    q = with_changes(p, **family_change(family, p, rng))
    template = _TEMPLATES[family]
    name = f"{family}-{seed}-{index:03d}"
    if view == "around":
        p, q = around_view(p, q, s)
        name += "-around"
    return ShapesEditCase(name, p, q, caption(p, template=template), caption(q, template=template), family, s)


def make_cases(families, per_family: int, seed: int = 0, view: str = "default") -> list[ShapesEditCase]:
    """``per_family`` seeded cases of each family, interleaved (colour 0, shape 0, ..., colour 1, ...) so that a
    partial run covers every family; ``view`` as :func:`make_case`."""
    if per_family < 1:
        raise IdseditError(f"cases per family must be >= 1, got {per_family}")
    families = [canonical_family(f) for f in families]
    return [make_case(f, seed, i, view) for i in range(per_family) for f in families]


def render_image(params, size: int) -> Image.Image:
    """The scene rendered as a PIL RGB image."""
    from ..shapes import render

    return Image.fromarray((render(params, size).rgb * 255).round().astype(np.uint8))
