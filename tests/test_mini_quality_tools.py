"""Measurement tools of the mini prior: held-out denoising error by t bucket, per-attribute text-to-image accuracy."""

import numpy as np
import pytest

from idsedit.mini import BUNDLED_DIR
from idsedit.mini.denoise_error import T_BUCKETS, by_bucket, denoise_error, draws, heldout_renders, load_model

bundled = pytest.mark.skipif(not (BUNDLED_DIR / "model_index.json").exists(), reason="no bundled mini prior")


def test_draws_cover_every_bucket_and_are_fixed():
    t, eps = draws(5, per_bucket=2, seed=1)
    assert t.shape == (5, 10) and eps.shape == (5, 10, 4, 16, 16)
    for b, (lo, hi) in enumerate(zip(T_BUCKETS, T_BUCKETS[1:])):
        assert ((t[:, 2 * b:2 * b + 2] >= lo) & (t[:, 2 * b:2 * b + 2] < hi)).all()
    t2, eps2 = draws(5, per_bucket=2, seed=1)
    assert (t == t2).all() and (eps == eps2).all()


@bundled
def test_denoise_error_identity_and_ordering():
    pipe = load_model(BUNDLED_DIR)
    images, caps, elev = heldout_renders(4, "multiview")
    assert images.shape == (4, 64, 64, 3) and len(caps) == 4 and elev.shape == (4,)
    t, eps = draws(4, per_bucket=1)
    out = denoise_error(pipe, images, caps, t, eps)
    ab = pipe.scheduler.alphas_cumprod.double().numpy()[t]
    # z0_hat - z0 = -sqrt((1 - ab) / ab) (eps_hat - eps): the two errors are tied exactly
    np.testing.assert_allclose(out["latent_err"] ** 2, (1 - ab) / ab * out["eps_mse"], rtol=2e-3)
    res = by_bucket(t, out)
    assert list(res) == [f"{lo}-{hi}" for lo, hi in zip(T_BUCKETS, T_BUCKETS[1:])]
    assert res["0-100"]["pixel_psnr"] > res["700-1000"]["pixel_psnr"] + 3.0


def test_attribute_prompts_follow_the_world_rules():
    from idsedit.mini.quality import attribute_prompts

    pairs = attribute_prompts(40, seed=2)
    assert len(pairs) == 40
    for text, d in pairs:
        assert {"color", "shape"} <= set(d) and d.get("floor") != d["color"]
        if "floor" in d and "background" in d:
            assert d["background"] != d["floor"]
    assert sum("floor" in d for _, d in pairs) == 20 and sum("background" in d for _, d in pairs) == 20


def test_attribute_accuracy_on_ground_truth_renders():
    from idsedit.mini.evaluator import DEFAULT_WEIGHTS, load_evaluator
    from idsedit.mini.quality import attribute_accuracy
    from idsedit.shapes import render_batch, sample_scene
    from idsedit.shapes.captions import attributes

    if not DEFAULT_WEIGHTS.is_file():
        pytest.skip("no shipped evaluator")
    rng = np.random.default_rng(99)
    scenes = [sample_scene(rng) for _ in range(24)]
    ims = np.clip(np.round(render_batch(scenes) * 255), 0, 255).astype(np.uint8)
    named = []
    for i, s in enumerate(scenes):  # name colour+shape always, the floor for even i, the background for i % 3 == 0
        a = attributes(s)
        d = {"color": a["color"], "shape": a["shape"]}
        if i % 2 == 0:
            d["floor"] = a["floor"]
        if i % 3 == 0:
            d["background"] = a["background"]
        named.append(d)
    ev = load_evaluator()
    res = attribute_accuracy(ev, ims, named)
    assert res["color_acc"] == res["shape_acc"] == res["floor_acc"] == res["background_acc"] == 1.0
    assert (res["floor_n"], res["background_n"], res["n"]) == (12, 8, 24) and res["all_named_acc"] == 1.0
    wrong = [dict(d, color="gray" if d["color"] != "gray" else "red") if i < 6 else d for i, d in enumerate(named)]
    res = attribute_accuracy(ev, ims, wrong)
    assert res["color_acc"] == pytest.approx(18 / 24) and res["all_named_acc"] == pytest.approx(18 / 24)
    bare = [{"color": d["color"], "shape": d["shape"]} for d in named[:3]]   # no floor or background named anywhere
    res = attribute_accuracy(ev, ims[:3], bare)
    assert res["floor_acc"] is None and res["floor_n"] == 0 and res["all_named_acc"] == 1.0


def test_attribute_samples_are_saved_and_judged_again_without_resampling(tmp_path):
    """--samples: the first call samples and saves, the second reads the same array back without a pipeline; a file
    of other prompts is refused with a user error."""
    from types import SimpleNamespace

    from idsedit.errors import IdseditError
    from idsedit.mini.quality import attribute_samples

    calls = []

    def fake_pipe(prompts, num_inference_steps, guidance_scale, generator, output_type):
        calls.append((list(prompts), num_inference_steps, guidance_scale))
        seeds = [int(g.initial_seed()) for g in generator]
        ims = np.stack([np.full((8, 8, 3), (len(p) + 3 * s) / 100.0, np.float32) for p, s in zip(prompts, seeds)])
        return SimpleNamespace(images=ims)

    path = tmp_path / "s.npz"
    prompts = ["a red cube", "a blue sphere on a gray floor"]
    a = attribute_samples(lambda: fake_pipe, prompts, 3, 5, 7.5, path)
    assert a.shape == (2, 3, 8, 8, 3) and a.dtype == np.uint8 and len(calls) == 1
    assert calls[0] == ([prompts[0]] * 3 + [prompts[1]] * 3, 5, 7.5)
    assert a[1, 2, 0, 0, 0] == round((len(prompts[1]) + 6) / 100.0 * 255)  # prompt 1, seed 2
    b = attribute_samples(lambda: pytest.fail("must not sample again"), prompts, 3, 5, 7.5, path)
    assert (a == b).all()
    with pytest.raises(IdseditError, match="other prompts"):
        attribute_samples(lambda: fake_pipe, prompts[:1], 3, 5, 7.5, path)
    with pytest.raises(IdseditError, match="other prompts"):
        attribute_samples(lambda: fake_pipe, prompts, 3, 50, 7.5, path)
