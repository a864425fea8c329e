"""The paper's five claims judged from rows (idsedit.evaluate.claims): each verdict on hand-made rows."""

import re

import numpy as np
import pytest

from idsedit.evaluate.claims import judge_claims, claims_markdown, paired

CASES = [f"c{i}" for i in range(12)]


def _rows(values: dict[str, dict[str, float]], noise: float = 0.1, seed: int = 0) -> list[dict]:
    """One row per case and label; metric = the given mean + small case noise (so CIs are narrow but not 0)."""
    rng = np.random.default_rng(seed)
    rows = []
    for label, metrics in values.items():
        for c in CASES:
            r = {"case": c, "label": label, "family": "colour" if c in CASES[:6] else "shape"}
            for k, v in metrics.items():
                r[k] = v if k in ("target_reached",) else v + noise * rng.standard_normal()
            rows.append(r)
    return rows


def _holding() -> dict:
    base = {"target_reached": 1.0, "kept_fraction": 0.9}
    return {
        "no-edit": {"invert_psnr": 33.0, "psnr_outside": 34.0, "target_reached": 0.0, "kept_fraction": 1.0},
        "dds": {**base, "psnr_outside": 20.0, "invert_psnr": 18.0, "invert_latent_psnr": 20.0},
        "cds": {**base, "psnr_outside": 21.0, "invert_psnr": 19.0, "invert_latent_psnr": 21.0},
        "ids": {**base, "psnr_outside": 23.0, "invert_psnr": 24.0, "invert_latent_psnr": 26.0},
        "ids[N=0]": {**base, "psnr_outside": 20.0},
        "ids[N=1]": {**base, "psnr_outside": 21.8},
        "ids[N=2]": {**base, "psnr_outside": 22.6},
        "ids[N=5]": {**base, "psnr_outside": 23.0},
        "ids[lambda=0.1]": {**base, "psnr_outside": 20.5},
        "ids[lambda=10]": {"target_reached": 0.0, "kept_fraction": 0.95, "psnr_outside": 28.0},
        "ids[steps=100]": {**base, "psnr_outside": 22.0},
        "dds[steps=100]": {**base, "psnr_outside": 21.0},
    }


def _verdicts(values: dict) -> list[str]:
    return [c["verdict"] for c in judge_claims(_rows(values), n_boot=300)]


def test_every_claim_holds_on_rows_made_to_hold():
    assert _verdicts(_holding()) == ["holds"] * 5


def test_paired_difference_and_direction():
    rows = _rows({"a": {"psnr_outside": 3.0}, "b": {"psnr_outside": 1.0}}, noise=0.0)
    p = paired(rows, "a", "b", "psnr_outside", n_boot=100)
    assert p["mean"] == pytest.approx(2.0) and p["n"] == len(CASES) and p["direction"] == "higher"
    assert paired(rows, "b", "a", "psnr_outside", n_boot=100)["direction"] == "lower"
    assert paired(rows, "a", "missing", "psnr_outside") is None


def test_identity_claim_fails_and_is_partly_true_when_ids_edits_less():
    v = _holding()
    v["ids"] = {**v["ids"], "psnr_outside": 19.0}              # worse than DDS outside the object
    assert _verdicts(v)[0] == "does not hold"
    v["ids"] = {**v["ids"], "psnr_outside": 20.5}              # above DDS, below CDS: one test is not shown
    assert _verdicts(v)[0] == "does not hold"
    v["ids"] = {**v["ids"], "psnr_outside": 23.0, "target_reached": 0.0}   # wins identity by not editing
    assert _verdicts(v)[0] == "partly"


def test_identity_claim_not_shown_when_the_ci_contains_zero():
    v = _holding()
    v["ids"] = {**v["ids"], "psnr_outside": 21.0}
    v["cds"] = {**v["cds"], "psnr_outside": 20.0}
    rows = _rows(v, noise=0.0)
    for r in rows:   # ids - dds: +1 on half the cases, -1 on the other half
        if r["label"] == "ids" and r["case"] in CASES[:6]:
            r["psnr_outside"] = 19.0
    assert judge_claims(rows, n_boot=300)[0]["verdict"] == "not shown"


