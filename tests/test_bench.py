"""The benchmark's plumbing on the tiny shape: rows, UNet-call counts against hand-computed values, the table.

Never asserts a timing. Cases run in-process on an 8x8 latent (64x64 image) so the file takes seconds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from idsedit import bench
from idsedit.errors import IdseditError
from idsedit.models_from_config import SHAPES, TEXT_COMMON, build_prior

REFERENCE = Path(__file__).resolve().parents[1] / "bench" / "reference-configs.json"

ROW_KEYS = {"shape", "method", "variant", "device", "dtype", "threads", "steps", "warmup", "s_per_step", "s_steps",
            "cpu_s_per_step", "s_per_edit", "unet_forward_per_step", "unet_samples_per_step",
            "unet_backward_per_step", "prior_calls_backward_per_step", "peak_rss_mib", "peak_mem_mib",
            "load_before", "load_after", "latent_shape", "params_m", "encode_s", "decode_s"}

# (forward calls, samples, backward passes) per step, by hand: CFG doubles every batch (uncond + cond)
EXPECTED_CALLS = {
    "dds": (1, 4, 0),            # one call: [uncond src, uncond trg, cond src, cond trg]
    "sds": (1, 2, 0),            # [uncond trg, cond trg]
    "pds": (1, 4, 0),            # as DDS
    "cds": (2, 4, 1),            # [uncond src, uncond trg, cond src] (3) + conditional target with grad (1), PatchNCE bwd
    "ids": (4, 10, 3),           # N=3 FPR calls of 2 (fwd + bwd each) + the final DDS call of 4
    "ids-jf": (4, 10, 0),        # the same forwards, no UNet backward
    "ids+cut": (5, 10, 4),       # IDS with CDS's two calls (3 + 1 with grad) instead of the DDS call, one more backward
}


@pytest.fixture(scope="module")
def tiny():
    """One tiny prior for the fast-path cases (their prompts are cached before the text encoder is released)."""
    prior = build_prior("tiny")
    prior.encode_text(bench.SRC_PROMPT), prior.encode_text(bench.TRG_PROMPT)
    return prior


def spec(method, variant="fast"):
    return bench.CaseSpec(shape="tiny", method=method, variant=variant, steps=1, warmup=0, threads=1, image_size=64)


@pytest.mark.parametrize("method", ["dds", "ids"])
def test_rows_have_the_keys_and_hand_computed_counts(tiny, method):
    row = bench.compare_official(bench.run_case(spec(method), prior=tiny))
    assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
    assert row["latent_shape"] == [1, 4, 8, 8]
    calls = (row["unet_forward_per_step"], row["unet_samples_per_step"], row["unet_backward_per_step"])
    assert calls == EXPECTED_CALLS[method]
    assert "official_s_per_step" not in row               # a 64x64 input is not the official 512x512 setting
    official = bench.compare_official({**row, "image_size": 512})
    assert official["official_s_per_step"] == bench.OFFICIAL_CPU["tiny"][method]["s_per_step"]
    assert official["speedup"] > 0 and official["mem_ratio"] > 0
    assert row["text_encoder_released"] and tiny.pipe.text_encoder is None


@pytest.mark.parametrize("method", ["cds", "ids-jf", "sds", "pds", "ids+cut"])
def test_counts_of_the_other_methods(tiny, method):
    row = bench.run_case(spec(method), prior=tiny)
    assert (row["unet_forward_per_step"], row["unet_samples_per_step"],
            row["unet_backward_per_step"]) == EXPECTED_CALLS[method]
    assert row["prior_calls_backward_per_step"] == row["unet_backward_per_step"]   # the core counts the same


def test_adaptive_counts_match_its_fpr_iterations(tiny):
    row = bench.run_case(spec("ids-adaptive"), prior=tiny)
    n = row["fpr_iters_per_step"]
    assert 1 <= n <= 3
    assert row["unet_forward_per_step"] == n + 1
    assert row["unet_backward_per_step"] == n


def test_baseline_uses_explicit_attention_and_keeps_the_text_encoder():
    from diffusers.models.attention_processor import AttnProcessor

    p = build_prior("tiny")
    row = bench.run_case(spec("dds", "baseline"), prior=p)
    assert all(isinstance(proc, AttnProcessor) for proc in p.unet.attn_processors.values())
    assert not row["text_encoder_released"] and p.pipe.text_encoder is not None
    assert (row["unet_forward_per_step"], row["unet_samples_per_step"]) == (1, 4)


def test_backward_counter_sees_only_backwards_through_the_unet(tiny):
    n, threads = [0], torch.get_num_threads()
    cond = tiny.encode_text(bench.SRC_PROMPT)
    z = torch.randn(1, 4, 8, 8)
    torch.set_num_threads(1)
    with bench.count_unet_backward(tiny.unet, n):
        with torch.no_grad():
            tiny.eps([z], torch.tensor([500]), [cond], 7.5)
        zg = z.clone().requires_grad_(True)
        (eps,) = tiny.eps([zg], torch.tensor([500]), [cond], 7.5)
        eps.sum().backward()
    torch.set_num_threads(threads)
    assert n[0] == 1


def test_shapes_and_official_figures_match_the_reference_json():
    ref = json.loads(REFERENCE.read_text())
    for shape in ("tiny", "medium"):
        assert SHAPES[shape] == ref[shape], shape
    assert {"vocab_size": 49408, "hidden_act": "quick_gelu"}.items() <= TEXT_COMMON.items()
    official = ref["official_implementation_on_2_core_cpu"]
    for shape in ("tiny", "medium"):
        assert bench.OFFICIAL_CPU[shape] == official[shape]


def test_sd15_configs_have_the_real_sizes():
    from diffusers import UNet2DConditionModel

    cfg = SHAPES["sd15"]
    assert cfg["unet"]["block_out_channels"] == [320, 640, 1280, 1280]
    assert cfg["vae"]["block_out_channels"] == [128, 256, 512, 512]
    assert cfg["text"]["hidden_size"] == 768 and cfg["text"]["num_hidden_layers"] == 12
    with torch.device("meta"):
        unet = UNet2DConditionModel(**cfg["unet"])
    assert 855e6 < sum(p.numel() for p in unet.parameters()) < 865e6     # SD1.5's UNet: 859.5M


def test_table_targets_and_merge():
    ok = {"shape": "medium", "method": "ids", "variant": "fast", "device": "cpu", "s_per_step": 20.0,
          "cpu_s_per_step": 35.0, "s_per_edit": 4000.0, "unet_forward_per_step": 4.0, "unet_samples_per_step": 10.0,
          "unet_backward_per_step": 3.0, "peak_rss_mib": 2000.0, "peak_mem_mib": 2000.0, "load_before": [1.0]}
    row = bench.compare_official(dict(ok))
    assert row["speedup"] == pytest.approx(87.4 / 20.0)
    text = bench.format_table([row, {**_err_row(), "error": "boom"}])
    assert "medium" in text and "4.37x" in text and "error: boom" in text
    assert bench.format_table([row], markdown=True).startswith("| shape |")
    [line] = bench.check_targets([row])
    assert line.startswith("MET")
    slow = bench.compare_official({**ok, "s_per_step": 60.0})
    assert bench.check_targets([slow])[0].startswith("MISSED")
    one_thread = bench.compare_official({**ok, "threads": 1, "s_per_step": 100.0, "cpu_s_per_step": 29.0})
    assert one_thread["speedup_bound"] == pytest.approx(87.4 / 29.0)
    assert "lower bound" in bench.check_targets([one_thread])[0] and "x" in bench.format_table([one_thread])
    merged = bench.merge_results({"rows": [dict(ok, s_per_step=1.0), dict(ok, method="dds")]}, [row])
    assert [(r["method"], r["s_per_step"]) for r in merged] == [("dds", 20.0), ("ids", 20.0)]


def _err_row():
    return {"shape": "tiny", "method": "cds", "variant": "fast"}


def test_flags_make_the_cases():
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--shapes", "tiny,medium", "--methods", "dds,ids-cut", "--baseline"])
    specs = bench.specs_from_args(args)
    assert [(s.shape, s.method, s.variant) for s in specs][:4] == [
        ("tiny", "dds", "fast"), ("tiny", "dds", "baseline"), ("tiny", "ids+cut", "fast"),
        ("tiny", "ids+cut", "baseline")]
    assert len(specs) == 8 and specs[0].steps == 3 and specs[0].warmup == 1 and specs[0].dtype == "fp32"
    with pytest.raises(IdseditError, match="unknown bench method"):
        bench.specs_from_args(parser.parse_args(["--methods", "ddim"]))
    with pytest.raises(IdseditError, match="unknown shape"):
        bench.specs_from_args(parser.parse_args(["--shapes", "huge"]))


def test_bench_uses_the_shared_variant_table():
    """One table of method names (idsedit.variants): no copy inside bench; every name and alias means the same."""
    from idsedit.variants import ALIASES, VARIANTS, canonical_variant, variant_config

    assert not hasattr(bench, "METHOD_VARIANTS") and not hasattr(bench, "METHOD_ALIASES")
    for name in [*VARIANTS, *ALIASES]:
        assert bench.canonical_method(name) == canonical_variant(name)
    assert set(bench.DEFAULT_METHODS) <= set(VARIANTS)
    assert variant_config("ids+cut").distill.with_cut and variant_config("ids-jf").distill.fpr_mode == "jacobian-free"


def test_worker_subprocess_reports_its_own_peak_rss():
    row = bench.run_in_subprocess(bench.CaseSpec(shape="tiny", method="dds", steps=1, warmup=0, threads=1,
                                                 image_size=64), timeout=300)
    assert "error" not in row, row.get("error")
    assert row["child_maxrss_mib"] > 100 and row["peak_rss_mib"] > 100


def test_bf16_backward_prototype_keeps_the_forward_and_approximates_the_gradient():
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8)
    x = torch.randn(2, 64, 16, requires_grad=True)
    outs, grads = [], []
    for proc in (AttnProcessor2_0(), bench.Bf16BackwardSDPAProcessor()):
        attn.set_processor(proc)
        x.grad = None
        out = attn(x)
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append(x.grad.clone())
    assert torch.allclose(outs[0], outs[1], atol=1e-6)                       # the forward stays exact fp32
    assert float((grads[0] - grads[1]).norm() / grads[0].norm()) < 3e-2      # bf16 rounding in the backward only
