"""`idsedit compare`: two evaluations of the same cases, paired (B - A with CIs), from folders, jsonl or csv."""

import json

import pytest

from idsedit.cli import main
from idsedit.errors import IdseditError
from idsedit.evaluate.compare import compare_rows, load_rows, markdown
from idsedit.evaluate.report import rows_csv


def _rows(shift=0.0, reached=True, seed=0):
    out = []
    for i in range(6):
        for lab, base in (("dds", 18.0), ("ids", 20.0)):
            out.append({"case": f"colour-0-{i:03d}", "family": "colour", "label": lab, "seed": seed + i,
                        "source_prompt": "a red cube", "target_prompt": "a blue cube", "steps": 200,
                        "psnr_outside": base + i + shift, "target_reached": reached, "identity_kept": True,
                        "kept_fraction": 0.8})
    return out


def test_constant_shift_is_found_exactly():
    res = compare_rows(_rows(), _rows(shift=1.5, reached=False), n_boot=200)
    assert set(res) == {"dds", "ids"}
    d = res["ids"]["psnr_outside"]
    assert d["mean"] == pytest.approx(1.5) and d["lo"] == pytest.approx(1.5) and d["hi"] == pytest.approx(1.5)
    assert d["n"] == 6 and d["a"] == pytest.approx(22.5) and d["b"] == pytest.approx(24.0)
    assert res["dds"]["target_reached"]["mean"] == pytest.approx(-1.0)
    md = markdown(res, "old", "new")
    assert "| ids | 6 |" in md and "+1.50 [+1.50, +1.50] *" in md and "-100.0 [-100.0, -100.0] pp *" in md


def test_only_shared_cases_and_labels_are_paired():
    b = [r for r in _rows(shift=1.0) if not (r["label"] == "dds" and r["case"].endswith("5"))]
    b.append({**b[0], "label": "cds"})
    res = compare_rows(_rows(), b, n_boot=50)
    assert res["dds"]["psnr_outside"]["n"] == 5 and res["ids"]["psnr_outside"]["n"] == 6 and "cds" not in res


def test_different_edits_under_one_name_are_refused():
    with pytest.raises(IdseditError, match="different edit"):
        compare_rows(_rows(), _rows(seed=100))


def test_cli_reads_folders_jsonl_and_csv(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    (b / "rows.csv").write_text(rows_csv(_rows(shift=-2.0)))
    assert load_rows(b)[0]["target_reached"] is True
    assert main(["compare", str(a), str(b / "rows.csv"), "--json", str(tmp_path / "d.json"), "--n-boot", "50"]) == 0
    out = capsys.readouterr().out
    assert "| dds | 6 |" in out and "-2.00 [-2.00, -2.00] *" in out
    saved = json.loads((tmp_path / "d.json").read_text())
    assert saved["differences"]["ids"]["psnr_outside"]["mean"] == pytest.approx(-2.0)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "nope"), str(tmp_path)]) == 1
    assert "no rows.jsonl or rows.csv" in capsys.readouterr().err
    a = tmp_path / "a.jsonl"
    a.write_text(json.dumps(_rows()[0]) + "\n")
    c = tmp_path / "c.jsonl"
    c.write_text(json.dumps({**_rows()[0], "case": "other"}) + "\n")
    assert main(["compare", str(a), str(c)]) == 1
    assert "share no (case, run) pair" in capsys.readouterr().err