def test_invertibility_claim_fails_when_dds_inverts_better():
    v = _holding()
    v["dds"] = {**v["dds"], "invert_psnr": 26.0}
    assert _verdicts(v)[1] == "does not hold"


def test_fpr_iterations_claims():
    v = _holding()
    v["ids[N=5]"] = {**v["ids[N=5]"], "psnr_outside": 25.0}   # two more iterations help: N = 3 does not suffice
    assert _verdicts(v)[2] == "does not hold"
    v = _holding()
    v["ids[N=0]"] = {**v["ids[N=0]"], "psnr_outside": 23.0}   # iterations change nothing: nothing to show
    assert _verdicts(v)[2] == "not shown"
    v = _holding()
    v["ids[N=1]"] = {**v["ids[N=1]"], "psnr_outside": 20.2}   # gains grow with N: not diminishing
    assert _verdicts(v)[2] == "partly"
    c = judge_claims(_rows(_holding()), n_boot=300)[2]
    assert "N 0->1: +1.8" in c["note"]


def test_lambda_claim_partly_when_editing_does_not_stop():
    v = _holding()
    v["ids[lambda=10]"] = {**v["ids[lambda=10]"], "target_reached": 1.0}
    assert _verdicts(v)[3] == "partly"
    v["ids[lambda=10]"] = {**v["ids[lambda=10]"], "psnr_outside": 18.0}
    assert _verdicts(v)[3] == "does not hold"


def test_steps_claim_and_missing_runs():
    v = _holding()
    v["ids[steps=100]"] = {**v["ids[steps=100]"], "psnr_outside": 18.0}
    assert _verdicts(v)[4] == "does not hold"
    v = {k: _holding()[k] for k in ("no-edit", "dds", "ids")}
    assert _verdicts(v)[2:] == ["not measured"] * 3


def test_markdown_names_each_claim_with_its_evidence():
    text = "\n".join(claims_markdown(judge_claims(_rows(_holding()), n_boot=300)))
    assert text.count("**") == 10 and "holds.**" in text
    m = re.search(r"test \(must be higher\): ids - dds, A->B->A PSNR: \+([0-9.]+) \[", text)
    assert m and float(m.group(1)) == pytest.approx(6.0, abs=0.1)
    assert "test (must not be higher): ids[N=5] - ids, PSNR outside" in text
    v = _holding()
    v["ids[lambda=10]"] = {**v["ids[lambda=10]"], "target_reached": 1.0}
    text = "\n".join(claims_markdown(judge_claims(_rows(v), n_boot=300)))
    assert "secondary (must be lower): ids[lambda=10] - ids[lambda=0.1], target reached" in text
    assert "target reached: +0.00 [+0.00, +0.00] pp (n = 12) - not shown" in text


def test_identity_claim_notes_the_difference_by_family():
    v = _holding()
    rows = _rows(v, noise=0.0)
    for r in rows:
        if r["label"] == "ids" and r["family"] == "shape":
            r["target_reached"] = 0.0
    note = judge_claims(rows, n_boot=100)[0]["note"]
    assert note == "ids - dds by family (PSNR outside dB / target reached pp, n): colour +3.00 / +0 (6), shape +3.00 / -100 (6)"


def test_identity_context_on_the_cases_both_runs_edited():
    v = _holding()
    rows = _rows(v, noise=0.0)
    for r in rows:   # DDS misses the target on the first 4 cases
        if r["label"] == "dds" and r["case"] in CASES[:4]:
            r["target_reached"] = 0.0
    ctx = judge_claims(rows, n_boot=100)[0]["context"]
    first = ctx[0]
    assert (first["b"], first["metric"], first["n"]) == ("dds", "psnr_outside", len(CASES) - 4)
    assert first["mean"] == pytest.approx(3.0) and "both reached" in first["subset"]
    assert "on the cases both reached the target" in "\n".join(claims_markdown(judge_claims(rows, n_boot=100)))
