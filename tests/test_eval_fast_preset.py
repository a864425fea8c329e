"""`idsedit edit --preset fast`: the setting measured by the evaluation engine (docs/eval.md, 'A fast preset')."""

from __future__ import annotations

import pytest

from idsedit import cli, edit_cli
from idsedit.errors import IdseditError


def _config(*flags):
    argv = ["edit", "x.png", "--source", "a red cube", "--target", "a blue cube", *flags]
    args = cli.build_parser(argv).parse_args(argv)
    return edit_cli.make_config(args), edit_cli.variant_name(args, type("Job", (), {"method": None})())


def test_fast_preset_resolves_to_the_measured_setting():
    """The sweep's winner ids-jf[steps=50,N=1]: Jacobian-free FPR, N = 1, 50 steps, the automatic learning rate."""
    from idsedit.evaluate.methods import ablation_run, make_run
    from idsedit.edit2d import EditConfig
    from idsedit.variants import preset_config

    cfg, variant = _config("--preset", "fast")
    measured = ablation_run(make_run("ids-jf", EditConfig(steps=200)), {"steps": 50, "fpr_iters": 1}).config
    assert variant == "ids-jf" and cfg == measured == preset_config("fast")
    assert (cfg.method, cfg.steps, cfg.distill.fpr_iters, cfg.distill.fpr_mode, cfg.lr, cfg.weight) == \
        ("ids", 50, 1, "jacobian-free", None, 1.0)


def test_fast_preset_costs_300_forward_equivalents(tiny_prior):
    """Counted, not assumed: 50 steps x (2 x 1 FPR forward samples + 4 delta-score samples), no UNet backward."""
    from idsedit.edit2d import edit_latents
    from idsedit.evaluate.cases import make_case
    from idsedit.evaluate.runner import CaseContext, PairedSampler, count_unet
    from idsedit.variants import preset_config

    c = CaseContext.build(tiny_prior, make_case("colour", 0, 0))
    with count_unet(tiny_prior.unet) as cost:
        edit_latents(tiny_prior, c.z_src, c.cond_src, c.cond_trg, preset_config("fast"), sampler=PairedSampler(0))
    assert (cost.forward_equivalents, cost.backward_samples, cost.forward) == (300, 0, 100)


def test_flags_override_the_preset():
    cfg, variant = _config("--preset", "fast", "--steps", "80", "--fpr-iters", "2")
    assert (variant, cfg.steps, cfg.distill.fpr_iters, cfg.distill.fpr_mode) == ("ids-jf", 80, 2, "jacobian-free")
    cfg, variant = _config("--preset", "fast", "--method", "dds")
    assert (variant, cfg.method, cfg.steps) == ("dds", "dds", 50)
    with pytest.raises(IdseditError, match="means fpr-mode jacobian-free"):
        _config("--preset", "fast", "--fpr-mode", "exact")       # the preset's variant defines its FPR mode
    cfg, _ = _config()
    assert cfg.steps == 200 and cfg.distill.fpr_mode == "exact"  # no preset: the defaults


def test_unknown_preset_is_a_one_line_error(tmp_path, capsys):
    from idsedit.variants import get_preset

    with pytest.raises(IdseditError, match="unknown preset 'slow': use one of fast"):
        get_preset("slow")
    img = tmp_path / "x.png"
    with pytest.raises(SystemExit) as info:                      # argparse's usage error
        cli.main(["edit", str(img), "--source", "a", "--target", "b", "--preset", "slow"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'slow'" in err and "fast" in err
