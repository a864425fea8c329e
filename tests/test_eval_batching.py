"""Batched edits (idsedit.evaluate.batching): K cases sharing every UNet call give each case the result of its own
unbatched edit, with its own t and noise."""

from __future__ import annotations

import dataclasses

import pytest
import torch

CASES = (("colour", 0), ("shape", 0), ("floor", 1))


def _contexts(prior):
    from idsedit.evaluate.cases import make_case
    from idsedit.evaluate.runner import CaseContext

    return [CaseContext.build(prior, make_case(f, 3, i)) for f, i in CASES]


def test_batch_sampler_stacks_each_cases_own_draws():
    from idsedit.evaluate.batching import BatchSampler
    from idsedit.evaluate.runner import PairedSampler

    seeds = (5, 17, 99)
    batch = BatchSampler([PairedSampler(s) for s in seeds])
    alone = [PairedSampler(s) for s in seeds]
    x = torch.zeros(3, 4, 2, 2)
    for _ in range(3):
        t = batch.randint(50, 949)
        eps = batch.randn_like(x)
        method = batch.randn_like(x)                       # e.g. PDS's second noise: the method stream
        for k, s in enumerate(alone):
            assert int(t[k]) == int(s.randint(50, 949))
            assert torch.equal(eps[k:k + 1], s.randn_like(x[:1]))
            assert torch.equal(method[k:k + 1], s.randn_like(x[:1]))
    assert t.shape == (3,) and len(set(t.tolist())) > 1    # the cases do not share t
    with pytest.raises(ValueError, match="one row per case"):
        batch.randn_like(torch.zeros(2, 4))


@pytest.mark.parametrize("name", ["sds", "dds", "cds", "pds", "pds@authors", "ids", "ids-jf", "ids+cut"])
def test_batched_edit_equals_separate_edits(tiny_prior, name):
    """The final latents of a batch of 3 equal 3 separate edits (to float tolerance), for every batchable run;
    the FPR residuals recorded per case equal the unbatched edit's own."""
    from idsedit.distill import DistillConfig
    from idsedit.edit2d import EditConfig, edit_latents
    from idsedit.evaluate.batching import BatchPrior, BatchSampler, batch_config, batchable, stack_conds
    from idsedit.evaluate.methods import make_run
    from idsedit.evaluate.runner import PairedSampler

    # fp32 FPR backward: this checks the batching's arithmetic; exact FPR's default bf16 attention backward rounds
    # differently in another batch (~1e-3 relative per gradient, tests/test_attention_bf16.py)
    run = make_run(name, EditConfig(steps=4, distill=DistillConfig(fpr_attention_backward="fp32")))
    assert batchable(run, tiny_prior)
    ctxs = _contexts(tiny_prior)
    alone, alone_norms = [], []
    for c in ctxs:
        norms = []
        alone.append(edit_latents(tiny_prior, c.z_src, c.cond_src, c.cond_trg, run.config,
                                  sampler=PairedSampler(c.case.seed, run.t_grid),
                                  callback=lambda i, z, d, out: norms.append(out.info.get("fpr_norms"))))
        alone_norms.append(norms)
    z_src = torch.cat([c.z_src for c in ctxs])
    cond_src = stack_conds([c.cond_src for c in ctxs])
    bprior = BatchPrior(tiny_prior, z_src, record=True, cond_src=cond_src)
    batched_norms = []
    cfg = batch_config(run.config, len(ctxs))
    z = edit_latents(bprior, z_src, cond_src, stack_conds([c.cond_trg for c in ctxs]),
                     cfg, sampler=BatchSampler([PairedSampler(c.case.seed, run.t_grid) for c in ctxs]),
                     callback=lambda i, z, d, out: batched_norms.append(bprior.take_residuals()))
    moved = max(float((a - c.z_src).abs().max()) for a, c in zip(alone, ctxs))
    assert moved > 1e-3                                    # the edit did something
    for k in range(len(ctxs)):
        # float32 noise of batched matmuls (exact FPR: ~3e-5 of the movement after 4 steps, one element in 256 at
        # 1.6e-4 on a fresh set-up of 2026-11-30); a batching error (e.g. the loss scale) is ~0.5 of the movement
        torch.testing.assert_close(z[k:k + 1], alone[k], rtol=1e-4, atol=5e-4 * moved)
    if run.config.method == "ids":
        for k in range(len(ctxs)):
            for step in range(4):
                assert batched_norms[step][k] == pytest.approx(alone_norms[k][step], rel=1e-5)
    # without the x K on the loss scale (and CUT weight) each case would take 1/K of its step
    for unscaled in (run.config, dataclasses.replace(cfg, distill=run.config.distill)):
        if unscaled.method == "ids" and not unscaled.distill.with_cut and unscaled is not run.config:
            continue                                       # no CUT term: cut_weight is not used
        if unscaled.method in ("sds", "dds", "pds") and unscaled is not run.config:
            continue
        z_mean = edit_latents(tiny_prior, z_src,
                              stack_conds([c.cond_src for c in ctxs]), stack_conds([c.cond_trg for c in ctxs]),
                              unscaled, sampler=BatchSampler([PairedSampler(c.case.seed, run.t_grid) for c in ctxs]))
        assert not torch.allclose(z_mean[:1], alone[0], rtol=1e-3, atol=1e-3 * moved)


