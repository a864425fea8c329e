"""The scene benchmark's cameras, cases and statistics (idsedit.scene.evaluate)."""

import json
import math

import numpy as np
import pytest

from idsedit.scene.evaluate import (azimuth_offset, by_view, camera_tensors, paired, scene_cases, summarise)


def test_camera_tensors_match_the_multiview_writer(tmp_path):
    """The scoring cameras use exactly the matrices and focal length that write_multiview stores."""
    from idsedit.shapes import sample_scene, write_multiview
    from idsedit.shapes.multiview import orbit_cameras

    write_multiview(sample_scene(np.random.default_rng(0)), tmp_path, n_views=3, size=16)
    meta = json.loads((tmp_path / "transforms.json").read_text())
    c2w, intr, hw = camera_tensors(orbit_cameras(3), 16)
    assert hw == (16, 16)
    for k, fr in enumerate(meta["frames"]):
        np.testing.assert_allclose(c2w[k].numpy(), np.array(fr["transform_matrix"]), atol=1e-6)
        np.testing.assert_allclose(intr[k].numpy(), [meta["fl_x"], meta["fl_y"], meta["cx"], meta["cy"]], rtol=1e-6)


def test_azimuth_offset():
    assert [azimuth_offset(a) for a in (0, 45, 180, 225, 315, -90, 360)] == [0, 45, 180, 135, 45, 90, 0]


def test_scene_cases_share_one_scene_per_edit_family():
    from idsedit.evaluate.cases import make_case

    cases = scene_cases(2, families=("colour", "shape"))
    for i, c in enumerate(cases):
        ref = make_case("colour", 0, i)
        assert c.params == ref.source_params and c.edits["colour"][0] == ref.target_params
        q = c.edits["shape"][0]
        assert q.main.shape != c.params.main.shape and q.main.color == c.params.main.color
        assert c.edits["shape"][1] == ref.source_prompt          # same "{color} {shape}" caption of the source


def _row(scene, label, success, psnr, views=()):
    return {"scene": scene, "family": "colour", "label": label, "edit_success": success, "psnr_outside": psnr,
            "views": list(views)}


def test_summarise_and_paired_hand_computed():
    rows = [_row(0, "dds", 0.2, 15.0), _row(1, "dds", 0.4, 17.0), _row(0, "ids", 0.1, 16.0), _row(1, "ids", 0.2, 19.0)]
    s = summarise(rows, metrics=("edit_success", "psnr_outside"))
    assert s[("colour", "dds")]["n"] == 2
    assert s[("colour", "dds")]["psnr_outside"][0] == pytest.approx(16.0)
    d = paired(rows, "ids", "dds", "colour", metrics=("edit_success", "psnr_outside"))
    assert d["n"] == 2
    m, lo, hi = d["psnr_outside"]                         # differences +1 and +2
    assert m == pytest.approx(1.5) and 1.0 <= lo <= m <= hi <= 2.0
    assert d["edit_success"][0] == pytest.approx(-0.15)


def test_by_view_bins_and_difference_to_source():
    v = lambda el, az, s, p: {"elevation": el, "azimuth": az, "edit_success": s, "psnr_outside": p}
    rows = [_row(0, "source", 0.0, 20.0, [v(20, 90, 0.0, 20.0), v(20, 270, 0.0, 22.0)]),
            _row(0, "dds", 0.5, 18.0, [v(20, 90, 0.4, 18.0), v(20, 270, 0.6, 19.0)])]
    out = by_view(rows)
    cell = out[("colour", "dds", 20, 90.0)]               # azimuths 90 and 270 are both 90 degrees off 0
    assert cell["n"] == 1
    assert cell["edit_success"][0] == pytest.approx(0.5)
    assert cell["psnr_outside_vs_source"][0] == pytest.approx((18.0 + 19.0) / 2 - (20.0 + 22.0) / 2)
    assert math.isclose(out[("colour", "source", 20, 90.0)]["psnr_outside"][0], 21.0)


