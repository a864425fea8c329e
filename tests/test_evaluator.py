"""The shipped shapes evaluator: held-out accuracy floors, input handling, edit scores on known edits."""

import math

import numpy as np
import pytest
import torch

from idsedit.mini.evaluator import (DEFAULT_WEIGHTS, Evaluator, EvaluatorConfig, EvaluatorNet, changed_attributes,
                                    load_evaluator, save_evaluator, score_edit, soft_centroid, true_centroid)
from idsedit.shapes import COLORS, SHAPES, render, render_many, sample_scene, with_changes

# The shipped weights are part of the package: their tests fail (never skip) when the weights are missing.


@pytest.fixture(scope="module")
def ev():
    return load_evaluator()


@pytest.fixture(scope="module")
def held_out():
    rng = np.random.default_rng(20240601)  # a seed the training never used (train 0, held-out 1)
    scenes = [sample_scene(rng) for _ in range(200)]
    return scenes, render_many(scenes, 64)


def test_shipped_evaluator_accuracy_floor_on_fresh_renders(ev, held_out):
    scenes, r = held_out
    p = ev.predict(r.rgb)
    colors, shapes = list(COLORS), list(SHAPES)
    acc = {
        "color": np.mean(p["color"] == [colors.index(s.main.color) for s in scenes]),
        "shape": np.mean(p["shape"] == [shapes.index(s.main.shape) for s in scenes]),
        "floor": np.mean(p["floor"] == [colors.index(s.floor_color) for s in scenes]),
        "background": np.mean(p["background"] == [colors.index(s.background) for s in scenes]),
    }
    assert acc["color"] >= 0.90 and acc["shape"] >= 0.85, acc
    assert acc["floor"] >= 0.85 and acc["background"] >= 0.85, acc
    err = np.linalg.norm(p["centroid"] - np.stack([true_centroid(m) for m in r.mask]), axis=1)
    assert err.mean() < 2.5 and np.median(err) < 2.0, err.mean()
    assert np.abs(p["size"] - [s.main.size for s in scenes]).mean() < 0.06
    assert np.abs(p["area"] - r.mask.mean((1, 2))).mean() < 0.03


def test_predict_accepts_both_layouts_and_other_sizes(ev, held_out):
    _, r = held_out
    x = r.rgb[:4]
    a = ev.predict(x)
    b = ev.predict(np.transpose(x, (0, 3, 1, 2)))
    for k in ("color", "shape", "floor", "background"):
        np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_allclose(a["centroid"], b["centroid"], atol=1e-5)
    big = ev.predict(np.repeat(np.repeat(x, 2, axis=1), 2, axis=2))  # 128x128: centroid in 128-px units
    np.testing.assert_allclose(big["centroid"], 2 * a["centroid"], atol=0.5)


def test_soft_centroid_and_true_centroid_agree_on_a_box():
    mask = np.zeros((64, 64), bool)
    mask[10:20, 30:50] = True  # rows 10..19, cols 30..49 -> centre (40, 15) in pixel-edge coordinates
    np.testing.assert_allclose(true_centroid(mask), [40.0, 15.0])
    prob = torch.from_numpy(mask.astype(np.float32))[None, None]
    np.testing.assert_allclose(soft_centroid(prob, 64)[0].numpy(), [40.0, 15.0], atol=1e-4)
    half = torch.nn.functional.avg_pool2d(prob, 2)  # a 32x32 map tiling the same image
    np.testing.assert_allclose(soft_centroid(half, 64)[0].numpy(), [40.0, 15.0], atol=1e-4)


def test_changed_attributes():
    p = sample_scene(np.random.default_rng(3))
    other = next(c for c in COLORS if c not in (p.main.color, p.background))
    q = with_changes(p, color=other, background=other)
    assert changed_attributes(p, q) == ["color", "background"]
    assert changed_attributes(p, p) == []


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = EvaluatorConfig(widths=(8, 8, 8), hidden=16)
    net = EvaluatorNet(cfg).eval()
    path = save_evaluator(net, cfg, tmp_path / "ev.safetensors", extra={"note": 1})
    ev2 = load_evaluator(path)
    x = np.random.default_rng(0).random((3, 64, 64, 3)).astype(np.float32)
    a, b = Evaluator(net, cfg).predict(x), ev2.predict(x)
    np.testing.assert_allclose(a["color_prob"], b["color_prob"], atol=1e-6)
    np.testing.assert_allclose(a["mask"], b["mask"], atol=1e-6)


def test_score_edit_on_perfect_and_null_edits(ev):
    rng = np.random.default_rng(11)
    for _ in range(3):
        p = sample_scene(rng)
        new = next(c for c in ("blue", "yellow", "red") if c != p.main.color)
        q = with_changes(p, color=new)
        src, gt = render(p), render(q)
        perfect = score_edit(src.rgb, gt.rgb, source_params=p, target_params=q, source_mask=src.coverage > 0,
                             evaluator=ev)
        assert perfect["changed"] == ["color"]
        assert perfect["psnr_target"] == math.inf and perfect["ssim_target"] == pytest.approx(1.0)
        # a colour change leaves every pixel outside the object's coverage bit-identical
        assert perfect["psnr_outside"] == math.inf and perfect["ssim_outside"] == pytest.approx(1.0)
        assert perfect["reached"] == {"color": True}
        assert perfect["kept_fraction"] >= 0.8
        null = score_edit(src.rgb, src.rgb, source_params=p, target_params=q, evaluator=ev)
        assert null["reached"] == {"color": False} and not null["target_reached"]
        assert null["psnr_target"] < perfect["psnr_target"]


def test_training_batches_keep_labels_consistent_under_augmentation():
    from idsedit.mini.train_evaluator import TrainEvaluatorConfig, _batch, loss_fn, render_dataset

    data = render_dataset(12, seed=5, p_edit=0.5)
    for i in range(len(data["image"])):
        np.testing.assert_allclose(data["centroid"][i], true_centroid(data["mask"][i]), atol=1e-4)
    cfg = TrainEvaluatorConfig(noise_max=0.0, blur_prob=0.0)
    gen = torch.Generator().manual_seed(0)
    idx = np.arange(len(data["image"]))
    x, y = _batch(data, idx, gen, cfg)
    # after a random horizontal flip, the 32x32 mask target and the centroid still describe the same object
    # (2x2 pooling moves the centroid of partly covered cells by a few hundredths of a pixel at most)
    cen_from_mask = soft_centroid(y["mask32"], 64)
    np.testing.assert_allclose(cen_from_mask.numpy(), y["centroid"].numpy(), atol=0.05)
    flipped = ~np.isclose(y["centroid"][:, 0].numpy(), data["centroid"][:, 0])
    assert 0 < flipped.sum() < len(idx)
    ref = torch.from_numpy(data["image"]).permute(0, 3, 1, 2).float() / 255
    np.testing.assert_array_equal(x[flipped].numpy(), ref[flipped].flip(-1).numpy())
    # the loss is finite and its centroid term is zero for a perfect mask prediction
    out = {k: torch.zeros(len(idx), n) for k, n in (("color", 10), ("shape", 5), ("floor", 10), ("background", 10))}
    out["mask_logits"] = torch.logit(y["mask32"].clamp(1e-6, 1 - 1e-6))
    out["size"] = y["size"].clone()
    _, parts = loss_fn(out, y)
    assert parts["centroid"] < 1e-3 and parts["size"] == 0.0 and parts["color"] == pytest.approx(math.log(10))
