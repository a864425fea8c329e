"""Radiance-field scenes: datasets, a CPU-fast TensoRF field, volume rendering, fit, edit and render.

    from idsedit.scene import FitConfig, SceneEditConfig, fit_scene, edit_scene, load_scene, render_orbit
    fit = fit_scene("data/", "scene/", FitConfig(steps=1500))
    edit = edit_scene(prior, "scene/", "a red cube", "a blue cube", "edited/", SceneEditConfig(method="ids"))

See docs/scene.md.
"""

from .data import Views, load_cameras, load_views
from .edit import SceneEditConfig, SceneEditResult, edit_scene
from .field import FieldConfig, TensoRF
from .fit import FitConfig, FitResult, fit_scene
from .outputs import render_cameras, render_orbit
from .render import RenderOutput, render_image, render_rays
from .store import Scene, load_scene, save_scene

__all__ = ["Views", "load_views", "load_cameras", "FieldConfig", "TensoRF", "RenderOutput", "render_rays",
           "render_image", "FitConfig", "FitResult", "fit_scene", "SceneEditConfig", "SceneEditResult",
           "edit_scene", "Scene", "load_scene", "save_scene", "render_cameras", "render_orbit"]
