"""idsedit eval: cases with ground truth, paired draws, cost counting, runs, crash-safe rows, resume, end to end."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from conftest import TINY_MODEL
from idsedit.errors import IdseditError

EXPECTED_CHANGE = {"colour": {"color"}, "shape": {"shape"}, "size": {"size"}, "floor": {"floor"},
                   "background": {"background"}, "colour+shape": {"color", "shape"}}


def test_cases_change_exactly_their_family_and_prompts_name_it():
    from idsedit.evaluate.cases import FAMILIES, make_cases
    from idsedit.mini.evaluator import changed_attributes
    from idsedit.shapes import attributes, parse_caption

    cases = make_cases(FAMILIES, 4, seed=3)
    assert len(cases) == 24 and len({c.name for c in cases}) == 24 and len({c.seed for c in cases}) == 24
    assert [c.attribute for c in cases[:6]] == list(FAMILIES)          # interleaved: a partial run covers all
    for c in cases:
        assert set(changed_attributes(c.source_params, c.target_params)) == EXPECTED_CHANGE[c.attribute], c.name
        src, trg = parse_caption(c.source_prompt), parse_caption(c.target_prompt)
        assert src == {k: v for k, v in attributes(c.source_params).items() if k in src}
        assert trg == {k: v for k, v in attributes(c.target_params).items() if k in trg}
        named = {"color" if k == "color" else k for k in src}
        assert EXPECTED_CHANGE[c.attribute] <= named                       # the prompt names what changes
        assert c.target_params.floor_color != c.target_params.main.color
        assert c.target_params.background != c.target_params.floor_color
    again = make_cases(FAMILIES, 4, seed=3)
    assert [(c.name, c.seed, c.source_prompt, c.target_prompt) for c in again] == \
           [(c.name, c.seed, c.source_prompt, c.target_prompt) for c in cases]
    with pytest.raises(IdseditError, match="unknown edit family"):
        make_cases(["texture"], 1)


def test_around_view_cases_are_the_default_cases_seen_from_another_camera():
    """--view around: the same scenes, edits, prompts and seeds as the default view, seen from a camera around the
    scene (both renders from that one camera, the same distractors); the edit still changes exactly its family,
    and a background edit shows the background."""
    from idsedit.evaluate.cases import FAMILIES, make_cases
    from idsedit.mini.evaluator import changed_attributes
    from idsedit.shapes import DEFAULT_CAMERA, render
    from idsedit.shapes.views import background_visible

    flat = make_cases(FAMILIES, 2, seed=5)
    around = make_cases(FAMILIES, 2, seed=5, view="around")
    assert [c.name + "-around" for c in flat] == [c.name for c in around]
    assert [(c.seed, c.source_prompt, c.target_prompt, c.attribute) for c in flat] == \
           [(c.seed, c.source_prompt, c.target_prompt, c.attribute) for c in around]
    assert all(c.source_params.camera == DEFAULT_CAMERA for c in flat)
    for d, c in zip(flat, around):
        cam = c.source_params.camera
        assert cam != DEFAULT_CAMERA and c.target_params.camera == cam
        assert c.source_params.main == d.source_params.main and c.target_params.main == d.target_params.main
        assert c.source_params.objects[1:] == c.target_params.objects[1:]
        assert set(c.source_params.objects[1:]) <= set(d.source_params.objects[1:])
        assert set(changed_attributes(c.source_params, c.target_params)) == EXPECTED_CHANGE[c.attribute], c.name
        if c.attribute == "background":
            assert background_visible(cam)
    a, b = render(around[0].source_params, 32), render(around[0].target_params, 32)   # colour: only the object
    untouched = (a.coverage == 0) & (b.coverage == 0)
    assert a.mask.any() and untouched.mean() > 0.3 and np.abs(a.rgb - b.rgb)[untouched].max() < 1e-6
    assert np.abs(a.rgb - b.rgb)[a.mask].max() > 0.05
    assert [c.name for c in make_cases(["colour"], 2, seed=5, view="around")] == [around[0].name, around[6].name]
    with pytest.raises(IdseditError, match="unknown view"):
        make_cases(["colour"], 1, view="top")


def _draws(prior, method_variant, seed, steps=3, sampler_cls=None):
    from idsedit.edit2d import edit_latents, image_to_tensor
    from idsedit.evaluate.cases import make_case, render_image
    from idsedit.evaluate.runner import PairedSampler
    from idsedit.variants import variant_config

    case = make_case("colour", 0, 0)
    z = prior.encode(image_to_tensor(render_image(case.source_params, prior.resolution)))
    cfg = variant_config(method_variant, steps=steps, seed=seed)
    sampler = (sampler_cls or PairedSampler)(seed)
    seen = []
    edit_latents(prior, z, prior.encode_text(case.source_prompt), prior.encode_text(case.target_prompt), cfg,
                 sampler=sampler, callback=lambda i, zt, draw, out: seen.append((int(draw.t), draw.noise.clone())))
    return seen


def test_pairing_gives_every_method_the_same_t_and_noise(tiny_prior):
    from idsedit.rng import Sampler

    ref = _draws(tiny_prior, "dds", 11)
    for v in ("sds", "cds", "pds", "ids", "ids+cut"):        # CDS and PDS draw extra numbers every step
        other = _draws(tiny_prior, v, 11)
        assert [t for t, _ in other] == [t for t, _ in ref], v
        for (_, a), (_, b) in zip(other, ref):
            assert torch.equal(a, b), v
    # with one shared stream (the loop's default sampler) CDS's patch draws would shift DDS's later draws
    plain_dds = _draws(tiny_prior, "dds", 11, sampler_cls=Sampler.seeded)
    plain_cds = _draws(tiny_prior, "cds", 11, sampler_cls=Sampler.seeded)
    assert not all(torch.equal(a, b) for (_, a), (_, b) in zip(plain_dds, plain_cds))


def test_authors_timestep_grid():
    from idsedit.evaluate.methods import make_run
    from idsedit.evaluate.runner import PairedSampler
    from idsedit.edit2d import EditConfig

    run = make_run("pds@authors", EditConfig())
    assert run.config.method == "pds" and run.config.distill.guidance == 100.0 and run.t_grid == (2, 1, 10, 490)
    s = PairedSampler(0, run.t_grid)
    ts = [int(s.randint(run.config.t_min, run.config.t_max)) for _ in range(4000)]
    s.randn_like(torch.zeros(1))  # keeps the step stream's order: t, then eps
    assert min(ts) == 21 and max(ts) == 979 and all(t % 2 == 1 for t in ts)   # 2 k + 1, k in [10, 490)


def test_unet_forward_equivalents(tiny_prior):
    """FE = samples + 2 x backward samples, per step: DDS 4, CDS 4 + 2 x 1, IDS exact 10 + 2 x 6, IDS-JF 10."""
    from idsedit.edit2d import image_to_tensor, edit_latents
    from idsedit.evaluate.cases import make_case, render_image
    from idsedit.evaluate.runner import PairedSampler, count_unet
    from idsedit.variants import variant_config

    case = make_case("colour", 0, 0)
    z = tiny_prior.encode(image_to_tensor(render_image(case.source_params, tiny_prior.resolution)))
    cs, ct = tiny_prior.encode_text(case.source_prompt), tiny_prior.encode_text(case.target_prompt)
    expected = {"sds": (2, 0), "dds": (4, 0), "cds": (4, 1), "ids": (10, 6), "ids-jf": (10, 0), "ids+cut": (10, 7)}
    for v, (samples, back) in expected.items():
        with tiny_prior.counting() as calls, count_unet(tiny_prior.unet) as cost:
            edit_latents(tiny_prior, z, cs, ct, variant_config(v, steps=2), sampler=PairedSampler(0))
        assert (cost.samples, cost.backward_samples) == (2 * samples, 2 * back), v
        assert (cost.forward, cost.samples, cost.backward) == (calls.forward, calls.samples, calls.backward), v
        assert cost.forward_equivalents == 2 * (samples + 2 * back)
    assert not tiny_prior.unet._forward_pre_hooks                            # the hook is removed


def test_runs_authors_settings_and_ablations():
    from idsedit.edit2d import EditConfig
    from idsedit.evaluate.methods import ALL_METHODS, build_runs, parse_methods
    from idsedit.variants import VARIANTS

    assert parse_methods("all") == list(VARIANTS) + ["pds@authors", "sds@authors"] == list(ALL_METHODS)
    runs = build_runs(["dds", "IDS-JF", "sds@authors"], EditConfig(steps=200),
                      {"fpr_iters": [3, 0, 5], "steps": [100], "guidance": [7.5, 15]}, ["dds", "ids-jf"])
    labels = [r.label for r in runs]
    assert labels == ["dds", "ids-jf", "sds@authors", "dds[steps=100]", "dds[w=15]", "ids-jf[N=0]", "ids-jf[N=5]",
                      "ids-jf[steps=100]", "ids-jf[w=15]"]  # N=3 and w=7.5 equal the base, N on DDS: skipped
    r = {x.label: x for x in runs}
    assert r["ids-jf[N=0]"].config.distill.fpr_mode == "jacobian-free" and r["ids-jf[N=0]"].config.distill.fpr_iters == 0
    assert r["dds[steps=100]"].config.steps == 100 and r["dds[steps=100]"].base == "dds"
    assert r["sds@authors"].config.distill.guidance == 100.0 and r["sds@authors"].config.t_min == 20
    prod = build_runs(["ids"], EditConfig(), {"steps": [50], "fpr_iters": [1]}, product=True)
    assert [x.label for x in prod] == ["ids", "ids[N=1]", "ids[steps=50]", "ids[steps=50,N=1]"]
    with pytest.raises(IdseditError, match="no authors' settings"):
        build_runs(["dds@authors"], EditConfig())


def test_drift_remedies_are_ablations_of_every_method():
    from idsedit.edit2d import EditConfig
    from idsedit.evaluate.methods import build_runs
    from idsedit.evaluate.presets import PRESETS

    pre = PRESETS["drift"]
    runs = build_runs(pre.methods.split(","), EditConfig(), pre.ablations, pre.ablate_methods.split(","))
    r = {x.label: x for x in runs}
    assert "cds" in r and not any(lab.startswith("cds[") for lab in r)   # CDS edits as DDS on the mini prior
    for m in ("dds", "pds", "ids", "ids-jf"):
        assert r[f"{m}[lr=cosine]"].config.lr_schedule == "cosine" and r[f"{m}[lr=cosine]"].base == m
        assert r[f"{m}[t_anneal=300]"].config.t_anneal_to == 300
        assert r[f"{m}[steps=100]"].config.steps == 100 and r[f"{m}[w=3]"].config.distill.guidance == 3.0
    assert r["ids-jf[lr=cosine]"].config.distill.fpr_mode == "jacobian-free"
    assert not pre.invert and "no-edit[lr=cosine]" not in r
    assert build_runs(["dds"], EditConfig(), {"lr_schedule": ["constant"]}) == build_runs(["dds"], EditConfig())


def test_rows_file_is_crash_safe(tmp_path):
    from idsedit.evaluate.runner import append_row, read_rows

    p = tmp_path / "rows.jsonl"
    append_row(p, {"case": "a", "v": 1})
    append_row(p, {"case": "b", "v": 2.5})
    with open(p, "a") as f:
        f.write('{"case": "c", "v"')                        # a write cut short by a crash
    assert [r["case"] for r in read_rows(p)] == ["a", "b"]
    assert p.read_text().endswith("2.5}\n")                 # the torn tail is cut off ...
    append_row(p, {"case": "c", "v": 3})
    assert [r["case"] for r in read_rows(p)] == ["a", "b", "c"]  # ... so appending continues cleanly
    p.write_text('{"case": "a"}\nnot json\n{"case": "b"}\n')
    with pytest.raises(IdseditError, match="line 2 is not valid JSON"):
        read_rows(p)


QUALITY = ("target_reached", "identity_kept", "kept_fraction", "psnr_outside", "psnr_target", "invert_psnr",
           "invert_latent_psnr", "fe")


def _small_eval(prior, out, on_row=None, log=None):
    from idsedit.edit2d import EditConfig
    from idsedit.evaluate import build_runs, make_cases, run_evaluation

    cases = make_cases(["colour", "shape"], 2, seed=1)
    runs = build_runs(["dds", "ids", "pds@authors"], EditConfig(steps=2))
    return run_evaluation(prior, cases, runs, out, progress=False, on_row=on_row, trace_every=1, log=log)


def test_resume_after_interruption_gives_the_same_table(tiny_prior, tmp_path):
    from idsedit.evaluate.report import summarize

    full = _small_eval(tiny_prior, tmp_path / "full")
    assert len(full) == 12 and all(r["fe"] > 0 for r in full)

    done = []

    def interrupt(row):
        done.append(row["key"])
        if len(done) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _small_eval(tiny_prior, tmp_path / "resumed", on_row=interrupt)
    assert len((tmp_path / "resumed" / "rows.jsonl").read_text().splitlines()) == 5
    redone, said = [], []
    resumed = _small_eval(tiny_prior, tmp_path / "resumed", on_row=lambda r: redone.append(r["key"]), log=said.append)
    assert said == [f"resuming: 5 of 12 edits are already in {tmp_path / 'resumed'}, skipping them"]
    assert len(redone) == 7 and not set(redone) & set(done)           # finished edits are skipped
    assert [r["key"] for r in resumed] == [r["key"] for r in full]
    for a, b in zip(full, resumed):
        for k in QUALITY:
            assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-9), (a["key"], k)
    sa, sb = summarize(full, n_boot=100), summarize(resumed, n_boot=100)
    for label in sa:
        for k in QUALITY:
            assert sa[label][k] == pytest.approx(sb[label][k], rel=1e-6, abs=1e-9)

    from idsedit.edit2d import EditConfig
    from idsedit.evaluate import build_runs, make_cases, run_evaluation

    with pytest.raises(IdseditError, match="other settings"):      # a different run into the same folder
        run_evaluation(tiny_prior, make_cases(["colour"], 1, seed=1), build_runs(["dds"], EditConfig(steps=3)),
                       tmp_path / "resumed", progress=False)


def test_shards_split_the_work_and_merge_into_the_unsharded_table(tiny_prior, tmp_path):
    """Two shards of the same evaluation edit disjoint blocks into their own rows files; the unsharded run then
    edits nothing, merges them into rows.jsonl in plan order, and the rows equal a one-process run's."""
    from idsedit.edit2d import EditConfig
    from idsedit.evaluate import build_runs, make_cases, run_evaluation
    from idsedit.evaluate.runner import parse_shard, read_rows

    cases = make_cases(["colour", "shape"], 2, seed=1)
    runs = build_runs(["dds", "ids"], EditConfig(steps=2))
    kw = dict(progress=False, batch=2)
    full = run_evaluation(tiny_prior, cases, runs, tmp_path / "one", **kw)
    out = tmp_path / "sharded"
    a = run_evaluation(tiny_prior, cases, runs, out, shard=parse_shard("1/2"), **kw)
    b = run_evaluation(tiny_prior, cases, runs, out, shard=parse_shard("2/2"), **kw)
    assert len(a) == len(b) == 4 and not {r["key"] for r in a} & {r["key"] for r in b}
    assert {r["case"] for r in a} == {c.name for c in cases[:2]}       # blocks of 2: shard 1 has block 0
    assert sorted(p.name for p in out.glob("rows*.jsonl")) == ["rows.shard1of2.jsonl", "rows.shard2of2.jsonl"]
    redone, said = [], []
    merged = run_evaluation(tiny_prior, cases, runs, out, on_row=redone.append, log=said.append, **kw)
    assert redone == [] and said[-1] == f"merged 8 rows of the shard files into {out / 'rows.jsonl'}"
    assert [p.name for p in out.glob("rows*.jsonl")] == ["rows.jsonl"]
    assert [r["key"] for r in read_rows(out / "rows.jsonl")] == [r["key"] for r in full] == [r["key"] for r in merged]
    for x, y in zip(full, merged):
        for k in QUALITY:
            assert x[k] == pytest.approx(y[k], rel=1e-6, abs=1e-9), (x["key"], k)
    for bad in ("2", "0/2", "3/2", "a/b"):
        with pytest.raises(IdseditError, match="--shard"):
            parse_shard(bad)


