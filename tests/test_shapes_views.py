"""Multi-view training data of the mini prior v2 (idsedit.shapes.views): camera ranges, coverage, visibility,
captions."""

import math

import numpy as np
import pytest

from idsedit.errors import IdseditError
from idsedit.shapes import DEFAULT_CAMERA, ObjectParams, SceneParams, caption, render_many, sample_scene
from idsedit.shapes.views import (ALL_TEMPLATES, MULTIVIEW_WORLD, VIEW_RANGES, VIEW_VOCABULARY, CameraParams,
                                  hides_main, is_default_view, parse_view_caption, sample_camera, sample_view_scene,
                                  view_caption)
from idsedit.shapes.captions import attributes


@pytest.fixture(scope="module")
def cams():
    rng = np.random.default_rng(0)
    main = ObjectParams("cube", "red", (0.2, -0.3), 0.8)
    return main, [sample_camera(rng, main) for _ in range(4000)]


def test_camera_ranges_are_respected(cams):
    main, cs = cams
    r = VIEW_RANGES
    az = np.array([c.azimuth for c in cs])
    el = np.array([c.elevation for c in cs])
    fov = np.array([c.fov for c in cs])
    dist = np.array([c.distance for c in cs])
    tgt = np.array([c.target for c in cs])
    assert az.min() >= 0 and az.max() < 360
    assert el.min() >= r.elevation[0] and el.max() <= r.elevation[1]
    assert fov.min() >= r.fov[0] and fov.max() <= r.fov[1]
    assert dist.min() >= r.distance[0] and dist.max() <= r.distance[1]
    assert np.abs(tgt[:, 0] - main.position[0]).max() <= r.target_offset
    assert np.abs(tgt[:, 2] - main.position[1]).max() <= r.target_offset
    assert tgt[:, 1].min() >= r.target_height[0] and tgt[:, 1].max() <= r.target_height[1]


def test_cameras_cover_the_claimed_ranges(cams):
    """Every 30-degree azimuth sector and every 10-degree elevation band gets its uniform share (+-25%), and the
    extremes of fov and distance are reached."""
    _, cs = cams
    n = len(cs)
    az_counts = np.histogram([c.azimuth for c in cs], bins=12, range=(0, 360))[0]
    assert az_counts.min() > 0.75 * n / 12 and az_counts.max() < 1.25 * n / 12
    el_counts = np.histogram([c.elevation for c in cs], bins=5, range=VIEW_RANGES.elevation)[0]
    assert el_counts.min() > 0.75 * n / 5 and el_counts.max() < 1.25 * n / 5
    fov = np.array([c.fov for c in cs])
    dist = np.array([c.distance for c in cs])
    assert fov.min() < 25 and fov.max() > 39
    assert dist.min() < 3.7 and dist.max() > 6.3  # both clip ends are hit
    # the view half-width at the target is half_width unless the distance was clipped
    hw = dist * np.tan(np.radians(fov) / 2)
    inside = (dist > VIEW_RANGES.distance[0]) & (dist < VIEW_RANGES.distance[1])
    assert hw[inside].min() >= VIEW_RANGES.half_width[0] - 1e-9 and hw[inside].max() <= VIEW_RANGES.half_width[1] + 1e-9


def test_default_share_and_determinism():
    rng = np.random.default_rng(3)
    scenes = [sample_view_scene(rng) for _ in range(800)]
    share = np.mean([is_default_view(p) for p in scenes])
    assert abs(share - 0.25) < 0.05
    again = [sample_view_scene(np.random.default_rng(3)) for _ in range(1)]
    assert again[0] == scenes[0]
    assert all(is_default_view(sample_view_scene(rng, default_share=1.0)) for _ in range(20))
    assert not any(is_default_view(sample_view_scene(rng, default_share=0.0)) for _ in range(20))
    with pytest.raises(IdseditError):
        sample_view_scene(rng, default_share=1.5)


def test_main_object_is_seen_from_every_sampled_camera():
    """Render 96 random-camera scenes: the main object is in view with a sizeable mask (>= 3% of the image)."""
    rng = np.random.default_rng(7)
    scenes = [sample_view_scene(rng, default_share=0.0) for _ in range(96)]
    r = render_many(scenes, 32)
    area = r.mask.sum((1, 2)) / (32 * 32)
    assert area.min() >= 0.03, area.min()
    # cameras really go around: both front and back half are present
    az = np.array([p.camera.azimuth for p in scenes])
    assert ((az > 90) & (az < 270)).any() and ((az < 90) | (az > 270)).any()


