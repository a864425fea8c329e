"""Scene fit, edit and render end to end on a tiny shapes-world scene (16x16, 8 views, a 16^3 grid)."""

from __future__ import annotations

import hashlib
import math
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from idsedit import cli
from idsedit.distill import METHODS, MethodSpec
from idsedit.scene.cli import stop_on_signals
from idsedit.scene.edit import SceneEditConfig, edit_scene
from idsedit.scene.fit import FitConfig, fit_scene
from idsedit.scene.outputs import render_cameras, render_orbit
from idsedit.scene.store import load_scene
from idsedit.shapes import ObjectParams, SceneParams, write_multiview

TINY = dict(n_voxels=16 ** 3, n_voxels_init=8 ** 3, batch_rays=256, density_rank=4, app_rank=4, holdout_every=4,
            upsample_at=(2, 4), occupancy_start=3, occupancy_every=2, checkpoint_every=100, lr_grid=0.08,
            lr_env=0.05, env_start=0, density_shift=-5.0)   # fast rates and a foggy start: progress within a dozen steps


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("scene") / "data"
    p = SceneParams(objects=(ObjectParams("cube", "red", (0.0, 0.0), 0.8),), floor_color="gray", background="white")
    write_multiview(p, root, n_views=8, size=16)
    return root


@pytest.fixture(scope="module")
def fitted(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("fitted") / "scene"
    losses = []
    res = fit_scene(dataset, out, FitConfig(steps=12, **TINY), progress=False,
                    callback=lambda step, info: losses.append(info["loss"]))
    return res, losses


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_fit_lowers_the_loss_and_writes_a_scene(fitted):
    res, losses = fitted
    assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:3])      # measured: 0.73
    assert not res.cancelled and res.steps_done == 12 and res.eval_split == "test"
    report = json.loads((res.out_dir / "report.json").read_text())
    assert report["heldout_psnr"] == pytest.approx(res.psnr) and report["train_views"] == 6
    assert not (res.out_dir / "checkpoint.pt").exists()
    scene = load_scene(res.out_dir)
    assert scene.field.config.resolution == res.scene.field.config.resolution
    for k, v in res.scene.field.state_dict().items():
        assert torch.equal(scene.field.state_dict()[k], v), k