def test_a_narrower_run_merging_shards_keeps_the_other_runs_rows(tiny_prior, tmp_path):
    """Shards of dds+ids, then an unsharded run of dds only over the same folder: it reports dds, and the ids rows
    move into rows.jsonl too instead of being deleted with the shard files (a later dds+ids run resumes them)."""
    from idsedit.edit2d import EditConfig
    from idsedit.evaluate import build_runs, make_cases, run_evaluation
    from idsedit.evaluate.runner import parse_shard, read_rows

    cases = make_cases(["colour"], 2, seed=1)
    runs = build_runs(["dds", "ids"], EditConfig(steps=1))
    out, kw = tmp_path / "e", dict(progress=False, batch=1)
    for i in ("1/2", "2/2"):
        run_evaluation(tiny_prior, cases, runs, out, shard=parse_shard(i), **kw)
    dds_only = run_evaluation(tiny_prior, cases, runs[:1], out, **kw)
    assert [r["label"] for r in dds_only] == ["dds", "dds"]
    kept = read_rows(out / "rows.jsonl")
    assert [r["key"] for r in kept][:2] == [r["key"] for r in dds_only] and len(kept) == 4
    redone = []
    run_evaluation(tiny_prior, cases, runs, out, on_row=redone.append, **kw)
    assert redone == []


