"""The synthetic shapes world: parametric 3D scenes, an analytic ray caster, captions and multi-view datasets.

    from idsedit.shapes import sample_scene, render, caption, with_changes
    p = sample_scene(np.random.default_rng(0))
    img = render(p).rgb                                   # (64, 64, 3) float32 in [0, 1]
    gt = render(with_changes(p, color="blue")).rgb        # the ground truth of the edit "make it blue"
    caption(p)                                            # "a red cube"
"""

from .captions import ATTRIBUTES, TEMPLATES, VOCABULARY, attributes, caption, parse_caption
from .multiview import orbit_cameras, write_multiview
from .raycast import camera_to_world, pixel_rays
from .render import Render, render, render_batch, render_many
from .scene import (COLORS, DEFAULT_CAMERA, FLOOR_RADIUS, SHAPES, SIZE_RANGE, SIZES, CameraParams, ObjectParams,
                    SceneParams, sample_scene, size_word, with_changes)

__all__ = [
    "SHAPES", "COLORS", "SIZES", "SIZE_RANGE", "FLOOR_RADIUS", "DEFAULT_CAMERA", "ObjectParams", "SceneParams",
    "CameraParams", "sample_scene", "with_changes", "size_word", "Render", "render", "render_batch",
    "render_many", "caption", "parse_caption", "attributes", "VOCABULARY", "TEMPLATES", "ATTRIBUTES",
    "write_multiview", "orbit_cameras", "camera_to_world", "pixel_rays",
]