def test_judge_views_reads_the_edit_from_exact_renders():
    """The evaluator network judges exact renders at its own camera: the edited truth reaches the target colour
    and keeps shape, floor and background; the source truth does not reach it and keeps the rest."""
    from idsedit.mini.evaluator import load_evaluator
    from idsedit.scene.evaluate import eval_cameras, judge_views, truths_for_cameras

    case = scene_cases(1)[0]
    target = case.edits["colour"][0]
    t = truths_for_cameras(case.params, target, eval_cameras((20.0,), (0.0,)), 64)[0]
    src, trg = judge_views(load_evaluator(), [t.src_rgb, t.trg_rgb], case.params, target)
    assert (src["eval_reached"], src["eval_kept"]) == (0.0, 1.0)
    assert (trg["eval_reached"], trg["eval_kept"]) == (1.0, 1.0)


def _bench():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "scene_bench.py"
    spec = importlib.util.spec_from_file_location("scene_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _append_many(args):
    path, who, n = args
    bench = _bench()
    for k in range(n):
        bench._append_jsonl(path, {"who": who, "k": k, "pad": "x" * 200_000})   # > any pipe/page buffer


def test_bench_appends_from_two_processes_are_whole_rows(tmp_path):
    """Two bench processes sharing OUT/rows.jsonl (--scene-list) never interleave parts of rows."""
    import multiprocessing as mp

    path = tmp_path / "rows.jsonl"
    with mp.get_context("spawn").Pool(2) as pool:
        pool.map(_append_many, [(path, 0, 6), (path, 1, 6)])
    lines = path.read_text().splitlines()
    rows = [json.loads(line) for line in lines]          # every line parses: no torn or interleaved rows
    assert sorted((r["who"], r["k"]) for r in rows) == [(w, k) for w in (0, 1) for k in range(6)]


def test_bench_fit_config_defaults_to_the_fit_defaults():
    import argparse

    from idsedit.scene.fit import FitConfig

    bench = _bench()
    ns = bench.main.__globals__["argparse"].Namespace(fit_steps=0, holdout_every=7, fit_voxels=0, fit_depth=0.05,
                                                      fit_set=["lr_grid=0.05"])
    cfg = bench._fit_config(ns)
    assert cfg.steps == FitConfig().steps == 400 and cfg.holdout_every == 7 and cfg.lr_grid == 0.05
    assert cfg.env_init == "gray" and cfg.depth_weight == 0.05        # depth-supervised sources start gray
    ns.fit_depth = 0.0
    assert bench._fit_config(ns).env_init == FitConfig().env_init and bench._fit_config(ns).depth_weight == 0.0


def test_judge_views_skips_the_backdrop_where_no_view_shows_it():
    """From elevation 45 the backdrop is out of the frame (the truth's depth is finite everywhere): score_renders
    leaves it unjudged there, so an exact render keeps everything it can be judged on."""
    from idsedit.mini.evaluator import load_evaluator
    from idsedit.scene.evaluate import eval_cameras, score_renders, truths_for_cameras

    case = scene_cases(1)[0]
    target = case.edits["colour"][0]
    truths = truths_for_cameras(case.params, target, eval_cameras((20.0, 45.0), (0.0,)), 64)
    assert np.isinf(truths[0].trg_depth).any() and np.isfinite(truths[1].trg_depth).all()
    renders = [(t.trg_rgb, t.trg_depth, np.isfinite(t.trg_depth).astype(np.float32)) for t in truths]
    views = score_renders(renders, truths, evaluator=load_evaluator(), source=case.params, target=target)["views"]
    assert views[0]["eval_background"] == 1.0 and math.isnan(views[1]["eval_background"])
    assert [v["eval_reached"] for v in views] == [1.0, 1.0] and [v["eval_kept"] for v in views] == [1.0, 1.0]
    assert views[1]["eval_floor"] == 1.0 and views[1]["eval_shape"] == 1.0
