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