def test_learned_background_starts_at_the_training_images_mean_colour(dataset):
    """env_init="mean": every direction of the background shows the training images' mean colour at step 0;
    "gray": sigmoid(0) = 0.5; a constant background is left alone."""
    from idsedit.scene.data import load_views
    from idsedit.scene.fit import build_field, init_background

    views = load_views(dataset, "train", holdout_every=4)
    mean = views.images.reshape(-1, 3).double().mean(0)
    dirs = torch.nn.functional.normalize(torch.randn(64, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    for how, want in (("mean", mean), ("gray", torch.full((3,), 0.5, dtype=torch.float64))):
        f = build_field(FitConfig(**{**TINY, "background": "learned"}), views, torch.Generator().manual_seed(0))
        init_background(f, views, how)
        torch.testing.assert_close(f.background(dirs).double(), want.expand(64, 3), atol=1e-6, rtol=0)
    assert float((mean - 0.5).abs().max()) > 0.2       # the two starts differ here (measured mean 0.43, 0.26, 0.25)
    f = build_field(FitConfig(**{**TINY, "background": "white"}), views, torch.Generator().manual_seed(0))
    init_background(f, views, "mean")
    assert f.env is None and torch.equal(f.background(dirs), torch.ones(64, 3))


def test_depth_loss_hand_computed():
    """Ray 1 (truth at 1.5): 0.5 |1 - 1.5| + 0.3 |2 - 1.5| + (1 - 0.8) = 0.6; ray 2 (background): its opacity 0.3."""
    from idsedit.scene.fit import depth_loss

    w = torch.tensor([[0.5, 0.3, 0.0], [0.1, 0.2, 0.0]])
    t = torch.tensor([[1.0, 2.0, 0.0], [3.0, 4.0, 0.0]])
    loss = depth_loss(w, t, w.sum(1), torch.tensor([1.5, math.inf]))
    assert float(loss) == pytest.approx((0.6 + 0.3) / 2)


def test_depth_supervised_fit_needs_depth_maps(dataset, tmp_path):
    """With --depth-weight the training frames' depth maps are read; a frame without one is a one-line error."""
    from idsedit.errors import IdseditError
    from idsedit.scene.data import load_views
    from idsedit.scene.fit import load_depths

    views = load_views(dataset, "train", holdout_every=4)
    d = load_depths(views)
    assert d.shape == (len(views), 16, 16)
    assert torch.equal(d[0], torch.from_numpy(np.load(dataset / views.frames[0]["depth_path"])))
    meta = json.loads((dataset / "transforms.json").read_text())
    for fr in meta["frames"]:
        fr.pop("depth_path")
    bad = tmp_path / "nodepth"
    bad.mkdir()
    for sub in ("images",):
        (bad / sub).symlink_to(dataset / sub)
    (bad / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(IdseditError, match="no depth map"):
        fit_scene(bad, tmp_path / "out", FitConfig(steps=1, depth_weight=0.1, **TINY), progress=False)
    assert not (tmp_path / "out" / "scene.json").exists()


def test_resumed_fit_equals_uninterrupted(dataset, tmp_path):
    cfg = FitConfig(steps=7, seed=3, **TINY)
    whole = fit_scene(dataset, tmp_path / "whole", cfg, progress=False)
    seen = []
    part = fit_scene(dataset, tmp_path / "part", cfg, progress=False, should_stop=lambda: len(seen) >= 3,
                     callback=lambda step, info: seen.append(step))
    assert part.cancelled and part.steps_done == 3 and (tmp_path / "part" / "checkpoint.pt").is_file()
    assert not (tmp_path / "part" / "scene.json").exists()
    rest = fit_scene(dataset, tmp_path / "part", cfg, progress=False)
    assert rest.steps_done == 7
    a, b = whole.scene.field.state_dict(), rest.scene.field.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_signals_set_the_stop_event():
    with stop_on_signals() as stop:
        assert not stop.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.is_set()
    with stop_on_signals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.is_set()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_one_edit_step_calls_the_2d_method_function(fitted, tiny_prior, tmp_path, monkeypatch):
    res, _ = fitted
    before = _digest(res.out_dir)
    spec = METHODS["dds"]
    calls = []

    def counting(prior, z_src, z_trg, *rest):
        calls.append((z_src.shape, z_trg.requires_grad))
        return spec.fn(prior, z_src, z_trg, *rest)

    monkeypatch.setitem(METHODS, "dds", MethodSpec("dds", counting, spec.summary))
    out = edit_scene(tiny_prior, res.out_dir, "a red cube", "a blue cube", tmp_path / "edited",
                     SceneEditConfig(method="dds", steps=1, lr=0.05), progress=False)
    assert len(calls) == 1
    (shape, needs_grad), = calls
    assert needs_grad and tuple(shape) == (1, 4, 8, 8)          # the tiny prior: 64x64 renders, 8x8 latents
    assert _digest(res.out_dir) == before                       # the source scene is never modified
    src, new = load_scene(res.out_dir).field, load_scene(tmp_path / "edited").field
    moved = [k for k in ("app_planes.0", "density_planes.0")
             if not torch.equal(src.state_dict()[k], new.state_dict()[k])]
    assert moved == ["app_planes.0", "density_planes.0"]
    assert load_scene(tmp_path / "edited").history[-1]["kind"] == "edit"


def test_resumed_edit_equals_uninterrupted_with_occupancy_refreshes(fitted, tiny_prior, tmp_path):
    """An edit stopped after 3 steps and rerun to 5 equals an uninterrupted 5-step edit bitwise, occupancy
    refreshes (every 2 steps, their own random stream) included; the cameras do not depend on the refreshes."""
    res, _ = fitted
    cfg = dict(method="dds", steps=5, lr=0.05, occupancy_every=2, seed=4)
    cams = {}

    def run(out, should_stop=None, refresh=2):
        seen = cams.setdefault((out.name, refresh), [])
        return edit_scene(tiny_prior, res.out_dir, "a red cube", "a blue cube", out,
                          SceneEditConfig(**{**cfg, "occupancy_every": refresh}), progress=False,
                          should_stop=should_stop, callback=lambda step, info: seen.append(info["cameras"]))

    full = run(tmp_path / "full")
    polls = iter(range(100))
    part = run(tmp_path / "part", should_stop=lambda: next(polls) >= 3)
    assert part.cancelled and part.steps_done == 3
    done = run(tmp_path / "part")
    assert not done.cancelled and done.steps_done == 5
    a, b = load_scene(tmp_path / "full").field.state_dict(), load_scene(tmp_path / "part").field.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    run(tmp_path / "norefresh", refresh=0)
    assert cams[("full", 2)] == cams[("part", 2)] == cams[("norefresh", 0)]
    assert full.report["occupancy_refresh_s"] > 0


def test_render_cameras_and_orbit(fitted, dataset, tmp_path):
    res, _ = fitted
    scene = load_scene(res.out_dir)
    frames = render_cameras(scene, dataset / "transforms.json", tmp_path / "r", progress=False)
    assert sorted(p.name for p in (tmp_path / "r").iterdir())[:2] == ["r_000.depth.npy", "r_000.png"]
    depth = np.load(tmp_path / "r" / "r_000.depth.npy")
    assert depth.dtype == np.float32 and depth.shape == (16, 16)
    assert Image.open(tmp_path / "r" / "r_000.png").size == (16, 16)
    np.testing.assert_array_equal(frames.depth[0], depth)
    paths = render_orbit(scene, 3, tmp_path / "o", compare=scene, progress=False)
    for name in ("orbit.gif", "orbit.mp4", "orbit_depth.gif", "orbit_depth.mp4"):
        assert Path(paths[name]).stat().st_size > 0
    assert Image.open(paths["orbit.gif"]).n_frames == 3


# --------------------------------------------------------------------------------------------------- CLI errors
def _run(capsys, argv):
    code = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_cli_bad_inputs_are_one_line_errors(capsys, tmp_path, dataset, fitted):
    res, _ = fitted
    out = tmp_path / "out"
    code, err = _run(capsys, ["scene", "fit", str(tmp_path / "missing"), "--out", str(out), "--quiet"])
    assert code == 1 and len(err) == 1 and err[0].startswith("error:") and "does not exist" in err[0]
    assert not out.exists()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "transforms.json").write_text(json.dumps({"camera_angle_x": 0.5, "frames": [
        {"file_path": "x.png", "transform_matrix": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}]}))
    code, err = _run(capsys, ["scene", "fit", str(bad), "--out", str(out), "--quiet", "--holdout-every", "0"])
    assert code == 1 and len(err) == 1 and "x.png" in err[0] and not out.exists()
    code, err = _run(capsys, ["scene", "render", str(dataset), "--orbit", "2", "--out", str(out)])
    assert code == 1 and len(err) == 1 and "is not a scene" in err[0] and not out.exists()
    code, err = _run(capsys, ["scene", "edit", str(tmp_path), "--source", "a", "--target", "b", "--out", str(out)])
    assert code == 1 and len(err) == 1 and "is not a scene" in err[0]
    code, err = _run(capsys, ["scene", "fit", str(dataset), "--out", str(res.out_dir), "--quiet"])
    assert code == 1 and len(err) == 1 and "already holds a fitted scene" in err[0]
    code, err = _run(capsys, ["scene", "render", str(res.out_dir), "--out", str(out)])
    assert code == 1 and "exactly one of --cameras" in err[0]


def test_cli_edit_from_dataset_images_and_render_cameras_file(capsys, fitted, tmp_path):
    """`scene edit --source-images data` through the CLI (tiny prior), then `scene render --cameras` of a file that
    has only poses and a size (no images): one PNG + one float32 depth file per frame, +inf without a surface."""
    from conftest import TINY_MODEL

    res, _ = fitted
    code = cli.main(["scene", "edit", str(res.out_dir), "--source", "a red cube", "--target", "a blue cube",
                     "--method", "sds", "--steps", "1", "--source-images", "data", "--model", str(TINY_MODEL),
                     "--device", "cpu", "--out", str(tmp_path / "e"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "e" / "report.json").read_text())["config"]["source"] == "data"
    away = np.eye(4)
    away[:3, :3] = np.diag([-1.0, 1.0, -1.0])              # outside the box, looking away from it: nothing there
    away[:3, 3] = [0.0, 0.8, 20.0]
    side = np.eye(4)
    side[:3, 3] = [0.0, 0.8, 4.5]                        # looking down -Z at the cube
    cams = {"camera_angle_x": 0.6, "w": 12, "h": 10, "frames": [
        {"file_path": "views/away", "transform_matrix": away.tolist()},
        {"file_path": "views/side.png", "transform_matrix": side.tolist()}]}
    (tmp_path / "cams.json").write_text(json.dumps(cams))
    code = cli.main(["scene", "render", str(res.out_dir), "--cameras", str(tmp_path / "cams.json"),
                     "--out", str(tmp_path / "r"), "--quiet"])
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["away.depth.npy", "away.png", "side.depth.npy",
                                                                   "side.png"]
    d_away, d_side = np.load(tmp_path / "r" / "away.depth.npy"), np.load(tmp_path / "r" / "side.depth.npy")
    assert d_away.shape == (10, 12) and d_away.dtype == np.float32 and np.isinf(d_away).all()
    assert Image.open(tmp_path / "r" / "side.png").size == (12, 10)


def test_every_method_sees_the_same_t_and_eps_and_a_resumed_pds_edit_is_exact(fitted, tiny_prior, tmp_path,
                                                                              monkeypatch):
    """PDS draws a second noise every step: from the method stream, so DDS and PDS get the same (t, eps) at every
    step (a paired comparison), and that stream is checkpointed: PDS stopped at 2 of 4 steps and resumed equals
    an uninterrupted run bitwise."""
    import idsedit.scene.edit as edit_mod

    res, _ = fitted
    seen: dict[str, list] = {}
    real = edit_mod.loop.draw_step

    def recording(sampler, z_src, *a, **k):
        d = real(sampler, z_src, *a, **k)
        seen.setdefault(label, []).append((int(d.t), d.noise.clone()))
        return d

    monkeypatch.setattr(edit_mod.loop, "draw_step", recording)

    def run(method, out, should_stop=None):
        return edit_scene(tiny_prior, res.out_dir, "a red cube", "a blue cube", tmp_path / out,
                          SceneEditConfig(method=method, steps=4, lr=0.05, seed=7), progress=False,
                          should_stop=should_stop)

    for label, method in (("dds", "dds"), ("pds", "pds")):
        run(method, label)
    assert [t for t, _ in seen["dds"]] == [t for t, _ in seen["pds"]]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(seen["dds"], seen["pds"]))
    label = "resumed"
    polls = iter(range(100))
    assert run("pds", "part", should_stop=lambda: next(polls) >= 2).steps_done == 2
    assert run("pds", "part").steps_done == 4
    a, b = load_scene(tmp_path / "pds").field.state_dict(), load_scene(tmp_path / "part").field.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
