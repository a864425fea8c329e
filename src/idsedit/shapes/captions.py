"""Captions of the shapes world: templates that name only SOME attributes of the main object.

"a red cube", "a small red cube", "a red cube on a blue floor", "a cube", "a red object", ... One caption
matches countless images, which is the ambiguity score distillation has to cope with. ``parse_caption``
inverts every template: ``parse_caption(caption(p, rng)) == attributes(p)`` restricted to the named keys.
"""

from __future__ import annotations

import re

import numpy as np

from ..errors import IdseditError
from .scene import COLORS, SHAPES, SIZES, SceneParams, size_word

TEMPLATES: tuple[str, ...] = (
    "{color} {shape}",
    "{color} {shape}",
    "{size} {color} {shape}",
    "{color} {shape} on a {floor} floor",
    "{size} {color} {shape} on a {floor} floor",
    "{color} {shape} in front of a {background} background",
    "{color} {shape} on a {floor} floor in front of a {background} background",
    "{shape}",
    "{size} {shape}",
    "{color} object",
    "{shape} on a {floor} floor",
)
"""Caption bodies, each prefixed with the article "a"/"an"; the first template is the canonical one (and is
listed twice so that the most informative short caption is drawn most often)."""

ATTRIBUTES = ("color", "shape", "size", "floor", "background")
_WORDS_FIXED = ("a", "an", "on", "floor", "in", "front", "of", "background", "object")

VOCABULARY: list[str] = sorted(set(_WORDS_FIXED) | set(COLORS) | set(SHAPES) | set(SIZES))
"""Every word any caption can contain (lower case, no punctuation)."""


def attributes(params: SceneParams) -> dict[str, str]:
    """All caption attributes of a scene: {"color", "shape", "size", "floor", "background"} -> word."""
    m = params.main
    return {"color": m.color, "shape": m.shape, "size": size_word(m.size), "floor": params.floor_color,
            "background": params.background}


def _article(text: str) -> str:
    return ("an " if text[0] in "aeiou" else "a ") + text


def caption(params: SceneParams, rng: np.random.Generator | None = None, *, template: str | None = None) -> str:
    """A caption of the main object. rng=None and template=None -> the canonical "a <color> <shape>";
    with rng, a random template from TEMPLATES; ``template`` picks one explicitly (a TEMPLATES entry or any
    str.format body using {color} {shape} {size} {floor} {background})."""
    if template is None:
        template = TEMPLATES[0] if rng is None else TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    try:
        body = template.format(**attributes(params))
    except (KeyError, IndexError) as e:
        raise IdseditError(f"caption template {template!r} uses an unknown field {e}; fields: "
                           f"{', '.join(ATTRIBUTES)}") from e
    return _article(body)


_COLOR = "|".join(COLORS)
_SHAPE = "|".join(SHAPES)
_SIZE = "|".join(SIZES)
_PATTERN = re.compile(
    rf"^an? (?:(?P<size>{_SIZE}) )?(?:(?P<color>{_COLOR}) )?(?:(?P<shape>{_SHAPE})|object)"
    rf"(?: on a (?P<floor>{_COLOR}) floor)?(?: in front of an? (?P<background>{_COLOR}) background)?$")


def parse_caption(text: str) -> dict[str, str]:
    """Attributes named by a caption, e.g. "a small red cube on a blue floor" -> {"size": "small",
    "color": "red", "shape": "cube", "floor": "blue"}; only the attributes present. Case and surrounding
    spaces/final period are ignored. Raises IdseditError for text outside the caption grammar."""
    norm = " ".join(text.lower().strip().rstrip(".").split())
    m = _PATTERN.match(norm)
    if m is None:
        raise IdseditError(f"cannot parse caption {text!r}; expected e.g. 'a small red cube on a blue floor "
                           f"in front of a white background' using words from VOCABULARY")
    return {k: v for k, v in m.groupdict().items() if v is not None}