def test_hides_main_geometry():
    main = ObjectParams("sphere", "red", (0.0, 0.0), 0.7)
    cam_front = CameraParams(elevation=20, azimuth=0.0)  # on +Z
    cam_back = CameraParams(elevation=20, azimuth=180.0)  # on -Z
    blocker = ObjectParams("cube", "blue", (0.0, 1.8), 0.5)  # between the +Z camera and the main object
    assert hides_main(cam_front, main, blocker)
    assert not hides_main(cam_back, main, blocker)  # behind the main object from -Z
    side = ObjectParams("cube", "blue", (3.0, 0.0), 0.5)
    assert not hides_main(cam_front, main, side)


def test_view_captions_name_true_attributes_and_stay_in_vocabulary():
    rng = np.random.default_rng(1)
    words = set(VIEW_VOCABULARY)
    seen = set()
    for _ in range(300):
        p = sample_view_scene(rng)
        text = view_caption(p, rng)
        assert set(text.split()) <= words, text
        got = parse_view_caption(text)
        truth = attributes(p)
        assert got and all(truth[k] == v for k, v in got.items()), (text, truth)
        seen.add(text.split()[1])
    for t in ALL_TEMPLATES:  # every template parses
        p = sample_scene(np.random.default_rng(2))
        assert parse_view_caption(view_caption(p, template=t))
    p = SceneParams(objects=(ObjectParams("cube", "orange", (0, 0), 0.9),), floor_color="blue", background="white")
    assert view_caption(p) == caption(p) == "an orange cube"
    assert view_caption(p, template="scene with {a_color} {shape}") == "a scene with an orange cube"
    assert parse_view_caption("a large orange cube standing on a blue floor") == {
        "size": "large", "color": "orange", "shape": "cube", "floor": "blue"}
    assert parse_view_caption("an orange cube with a white background") == {
        "color": "orange", "shape": "cube", "background": "white"}


def test_world_adapter_renders_scenes_from_their_cameras():
    rng = np.random.default_rng(5)
    ps = [MULTIVIEW_WORLD.sample_scene(rng) for _ in range(4)]
    rgb = MULTIVIEW_WORLD.render_batch(ps, size=16)
    assert rgb.shape == (4, 16, 16, 3)
    one = render_many([ps[0]], 16).rgb[0]
    np.testing.assert_array_equal(rgb[0], one)
    assert DEFAULT_CAMERA == CameraParams() and math.isclose(DEFAULT_CAMERA.elevation, 20.0)


def test_background_is_named_only_where_it_is_visible():
    from idsedit.shapes.views import background_fraction, background_visible

    assert background_visible(DEFAULT_CAMERA) and 0.2 < background_fraction(DEFAULT_CAMERA) < 0.5
    top = CameraParams(elevation=55.0, azimuth=90.0, distance=4.0, fov=30.0, target=(0.0, 0.5, 0.0))
    assert background_fraction(top) == 0.0 and not background_visible(top)
    p = SceneParams(objects=(ObjectParams("cube", "red", (0, 0), 0.8),), floor_color="blue", background="white",
                    camera=top)
    for t in ALL_TEMPLATES:
        text = view_caption(p, template=t)
        assert "background" not in text and parse_view_caption(text)
    assert view_caption(p, template="{color} {shape} on a {floor} floor in front of a {background} background") \
        == "a red cube on a blue floor"
    # the rendered view agrees: no pixel of the top view sees the background (depth = inf)
    assert np.isfinite(render_many([p], 32).depth).all()
    side = SceneParams(objects=p.objects, floor_color="blue", background="white", camera=DEFAULT_CAMERA)
    assert view_caption(side, template="{color} {shape} with a {background} background") == \
        "a red cube with a white background"


def test_sample_scenes_views():
    from idsedit.shapes.views import is_default_view, sample_scenes

    default = sample_scenes(np.random.default_rng(0), 20, "default")
    around = sample_scenes(np.random.default_rng(0), 40, "multiview")
    assert len(default) == 20 and all(is_default_view(s) for s in default)
    assert len(around) == 40 and 0 < sum(is_default_view(s) for s in around) < 40
    with pytest.raises(IdseditError, match="views must be"):
        sample_scenes(np.random.default_rng(0), 1, "sideways")
