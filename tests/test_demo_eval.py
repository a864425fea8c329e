"""The demo and the shapes-world evaluation run end to end (reduced steps, tiny random model) and score honestly."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from conftest import TINY_MODEL


def test_colour_cases_change_only_the_colour():
    from idsedit.evaluate import colour_edit_cases
    from idsedit.mini.evaluator import changed_attributes

    cases = colour_edit_cases(5, seed=1)
    assert len({c.name for c in cases}) == 5
    for c in cases:
        assert changed_attributes(c.source_params, c.target_params) == ["color"]
        assert c.source_prompt.split()[-1] == c.target_prompt.split()[-1]  # same shape word
        assert c.source_prompt != c.target_prompt


def test_summary_rates_are_hand_checkable():
    from idsedit.evaluate import format_table, summarize

    base = {"psnr_outside": 30.0, "ssim_outside": 0.9, "psnr_target": 20.0, "ssim_target": 0.8, "seconds": 1.0}
    rows = [dict(base, method="dds", target_reached=True, identity_kept=False, kept={"shape": False, "size": True}),
            dict(base, method="dds", target_reached=False, identity_kept=True, kept={"shape": True, "size": True}),
            dict(base, method="ids", target_reached=True, identity_kept=True, kept={"shape": True, "size": True})]
    s = summarize(rows)
    assert s["dds"]["target_reached"] == 0.5 and s["dds"]["kept_shape"] == 0.5 and s["dds"]["kept_size"] == 1.0
    assert s["ids"]["identity_kept"] == 1.0
    assert "50%" in format_table(s)


def test_demo_runs_end_to_end_in_reduced_mode(tmp_path, capsys):
    from idsedit import demo

    p = argparse.ArgumentParser()
    demo.add_arguments(p)
    args = p.parse_args(["--steps", "2", "--model", str(TINY_MODEL), "--out", str(tmp_path), "--quiet"])
    assert demo.cli_main(args) == 0
    rec = json.loads((tmp_path / "demo.json").read_text())
    assert [r["method"] for r in rec["rows"]] == ["dds", "ids"]
    assert rec["case"]["source_prompt"] == "a red cube" and rec["case"]["target_prompt"] == "a blue cube"
    from PIL import Image

    assert Image.open(tmp_path / "demo.png").size == (4 * 128, 14 + 128)
    assert "target_reached" in capsys.readouterr().out


def test_demo_rejects_bad_attributes():
    from idsedit.demo import demo_case
    from idsedit.errors import IdseditError

    with pytest.raises(IdseditError, match="unknown shape 'pyramid'"):
        demo_case("pyramid", "red", "blue", 0)
    with pytest.raises(IdseditError, match="nothing to edit"):
        demo_case("cube", "red", "red", 0)


def test_demo_scene_keeps_the_world_rule_object_colour_is_not_the_floor_colour():
    from idsedit.demo import demo_case
    from idsedit.shapes import sample_scene
    import numpy as np

    assert sample_scene(np.random.default_rng(0)).floor_color == "red"      # seed 0's floor: the default cube's colour
    case = demo_case("cube", "red", "blue", 0)
    assert case.source_params.floor_color == case.target_params.floor_color == "yellow"   # first of COLORS not red/blue/orange
    assert case.source_params.main.color == "red" and case.target_params.main.color == "blue"
    assert case.source_params.background == sample_scene(np.random.default_rng(0)).background
    kept = demo_case("cube", "green", "blue", 0)                           # no clash: the seed's scene as drawn
    assert kept.source_params.floor_color == "red"
