"""Scene datasets: camera conventions of both formats against the shapes world's exact geometry, and bad input."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from idsedit.errors import IdseditError
from idsedit.scene.data import load_cameras, load_views, project
from idsedit.scene.render import camera_rays
from idsedit.shapes import ObjectParams, SceneParams, write_multiview

RADIUS = 0.8
CENTRE = np.array([0.3, RADIUS, -0.2])   # a sphere of size s has radius s and rests on the floor: centre y = s


@pytest.fixture(scope="module")
def sphere_scene(tmp_path_factory):
    """8 views (32x32) of a lone red sphere; its centre and radius are known exactly."""
    root = tmp_path_factory.mktemp("sphere")
    p = SceneParams(objects=(ObjectParams("sphere", "red", (float(CENTRE[0]), float(CENTRE[2])), RADIUS),),
                    floor_color="gray", background="white")
    write_multiview(p, root / "blender1", n_views=8, size=32)
    return root


def _sphere_hits(views, i, depths):
    """World points o + depth d of the pixels whose exact ray hits the sphere (mask & finite depth)."""
    o, d = camera_rays(views.c2w[i], views.intrinsics[i], views.hw)
    dep = torch.from_numpy(depths).reshape(-1)
    return (o + dep[:, None] * d).double().numpy()


def _check_sphere(views, root):
    """Every mask pixel's ray, at the dataset's depth, lands on the sphere; the centre projects into the mask."""
    checked = 0
    for i, frame in enumerate(views.frames):
        mask = np.asarray(Image.open(root / frame["mask_path"])) > 127
        depth = np.load(root / frame["depth_path"])
        if mask.shape != views.hw:                                        # the cropped nerfstudio copy
            mask, depth = mask[:, 8:], depth[:, 8:]
        pts = _sphere_hits(views, i, depth)[mask.reshape(-1)]
        assert len(pts) > 10
        np.testing.assert_allclose(np.linalg.norm(pts - CENTRE, axis=1), RADIUS, atol=2e-4)
        uv, zf = project(CENTRE[None], views.c2w[i].numpy(), views.intrinsics[i].numpy())
        j, r = int(uv[0, 0]), int(uv[0, 1])
        assert zf[0] > 0 and mask[r, j], f"frame {i}: centre projects to ({r}, {j}) outside the mask"
        checked += 1
    return checked


def test_blender_single_file_camera_convention(sphere_scene):
    root = sphere_scene / "blender1"
    views = load_views(root, "train", holdout_every=0)
    assert len(views) == 8 and views.hw == (32, 32)
    assert _check_sphere(views, root) == 8


def test_blender_split_files_without_extension(sphere_scene, tmp_path):
    src = sphere_scene / "blender1"
    meta = json.loads((src / "transforms.json").read_text())
    dst = tmp_path / "split"
    shutil.copytree(src, dst)
    (dst / "transforms.json").unlink()
    for split, frames in (("train", meta["frames"][:6]), ("test", meta["frames"][6:])):
        fr = [dict(f, file_path=f["file_path"][:-4]) for f in frames]           # "images/r_000"
        (dst / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": meta["camera_angle_x"],
                                                                   "frames": fr}))
    train, test = load_views(dst, "train"), load_views(dst, "test")
    assert (len(train), len(test)) == (6, 2)
    assert train.names[0] == "r_000"
    assert _check_sphere(train, dst) == 6 and _check_sphere(test, dst) == 2
    with pytest.raises(IdseditError, match="no val split"):
        load_views(dst, "val")


def test_nerfstudio_intrinsics_with_offset_principal_point(sphere_scene, tmp_path):
    """Crop 8 columns off the left: fl_x stays, cx moves by -8; the declared w/h describe the crop."""
    src = sphere_scene / "blender1"
    meta = json.loads((src / "transforms.json").read_text())
    dst = tmp_path / "ns"
    shutil.copytree(src, dst)
    for f in meta["frames"]:
        im = Image.open(src / f["file_path"])
        im.crop((8, 0, 32, 32)).save(dst / f["file_path"])
    ns = {"fl_x": meta["fl_x"], "fl_y": meta["fl_y"], "cx": meta["cx"] - 8, "cy": meta["cy"], "w": 24, "h": 32,
          "camera_model": "OPENCV", "k1": 0.0, "frames": meta["frames"]}
    (dst / "transforms.json").write_text(json.dumps(ns))
    views = load_views(dst, "train", holdout_every=0)
    assert views.hw == (32, 24)
    assert _check_sphere(views, dst) == 8


def test_holdout_split_and_resize(sphere_scene):
    root = sphere_scene / "blender1"
    train, test = load_views(root, "train", holdout_every=4), load_views(root, "test", holdout_every=4)
    assert test.names == ["r_000", "r_004"] and len(train) == 6
    small = load_views(root, "train", holdout_every=4, size=16)
    assert small.hw == (16, 16)
    np.testing.assert_allclose(small.intrinsics[:, :2].numpy(), train.intrinsics[:, :2].numpy() / 2, rtol=1e-6)
    np.testing.assert_allclose(small.intrinsics[:, 2:].numpy(), 8.0)


def test_rgba_is_composited_on_the_background(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 0] = 255
    a[..., 3] = 0
    a[0, 0, 3] = 255
    Image.fromarray(a, "RGBA").save(tmp_path / "f.png")
    (tmp_path / "transforms.json").write_text(json.dumps(
        {"camera_angle_x": 0.5, "frames": [{"file_path": "f", "transform_matrix": np.eye(4).tolist()}]}))
    v = load_views(tmp_path, "train", holdout_every=0, background=(0.0, 0.0, 1.0))
    assert v.had_alpha
    np.testing.assert_allclose(v.images[0, 0, 0].numpy(), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(v.images[0, 1, 1].numpy(), [0.0, 0.0, 1.0])


def test_cameras_only_file(tmp_path):
    m = np.eye(4)
    m[2, 3] = 4.0
    (tmp_path / "cams.json").write_text(json.dumps({"camera_angle_x": 0.6, "w": 20, "h": 10,
                                                   "frames": [{"file_path": "a", "transform_matrix": m.tolist()}]}))
    c = load_cameras(tmp_path / "cams.json")
    assert c.hw == (10, 20) and c.names == ["a"]
    assert math.isclose(float(c.intrinsics[0, 0]), 10 / math.tan(0.3), rel_tol=1e-6)


# --------------------------------------------------------------------------------------------------- bad input
def _dataset(tmp_path, frames=None, meta=None, n=2, size=(4, 4)):
    for i in range(n):
        Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(tmp_path / f"f{i}.png")
    m = {"camera_angle_x": 0.5, "frames": frames if frames is not None else
         [{"file_path": f"f{i}.png", "transform_matrix": np.eye(4).tolist()} for i in range(n)]}
    m.update(meta or {})
    (tmp_path / "transforms.json").write_text(json.dumps(m))
    return tmp_path


BAD_POSES = {
    "non-finite": [[1, 0, 0, float("nan")], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
    "not a rigid": [[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
    "shape": [[1, 0, 0], [0, 1, 0]],
    "last row": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 1]],
}


@pytest.mark.parametrize("what", sorted(BAD_POSES))
def test_bad_pose(tmp_path, what):
    m = BAD_POSES[what]
    _dataset(tmp_path, frames=[{"file_path": "f0.png", "transform_matrix": m}], n=1)
    with pytest.raises(IdseditError, match=what) as e:
        load_views(tmp_path, "train", holdout_every=0)
    assert "transforms.json frame 0" in str(e.value) and "\n" not in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(IdseditError, match="does not exist"):
        load_views(tmp_path / "nope", "train")
    with pytest.raises(IdseditError, match="not a multi-view dataset"):
        load_views(tmp_path, "train")
    (tmp_path / "transforms.json").write_text("{not json")
    with pytest.raises(IdseditError, match="not valid JSON"):
        load_views(tmp_path, "train")
    (tmp_path / "transforms.json").write_text(json.dumps({"camera_angle_x": 0.5}))
    with pytest.raises(IdseditError, match="no 'frames' list"):
        load_views(tmp_path, "train")
    (tmp_path / "transforms.json").write_text(json.dumps({"camera_angle_x": 0.5, "frames": []}))
    with pytest.raises(IdseditError, match="train split has no frames"):
        load_views(tmp_path, "train")


def test_missing_unreadable_and_mixed_frames(tmp_path):
    d = _dataset(tmp_path)
    (d / "f1.png").unlink()
    with pytest.raises(IdseditError, match=r"frame 1: image 'f1.png' does not exist"):
        load_views(d, "train", holdout_every=0)
    (d / "f1.png").write_bytes(b"not a png at all")
    with pytest.raises(IdseditError, match=r"frame 1: cannot read image"):
        load_views(d, "train", holdout_every=0)
    Image.fromarray(np.zeros((5, 4, 3), np.uint8)).save(d / "f1.png")
    with pytest.raises(IdseditError, match="all frames of a split must have one size"):
        load_views(d, "train", holdout_every=0)


def test_missing_intrinsics_and_distortion(tmp_path):
    d = _dataset(tmp_path, n=1, meta={"camera_angle_x": None})
    with pytest.raises(IdseditError, match="camera_angle_x"):
        load_views(d, "train", holdout_every=0)
    m = json.loads((d / "transforms.json").read_text())
    m.pop("camera_angle_x")
    (d / "transforms.json").write_text(json.dumps(m))
    with pytest.raises(IdseditError, match="no camera intrinsics"):
        load_views(d, "train", holdout_every=0)
    m.update({"fl_x": 10.0, "k1": 0.1})
    (d / "transforms.json").write_text(json.dumps(m))
    with pytest.raises(IdseditError, match="distortion"):
        load_views(d, "train", holdout_every=0)