def test_unbatchable_runs_and_rows(tiny_prior):
    """run_edits: batched rows equal unbatched rows (same fields, same UNet work per case, same t); adaptive FPR
    (one stopping iteration for the whole batch) runs one case at a time."""
    from idsedit.edit2d import EditConfig
    from idsedit.evaluate.batching import batchable
    from idsedit.evaluate.methods import make_run
    from idsedit.evaluate.runner import run_edit, run_edits
    from idsedit.mini.evaluator import load_evaluator

    ev = load_evaluator()
    ctxs = _contexts(tiny_prior)
    for name in ("ids-adaptive", "no-edit"):
        assert not batchable(make_run(name, EditConfig(steps=2)), tiny_prior), name
    run = make_run("ids", EditConfig(steps=3))
    rows = [r for r, _ in run_edits(tiny_prior, ctxs, run, ev, invert=True, trace_every=1)]
    ref = [run_edit(tiny_prior, c, run, ev, invert=True, trace_every=1)[0] for c in ctxs]
    for a, b in zip(rows, ref):
        assert (a["batch"], b["batch"]) == (3, 1)
        assert a["unet"] == b["unet"] and a["fe"] == b["fe"] == 3 * 22
        assert a["fpr"]["t"] == b["fpr"]["t"] and a["trace"]["step"] == b["trace"]["step"] == [1, 2, 3]
        assert [a["case"], a["label"], a["kept"], a["reached"]] == [b["case"], b["label"], b["kept"], b["reached"]]
        for key in ("psnr_outside", "psnr_target", "invert_psnr", "invert_latent_psnr"):
            assert a[key] == pytest.approx(b[key], rel=1e-3), key
    adaptive = make_run("ids-adaptive", EditConfig(steps=2))
    for (a, _), c in zip(run_edits(tiny_prior, ctxs, adaptive, ev, invert=False), ctxs):
        b, _ = run_edit(tiny_prior, c, adaptive, ev, invert=False)
        assert a["batch"] == 1 and a["psnr_outside"] == b["psnr_outside"] and a["unet"] == b["unet"]
    cds = make_run("cds", EditConfig(steps=2))
    for (a, _), c in zip(run_edits(tiny_prior, ctxs, cds, ev, invert=False), ctxs):
        b, _ = run_edit(tiny_prior, c, cds, ev, invert=False)
        assert (a["batch"], b["batch"]) == (3, 1) and a["unet"] == b["unet"]
        assert a["psnr_outside"] == pytest.approx(b["psnr_outside"], rel=1e-3)


def test_batched_evaluation_resumes_bit_for_bit(tiny_prior, tmp_path):
    """A batched run interrupted mid-block and resumed stores the same rows as an uninterrupted batched run (the
    block is edited whole again), and they match the unbatched run to float tolerance."""
    from idsedit.edit2d import EditConfig
    from idsedit.evaluate import build_runs, make_cases, run_evaluation

    cases = make_cases(["colour", "shape"], 2, seed=2)
    runs = build_runs(["no-edit", "dds", "cds"], EditConfig(steps=2))

    def ev(out, on_row=None, batch=3):
        return run_evaluation(tiny_prior, cases, runs, out, progress=False, on_row=on_row, batch=batch)

    full = ev(tmp_path / "full")
    assert [r["batch"] for r in full if r["label"] == "dds"] == [3, 3, 3, 1]   # blocks of 3 cases: 3 + 1
    seen = []

    def interrupt(row):
        seen.append(row["key"])
        if len(seen) == 5:                                 # inside the first block's dds batch
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ev(tmp_path / "resumed", on_row=interrupt)
    resumed = ev(tmp_path / "resumed")
    assert [r["key"] for r in resumed] == [r["key"] for r in full]
    skip = ("seconds", "invert_seconds", "peak_mem_mib", "mem_kind")
    for a, b in zip(full, resumed):
        assert {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}
    single = ev(tmp_path / "single", batch=1)
    for a, b in zip(full, single):
        assert a["key"] == b["key"] and a["fe"] == b["fe"]
        assert a["invert_latent_psnr"] == pytest.approx(b["invert_latent_psnr"], rel=1e-3)


def test_batch_flag_and_presets(tmp_path, capsys):
    import argparse

    from idsedit import cli, evaluate
    from idsedit.evaluate.cli import resolve

    p = argparse.ArgumentParser()
    evaluate.add_arguments(p)
    assert resolve(p.parse_args([]))["batch"] == 3                       # quick
    assert resolve(p.parse_args(["--preset", "standard"]))["batch"] == 8
    assert resolve(p.parse_args(["--preset", "standard", "--batch", "1"]))["batch"] == 1
    assert cli.main(["eval", "--batch", "0", "--out", str(tmp_path / "o"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --batch must be >= 1") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_weight_ablation_scales_the_step():
    """weight k: the distillation term k times heavier, i.e. (SGD) a k times larger step; labelled weight=k."""
    from idsedit.edit2d import EditConfig
    from idsedit.evaluate.methods import build_runs

    runs = build_runs(["ids-jf"], EditConfig(), {"steps": [25], "fpr_iters": [2], "weight": [8.0]}, product=True)
    r = {x.label: x for x in runs}["ids-jf[steps=25,N=2,weight=8]"]
    assert (r.config.steps, r.config.distill.fpr_iters, r.config.distill.fpr_mode, r.config.weight) == \
        (25, 2, "jacobian-free", 8.0)
    assert "ids-jf[weight=1]" not in {x.label for x in build_runs(["ids-jf"], EditConfig(), {"weight": [1.0]})}


def test_weight_k_is_a_k_times_larger_sgd_step(tiny_prior):
    from idsedit.edit2d import edit_latents
    from idsedit.evaluate.runner import PairedSampler
    from idsedit.variants import variant_config

    c = _contexts(tiny_prior)[0]
    moves = [edit_latents(tiny_prior, c.z_src, c.cond_src, c.cond_trg, variant_config("ids-jf", steps=1, weight=w),
                          sampler=PairedSampler(4)) - c.z_src for w in (1.0, 8.0)]
    torch.testing.assert_close(moves[1], 8 * moves[0], rtol=1e-4, atol=1e-6)
