"""idsedit eval on user pairs, and the learned metrics (LPIPS, CLIP score) with random-weight stand-ins."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_MODEL

MINI_TOKENIZER = Path(__file__).resolve().parent.parent / "src" / "idsedit" / "assets" / "mini-sd" / "tokenizer"


@pytest.fixture(scope="module")
def clip_standin(tmp_path_factory):
    """A tiny random CLIP model folder (the mini prior's tokenizer, 32 px images)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    path = tmp_path_factory.mktemp("clip")
    tok = CLIPTokenizer.from_pretrained(str(MINI_TOKENIZER))
    torch.manual_seed(0)
    common = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2)
    cfg = CLIPConfig(text_config=dict(vocab_size=len(tok), max_position_embeddings=77, **common),
                     vision_config=dict(image_size=32, patch_size=8, **common), projection_dim=16)
    CLIPModel(cfg).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def lpips_standin(tmp_path_factory):
    from safetensors.torch import save_file

    from idsedit.metrics import lpips_net

    torch.manual_seed(0)
    net = lpips_net()
    for lin in net.lins:
        lin.weight.data.abs_()                       # LPIPS's heads are non-negative
    path = tmp_path_factory.mktemp("lpips") / "lpips-alex.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def test_clip_score_matches_the_models_own_logits(clip_standin):
    from PIL import Image
    from transformers import CLIPModel

    from idsedit.metrics import clip_score, load_clip

    clip, why = load_clip(str(clip_standin))
    assert why is None
    img = Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8))
    score = clip_score(clip, img, "a red cube")
    model = CLIPModel.from_pretrained(str(clip_standin)).eval()
    _, tok, proc = clip
    with torch.no_grad():                            # CLIPModel.forward: logits = exp(logit_scale) * cos
        out = model(input_ids=tok(["a red cube"], return_tensors="pt")["input_ids"],
                    pixel_values=proc(images=img, return_tensors="pt")["pixel_values"])
    cos = float(out.logits_per_image[0, 0] / model.logit_scale.exp().detach())
    assert score == pytest.approx(100 * max(cos, 0.0), rel=1e-5, abs=1e-5) and 0.0 <= score <= 100.0
    none, why = load_clip(str(clip_standin.parent / "no-such-clip"))
    assert none is None and why.startswith("CLIP score skipped:") and "\n" not in why


def test_lpips_is_a_distance_and_matches_one_head_by_hand(lpips_standin, tmp_path):
    import torch.nn.functional as F

    from idsedit.metrics import LPIPS_SCALE, LPIPS_SHIFT, load_lpips, lpips_distance

    net, why = load_lpips(lpips_standin)
    assert why is None
    rng = np.random.default_rng(1)
    a, b = rng.random((64, 64, 3)).astype(np.float32), rng.random((64, 64, 3)).astype(np.float32)
    assert lpips_distance(net, a, a) == 0.0
    d = lpips_distance(net, a, b)
    assert d > 0 and d == pytest.approx(lpips_distance(net, b, a), rel=1e-6)
    # keep only head 0 with unit weights: LPIPS = mean over pixels of || u(a) - u(b) ||^2, u = unit-normalised
    # ReLU(conv0(x')) with x' = (2 x - 1 - shift) / scale
    for k, lin in enumerate(net.lins):
        lin.weight.data.fill_(1.0 if k == 0 else 0.0)
    conv = net.features[0]

    def u(x):
        t = torch.from_numpy(x).permute(2, 0, 1)[None].double()
        t = (2 * t - 1 - torch.tensor(LPIPS_SHIFT).double().view(1, 3, 1, 1)) / torch.tensor(LPIPS_SCALE).double().view(1, 3, 1, 1)
        f = F.relu(F.conv2d(t, conv.weight.double(), conv.bias.double(), stride=4, padding=2))
        return f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)

    with torch.no_grad():
        by_hand = float((u(a) - u(b)).pow(2).sum(1).mean())
    assert lpips_distance(net, a, b) == pytest.approx(by_hand, rel=1e-4)
    missing, why = load_lpips(tmp_path / "none.safetensors")
    assert missing is None and why.startswith("LPIPS skipped:")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    assert load_lpips(bad)[0] is None


def _args(*argv):
    from idsedit import evaluate

    p = argparse.ArgumentParser()
    evaluate.add_arguments(p)
    return p.parse_args(list(argv))


def test_pairs_end_to_end_with_stand_in_metrics(tmp_path, clip_standin, lpips_standin, capsys):
    from PIL import Image

    from idsedit import evaluate
    from idsedit.evaluate.cases import make_case, render_image

    case = make_case("colour", 0, 0)
    render_image(case.source_params, 64).save(tmp_path / "cube.png")
    Image.fromarray((np.random.default_rng(2).random((48, 80, 3)) * 255).astype(np.uint8)).save(tmp_path / "wide.png")
    mask = np.zeros((48, 80), np.uint8)
    mask[10:30, 20:60] = 255
    Image.fromarray(mask).save(tmp_path / "wide-mask.png")
    (tmp_path / "pairs.jsonl").write_text(
        json.dumps({"image": "cube.png", "source": case.source_prompt, "target": case.target_prompt}) + "\n"
        + json.dumps({"image": "wide.png", "source": "a cube", "target": "a sphere", "mask": "wide-mask.png"}) + "\n")
    out = tmp_path / "out"
    argv = ["--model", str(TINY_MODEL), "--pairs", str(tmp_path / "pairs.jsonl"), "--methods", "dds,ids",
            "--steps", "2", "--lpips", str(lpips_standin), "--clip", str(clip_standin), "--out", str(out), "--quiet"]
    assert evaluate.cli_main(_args(*argv)) == 0
    rows = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
    assert [(r["case"], r["label"]) for r in rows] == [("000-cube", "dds"), ("000-cube", "ids"),
                                                       ("001-wide", "dds"), ("001-wide", "ids")]
    for r in rows:
        assert r["lpips_source"] > 0 and 0 <= r["clip_target"] <= 100 and np.isfinite(r["invert_psnr"])
        assert Image.open(out / r["image"]).size == ((64, 64) if r["case"] == "000-cube" else (80, 48))
    # outside the mask the input is composited back: the unmasked region is identical
    wide = np.asarray(Image.open(out / rows[2]["image"]))
    src = np.asarray(Image.open(tmp_path / "wide.png"))
    assert np.array_equal(wide[:5], src[:5]) and rows[2]["psnr_source"] == 100.0
    assert rows[1]["fe"] == 2 * 22 and rows[0]["fe"] == 2 * 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["summary"]["ids"]["n"] == 2 and "lpips_source" in summary["summary"]["ids"]
    assert "psnr_source" in summary["paired_differences"]["ids"]
    before = (out / "rows.jsonl").read_text()
    assert evaluate.cli_main(_args(*argv[:8], "--out", str(out), "--quiet")) == 0   # no LPIPS/CLIP: skip lines
    err = capsys.readouterr().err
    assert "LPIPS skipped: no --lpips weights given" in err and "CLIP score skipped: no --clip model given" in err
    assert (out / "rows.jsonl").read_text() == before                                 # resumed: nothing re-run
