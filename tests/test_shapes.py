"""Shapes world: renderer invariants against hand-computed geometry, captions, scene round trips, multi-view."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from idsedit.errors import IdseditError
from idsedit.shapes import (COLORS, DEFAULT_CAMERA, FLOOR_RADIUS, SHAPES, SIZES, TEMPLATES, VOCABULARY,
                            CameraParams, ObjectParams, SceneParams, attributes, caption, parse_caption, pixel_rays,
                            render, render_batch, render_many, sample_scene, with_changes, write_multiview)
from idsedit.shapes import raycast
from idsedit.shapes.scene import footprint_radius


def _scenes(n, seed=0, **kw):
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, **kw) for _ in range(n)]


def _sphere_scene(size=0.8, pos=(0.0, 0.0), light=(0.3, 0.9, 0.3), camera=DEFAULT_CAMERA, color="red"):
    return SceneParams(objects=(ObjectParams("sphere", color, pos, size),), floor_color="gray", background="blue",
                       light=light, camera=camera)


# ------------------------------------------------------------------------------------------ determinism
def test_render_is_deterministic_and_batch_matches_single():
    ps = _scenes(6, seed=1)
    a = render(ps[3], 32)
    b = render(ps[3], 32)
    for f in ("rgb", "mask", "depth", "object_ids", "coverage"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    batch = render_batch(ps, 32, chunk=4)  # scene 3 sits in the second chunk with another scene
    assert batch.shape == (6, 32, 32, 3) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[3], a.rgb)
    assert 0.0 <= batch.min() and batch.max() <= 1.0


# ---------------------------------------------------------------------------------- label consistency
def test_mask_depth_ids_agree_with_each_other_and_with_the_floor():
    ps = _scenes(8, seed=2)
    r = render_many(ps, 32)
    assert np.array_equal(r.mask, r.object_ids == 0)
    assert np.all(r.coverage[r.mask] > 0) and np.all((r.coverage == 0) | (r.coverage >= 0.2))
    for i, p in enumerate(ps):
        # where no object is hit, depth is finite exactly where the centre ray meets the floor disc
        eye, d = pixel_rays(p.camera, 32)
        with np.errstate(divide="ignore"):
            t_floor = np.where(d[1] < 0, -eye[1] / d[1], np.inf)
        x, z = eye[0] + np.where(np.isfinite(t_floor), t_floor, 0) * d[0], eye[2] + np.where(
            np.isfinite(t_floor), t_floor, 0) * d[2]
        t_floor = np.where(x * x + z * z <= FLOOR_RADIUS ** 2, t_floor, np.inf).reshape(32, 32)
        ids, depth = r.object_ids[i], r.depth[i]
        obj = ids >= 0
        assert np.all(np.isfinite(depth[obj])) and np.all(depth[obj] <= t_floor[obj])
        np.testing.assert_allclose(depth[~obj], t_floor[~obj].astype(np.float32), rtol=1e-6)
        assert set(np.unique(ids)) <= set(range(-1, len(p.objects)))


def test_sphere_head_on_is_a_disc_of_the_projected_radius():
    # camera level with the sphere centre, looking straight at it: the silhouette is the cone of half-angle
    # asin(s / D) around the optical axis, a circle of radius tan(asin(s / D)) / tan(fov / 2) * W / 2 pixels
    s, D, fov, W = 0.7, 4.0, 40.0, 64
    cam = CameraParams(elevation=0.0, azimuth=0.0, distance=D, fov=fov, target=(0.0, s, 0.0))
    r = render(_sphere_scene(size=s, camera=cam), W)
    r_px = math.tan(math.asin(s / D)) / math.tan(math.radians(fov) / 2) * W / 2
    assert abs(r.mask.sum() - math.pi * r_px ** 2) < 0.02 * math.pi * r_px ** 2
    # per pixel: inside iff the centre ray's angle to the axis is below asin(s / D) (exact up to rounding)
    eye, d = pixel_rays(cam, W)
    cos_angle = (-d[2]).reshape(W, W)  # the optical axis is -Z
    inside = cos_angle > math.cos(math.asin(s / D))
    near_edge = np.abs(cos_angle - math.cos(math.asin(s / D))) < 1e-9
    assert np.array_equal(r.mask[~near_edge], inside[~near_edge])
    # depth at the centre pixels is D - s (the ray along the axis), up to the half-pixel offset
    c = W // 2
    assert abs(r.depth[c, c] - (D - s)) < 1e-3
    ys, xs = np.nonzero(r.mask)
    assert abs(xs.mean() + 0.5 - W / 2) < 1e-6 and abs(ys.mean() + 0.5 - W / 2) < 1e-6


@pytest.mark.parametrize("shape", SHAPES)
def test_top_down_silhouettes_match_the_footprints(shape):
    # a camera straight above, very far, with a tiny fov is orthographic: the mask is the primitive's footprint
    s, theta, W = 0.9, 0.4, 48
    cam = CameraParams(elevation=90.0, azimuth=0.0, distance=1000.0, fov=math.degrees(2 * math.atan(1.7 / 1000)),
                       target=(0.0, 0.0, 0.0))
    p = SceneParams(objects=(ObjectParams(shape, "red", (0.0, 0.0), s, theta),), camera=cam)
    r = render(p, W)
    eye, d = pixel_rays(cam, W)
    x, z = eye[0] - eye[1] / d[1] * d[0], eye[2] - eye[1] / d[1] * d[2]  # where each centre ray meets y = 0
    # local footprint coordinates: R_y(-theta) (x, z) / s
    c, sn = math.cos(theta), math.sin(theta)
    u, w = (c * x - sn * z) / s, (sn * x + c * z) / s
    rho = np.hypot(u, w)
    if shape == "cube":
        a = raycast.CUBE_HALF
        dist = np.maximum(np.abs(u), np.abs(w)) - a
    elif shape == "torus":
        dist = np.abs(rho - raycast.TORUS_MAJOR) - raycast.TORUS_MINOR
    else:
        radius = {"sphere": 1.0, "cylinder": raycast.CYL_RADIUS, "cone": raycast.CONE_RADIUS}[shape]
        dist = rho - radius
    inside, clear = (dist < 0).reshape(W, W), (np.abs(dist) > 0.02).reshape(W, W)
    assert clear.mean() > 0.9 and inside.sum() > 100
    assert np.array_equal(r.mask[clear], inside[clear])


@pytest.mark.parametrize("shape", ["sphere", "torus"])
def test_object_shading_matches_closed_form_under_an_overhead_light(shape):
    # light straight up: no point with n_y > 0 can be shadowed (the vertical above it is empty), so a pixel
    # whose neighbours all hit the object is albedo * (AMBIENT + DIFFUSE n_y) + SPECULAR max(0, n.h)^SHININESS
    s, W = 0.9, 48
    p = SceneParams(objects=(ObjectParams(shape, "orange", (0.0, 0.0), s),), light=(0.0, 1.0, 0.0))
    r = render(p, W)
    eye, d = pixel_rays(p.camera, W)
    depth = np.where(r.mask, r.depth, 1.0).ravel().astype(np.float64)  # background pixels are masked out below
    pts = eye[:, None] + depth * d  # (3, N)
    if shape == "sphere":
        n = pts - np.array([[0.0], [s], [0.0]])
    else:  # torus: from the nearest point of the ring of tube centres (radius R s at height r s)
        rho = np.hypot(pts[0], pts[2])
        R, rr = raycast.TORUS_MAJOR * s, raycast.TORUS_MINOR * s
        n = np.stack([pts[0] - R * pts[0] / rho, pts[1] - rr, pts[2] - R * pts[2] / rho])
    n = n / np.linalg.norm(n, axis=0)
    h = np.array([[0.0], [1.0], [0.0]]) - d
    h = h / np.linalg.norm(h, axis=0)
    spec = np.maximum((n * h).sum(0), 0) ** raycast.SHININESS
    albedo = np.array(COLORS["orange"])
    expected = np.clip(albedo[None] * (raycast.AMBIENT + raycast.DIFFUSE * np.maximum(n[1], 0))[:, None]
                       + raycast.SPECULAR * spec[:, None], 0, 1).reshape(W, W, 3)
    # pixels whose 3x3 neighbourhood is all object with n_y > 0.05 (no silhouette, no terminator: not anti-aliased)
    ok = np.pad(r.mask & (np.nan_to_num(n[1]).reshape(W, W) > 0.05), 1)
    sel = np.all([ok[1 + dy:W + 1 + dy, 1 + dx:W + 1 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
    assert sel.sum() > 150
    np.testing.assert_allclose(r.rgb[sel], expected[sel], atol=2e-3)


def test_floor_shading_and_shadows_match_closed_form():
    # a floor pixel whose 3x3 neighbourhood is all floor with the same shadow state is shaded from its centre
    # ray only: floor * (AMBIENT + DIFFUSE * l_y) when lit, floor * AMBIENT when the sphere blocks the light
    s, light = 0.8, np.array([0.3, 0.8, 0.4])
    p = _sphere_scene(size=s, light=tuple(light))
    r = render(p, 48)
    l = light / np.linalg.norm(light)
    eye, d = pixel_rays(p.camera, 48)
    t = r.depth.ravel().astype(np.float64)
    floor_px = (r.object_ids.ravel() == -1) & np.isfinite(t)
    pts = eye[:, None] + np.where(np.isfinite(t), t, 0) * d  # (3, N) floor points
    oc = pts - np.array([[0.0], [s], [0.0]])  # shadow ray vs sphere: |oc + u l|^2 = s^2 for some u > 0
    b = (oc * l[:, None]).sum(0)
    c = (oc * oc).sum(0) - s * s
    shadow = (b * b - c > 0) & (-b > 0)
    grid = (floor_px.astype(int) * 2 + shadow).reshape(48, 48)
    pad = np.pad(grid, 1, mode="edge")
    uniform = np.all([pad[1 + dy:49 + dy, 1 + dx:49 + dx] == grid for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
    sel = (uniform & floor_px.reshape(48, 48))
    floor = np.array(COLORS["gray"])
    expected = np.where(shadow.reshape(48, 48)[..., None], floor * raycast.AMBIENT,
                        floor * (raycast.AMBIENT + raycast.DIFFUSE * l[1]))
    assert sel.sum() > 500 and (shadow.reshape(48, 48) & sel).sum() > 20
    np.testing.assert_allclose(r.rgb[sel], expected[sel], atol=1e-6)


# ------------------------------------------------------------------------------------------- edits
def test_color_change_touches_only_pixels_the_main_object_covers():
    for p in _scenes(6, seed=3):
        new = next(c for c in COLORS if c != p.main.color)
        a, b = render(p, 32), render(with_changes(p, color=new), 32)
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.coverage, b.coverage)
        np.testing.assert_array_equal(a.depth, b.depth)
        outside = a.coverage == 0
        # no reflections, shadows do not depend on albedo: the rest of the image is bit-identical
        np.testing.assert_array_equal(a.rgb[outside], b.rgb[outside])
        changed = np.any(a.rgb != b.rgb, axis=-1)
        assert changed[a.mask].mean() > 0.9


def test_with_changes_edits_only_the_named_attributes():
    p = _scenes(1, seed=4, n_distractors=(2, 2))[0]
    q = with_changes(p, color="blue", shape="torus", size="large", floor="green", background="pink")
    assert (q.main.color, q.main.shape, q.main.size) == ("blue", "torus", SIZES["large"])
    assert q.main.position == p.main.position and q.main.rotation == p.main.rotation
    assert q.objects[1:] == p.objects[1:] and q.light == p.light and q.camera == p.camera
    assert (q.floor_color, q.background) == ("green", "pink")
    assert p.main.color != "blue" or p.main.shape != "torus"  # the input is untouched (frozen)
    with pytest.raises(IdseditError, match="unknown color"):
        with_changes(p, color="mauve")
    with pytest.raises(IdseditError, match="unknown attribute"):
        with_changes(p, colour="red")


# ------------------------------------------------------------------------------------------- sampling
def test_sample_scene_keeps_distractors_apart_and_the_main_object_visible():
    ps = _scenes(40, seed=5)
    r = render_many(ps, 32)
    counts = [len(p.objects) - 1 for p in ps]
    assert set(counts) == {0, 1, 2}
    for i, p in enumerate(ps):
        assert p.floor_color != p.main.color and p.background != p.floor_color
        for j, o in enumerate(p.objects[1:], 1):
            gap = math.dist(o.position, p.main.position) - footprint_radius(o) - footprint_radius(p.main)
            assert gap > 0.15
        frac = r.mask[i].mean()
        assert 0.08 < frac < 0.7, (i, frac)
    assert {p.main.shape for p in ps} == set(SHAPES)


def test_scene_json_round_trip_and_validation():
    for p in _scenes(5, seed=6):
        d = json.loads(json.dumps(p.to_dict()))
        assert SceneParams.from_dict(d) == p
    with pytest.raises(IdseditError, match="unknown shape"):
        SceneParams(objects=[ObjectParams("pyramid", "red", (0, 0), 1.0)])
    with pytest.raises(IdseditError, match="at least one object"):
        SceneParams(objects=[])


# ------------------------------------------------------------------------------------------- captions
def test_caption_parse_round_trip_and_vocabulary():
    rng = np.random.default_rng(7)
    vocab = set(VOCABULARY)
    for p in _scenes(30, seed=7):
        attrs = attributes(p)
        assert caption(p) == ("an " if p.main.color[0] in "aeiou" else "a ") + f"{p.main.color} {p.main.shape}"
        for template in TEMPLATES:
            text = caption(p, template=template)
            assert set(text.split()) <= vocab, text
            parsed = parse_caption(text)
            assert parsed == {k: v for k, v in attrs.items() if "{" + k + "}" in template}, text
        assert set(parse_caption(caption(p, rng)).items()) <= set(attrs.items())
    assert parse_caption("A Small orange CONE.") == {"size": "small", "color": "orange", "shape": "cone"}
    with pytest.raises(IdseditError, match="cannot parse"):
        parse_caption("a cat")


# ------------------------------------------------------------------------------------------ multi-view
def test_multiview_poses_reproject_the_sphere_onto_its_mask(tmp_path):
    s, centre = 0.7, np.array([0.3, 0.7, -0.2])
    p = _sphere_scene(size=s, pos=(0.3, -0.2))
    path = write_multiview(p, tmp_path / "mv", n_views=6, size=32)
    meta = json.loads(path.read_text())
    assert len(meta["frames"]) == 6 and SceneParams.from_dict(meta["scene"]) == p
    W = meta["w"]
    f = 0.5 * W / math.tan(0.5 * meta["camera_angle_x"])
    jj, ii = np.meshgrid(np.arange(W) + 0.5, np.arange(W) + 0.5)
    for fr in meta["frames"]:
        c2w = np.array(fr["transform_matrix"])
        np.testing.assert_allclose(c2w[3], [0, 0, 0, 1])
        np.testing.assert_allclose(c2w[:3, :3].T @ c2w[:3, :3], np.eye(3), atol=1e-12)
        mask = np.array(Image.open(path.parent / fr["mask_path"])) > 127
        img = np.array(Image.open(path.parent / fr["file_path"]))
        depth = np.load(path.parent / fr["depth_path"])
        assert img.shape == (W, W, 3) and mask.shape == (W, W) and depth.shape == (W, W)
        # 1. the sphere centre projects into the mask: camera coords x_c = R^T (X - eye), looks down -Z
        xc = c2w[:3, :3].T @ (centre - c2w[:3, 3])
        u, v = W / 2 + f * xc[0] / -xc[2], W / 2 - f * xc[1] / -xc[2]
        assert mask[int(v), int(u)]
        # 2. every mask pixel unprojected with its depth lands on the sphere surface
        dirs = np.stack([(jj - W / 2) / f, -(ii - W / 2) / f, -np.ones_like(jj)], -1)[mask]
        dirs = dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)
        pts = c2w[:3, 3] + (dirs @ c2w[:3, :3].T) * depth[mask][:, None]
        np.testing.assert_allclose(np.linalg.norm(pts - centre, axis=-1), s, atol=1e-4)
        # 3. the image is the render from that frame's camera
        cam = CameraParams(elevation=fr["elevation"], azimuth=fr["azimuth"], distance=5.0, fov=30.0)
        ref = render(p, W, camera=cam)
        np.testing.assert_array_equal(mask, ref.mask)
        assert np.abs(img.astype(int) - np.round(ref.rgb * 255).astype(int)).max() <= 1