def test_rows_name_the_model_by_its_weights(tmp_path):
    """A retrained model in the same folder never resumes the old rows; the same weights resume from any path."""
    import shutil
    from types import SimpleNamespace

    from idsedit.evaluate.runner import model_identity

    a = tmp_path / "a"
    (a / "unet").mkdir(parents=True)
    (a / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights-1")
    (a / "model_index.json").write_text("{}")
    shutil.copytree(a, tmp_path / "b")
    ida, idb = model_identity(SimpleNamespace(name=str(a))), model_identity(SimpleNamespace(name=str(tmp_path / "b")))
    assert ida == idb and ida.startswith("weights:")
    (a / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights-2")
    assert model_identity(SimpleNamespace(name=str(a))) != idb
    assert model_identity(SimpleNamespace(name="org/model")) == "org/model"


def test_ablations_on_a_case_subset_and_without_inversion(tiny_prior, tmp_path):
    from idsedit.edit2d import EditConfig
    from idsedit.evaluate import build_runs, make_cases, run_evaluation
    from idsedit.evaluate.methods import limit_ablations

    cases = make_cases(["colour", "shape"], 2, seed=1)
    runs = build_runs(["dds", "ids"], EditConfig(steps=2), {"fpr_iters": [1], "steps": [1]}, ["ids"])
    runs = limit_ablations(runs, cases, per_family=1, invert_settings=["fpr_iters"])
    first = {next(c.name for c in cases if c.attribute == a) for a in ("colour", "shape")}
    r = {x.label: x for x in runs}
    assert r["dds"].cases is None and r["dds"].invert and r["ids"].cases is None
    assert r["ids[N=1]"].cases == r["ids[steps=1]"].cases == first
    assert r["ids[N=1]"].invert and not r["ids[steps=1]"].invert
    rows = run_evaluation(tiny_prior, cases, runs, tmp_path, progress=False, batch=2)
    got = {(x["case"], x["label"]): x for x in rows}
    assert len(rows) == 4 + 4 + 2 + 2
    assert {c for c, lab in got if lab == "ids[N=1]"} == first
    assert all(x.get("invert_psnr") is not None for x in rows if x["label"] != "ids[steps=1]")
    assert all(x.get("invert_psnr") is None for x in rows if x["label"] == "ids[steps=1]")
    only_dds = {x.label: x for x in limit_ablations(runs, cases, 1, ["fpr_iters"], invert_methods=["dds"])}
    assert only_dds["dds"].invert and not only_dds["ids"].invert and only_dds["ids[N=1]"].invert


def _eval_args(*argv):
    from idsedit import evaluate

    p = argparse.ArgumentParser()
    evaluate.add_arguments(p)
    return p.parse_args(list(argv))


OUTPUTS = ("rows.jsonl", "rows.csv", "summary.md", "summary.json", "grid.png", "metrics.png", "drift.png",
           "residual_vs_t.png", "ablations.png", "frontier.png", "run.json")


def test_quick_preset_end_to_end_writes_every_output(tmp_path, capsys):
    """The quick preset on the tiny model (every method, 6 cases, 2 steps, A->B->A, ablations, every plot): about
    25 s of CPU, because it is the whole command once (the issue asks for exactly this run in CI)."""
    from idsedit import evaluate
    from idsedit.evaluate.methods import ALL_METHODS

    out = tmp_path / "q"
    assert evaluate.cli_main(_eval_args("--model", str(TINY_MODEL), "--device", "cpu", "--dtype", "fp32",
                                        "--out", str(out), "--quiet")) == 0
    for name in OUTPUTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    rows = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    labels = list(summary["summary"])
    assert labels[:1 + len(ALL_METHODS)] == ["no-edit", *ALL_METHODS] and "ids[N=1]" in labels
    assert "dds[steps=1]" in labels and "no-edit[steps=1]" not in labels
    noop = summary["summary"]["no-edit"]
    assert noop["fe"]["mean"] == 0 and noop["invert_latent_psnr"]["mean"] == 100.0
    assert noop["psnr_outside"]["mean"] == pytest.approx(np.mean([r["vae_psnr_outside"] for r in rows
                                                                  if r["label"] == "no-edit"]))
    assert len(rows) == 6 * len(labels) and all(summary["summary"][lab]["n"] == 6 for lab in labels)
    ids = summary["summary"]["ids"]
    assert ids["fe"]["mean"] == 2 * 22 and summary["summary"]["dds"]["fe"]["mean"] == 2 * 4
    vals = [r["psnr_outside"] for r in rows if r["label"] == "ids"]
    assert ids["psnr_outside"]["mean"] == pytest.approx(np.mean(vals))
    assert ids["psnr_outside"]["lo"] <= ids["psnr_outside"]["mean"] <= ids["psnr_outside"]["hi"]
    assert "ids" in summary["paired_differences"] and summary["baseline"] == "dds"
    md = (out / "summary.md").read_text()
    assert "| ids |" in md and "Paired differences" in md and "colour+shape-0-000" in md
    claims = {c["claim"]: c["verdict"] for c in summary["claims"]}
    assert len(claims) == 5 and "The paper's claims" in md and "IDS at 100 steps beats DDS at 200" in claims
    assert claims["IDS at 100 steps beats DDS at 200"] == "not measured"   # quick has no 100-step ablation
    csv_lines = (out / "rows.csv").read_text().splitlines()
    assert len(csv_lines) == len(rows) + 1 and csv_lines[0].startswith("case,family,label")
    from PIL import Image

    grid = Image.open(out / "grid.png")
    assert grid.size == (112 + (3 + len(ALL_METHODS)) * 128, 14 + 6 * 128)
    assert "wrote" in capsys.readouterr().out
    # rerun: everything is already there, nothing is edited again, same numbers
    before = (out / "rows.jsonl").read_text()
    assert evaluate.cli_main(_eval_args("--model", str(TINY_MODEL), "--out", str(out), "--quiet")) == 0
    assert (out / "rows.jsonl").read_text() == before


def test_eval_around_view_with_another_evaluator(tmp_path):
    """--view around --evaluator FILE: the cases are the around-view ones, the rows are judged by that file, and
    the judge is part of each row's fingerprint (the same rows judged by the bundled evaluator are not resumed)."""
    import shutil

    from idsedit import evaluate
    from idsedit.evaluate.runner import run_fingerprint
    from idsedit.mini.evaluator import DEFAULT_WEIGHTS

    judge = tmp_path / "judge.safetensors"          # the bundled weights under another name: a different judge
    shutil.copy(DEFAULT_WEIGHTS, judge)
    shutil.copy(DEFAULT_WEIGHTS.with_suffix(".json"), judge.with_suffix(".json"))
    out = tmp_path / "a"
    argv = ("--model", str(TINY_MODEL), "--device", "cpu", "--dtype", "fp32", "--families", "colour", "--n", "1",
            "--methods", "dds", "--steps", "1", "--fpr-iters", "3", "--no-invert", "--residual-cases", "0",
            "--trace-every", "0", "--view", "around", "--out", str(out), "--quiet")
    assert evaluate.cli_main(_eval_args(*argv, "--evaluator", str(judge))) == 0
    rows = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
    assert {r["case"] for r in rows} == {"colour-0-000-around"}
    assert "judge.safetensors" in (out / "summary.md").read_text()
    with pytest.raises(IdseditError, match="other settings"):
        evaluate.cli_main(_eval_args(*argv))
    assert run_fingerprint({}, {}, "m", True) != run_fingerprint({}, {}, "m", True, "j")


def test_eval_cli_errors_are_one_line(tmp_path, capsys):
    from idsedit import cli

    f = tmp_path / "file.txt"
    f.write_text("x")
    for argv, message in ((["--model", str(TINY_MODEL), "--out", str(f)], "is a file"),
                          (["--families", "texture"], "unknown edit family 'texture'"),
                          (["--methods", "dds@authors"], "no authors' settings"),
                          (["--n", "0"], "--n must be >= 1"),
                          (["--out", str(f / "sub")], "could not")):          # an OSError: one line, no traceback
        capsys.readouterr()
        full = argv if "--out" in argv else argv + ["--out", str(tmp_path / "o")]
        assert cli.main(["eval", *full, "--quiet"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert f.read_text() == "x" and not (tmp_path / "o").exists()


def _row(case, label, **kw):
    base = {"case": case, "label": label, "family": "colour", "target_reached": True, "identity_kept": True,
            "kept_fraction": 1.0, "psnr_outside": 20.0, "psnr_target": 18.0, "fe": 800, "kept": {"shape": True}}
    return {**base, **kw}


def test_summary_paired_differences_and_frontier_by_hand():
    from idsedit.evaluate.report import frontier, markdown_summary, paired_differences, summarize

    rows = []
    for i, (d, x) in enumerate([(18.0, 20.0), (14.0, 17.0), (22.0, 23.0), (16.0, 18.0)]):
        rows.append(_row(f"c{i}", "dds", psnr_outside=d, identity_kept=i == 0, fe=800))
        rows.append(_row(f"c{i}", "ids", psnr_outside=x, identity_kept=i < 3, fe=4400))
        rows.append(_row(f"c{i}", "ids-jf", psnr_outside=x - 0.5, identity_kept=i < 3, fe=2000,
                         kept={"shape": i != 1}))
    s = summarize(rows, n_boot=500)
    assert s["dds"]["psnr_outside"]["mean"] == 17.5 and s["ids"]["psnr_outside"]["mean"] == 19.5
    assert s["ids"]["identity_kept"]["mean"] == 0.75 and s["ids-jf"]["kept_shape"]["mean"] == 0.75
    assert s["dds"]["psnr_outside"]["lo"] >= 14.0 and s["dds"]["psnr_outside"]["hi"] <= 22.0
    d = paired_differences(rows, "dds", n_boot=500)
    # ids - dds per case: +2, +3, +1, +2 -> mean 2, every resample's mean within [1, 3]
    assert d["ids"]["psnr_outside"]["mean"] == 2.0 and 1.0 <= d["ids"]["psnr_outside"]["lo"] <= 2.0 <= \
        d["ids"]["psnr_outside"]["hi"] <= 3.0
    assert d["ids"]["identity_kept"]["mean"] == 0.5 and d["ids"]["identity_kept"]["n"] == 4
    f = frontier(s)
    assert [r["run"] for r in f["runs"]] == ["dds", "ids-jf", "ids"]
    assert [r["pareto"] for r in f["runs"]] == [True, True, True]
    assert f["cheapest_at_reference"] == "ids-jf"          # IDS's identity rate at 2000 instead of 4400
    md = markdown_summary(s, d, {}, baseline="dds", header={"model": "m"}, cases=[])
    assert "| ids | 4 | +0.0" in md or "| ids | 4 |" in md
    assert "+2.0 [" in md and "Cheapest run with identity kept >= ids's" in md and "ids-jf." in md
