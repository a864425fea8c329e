"""The real `idsedit edit` on the tiny random-weight SD folder of the parity fixtures (64x64 input -> 8x8 latent):
outputs exist at the input size, the JSON record holds the settings and UNet call counts, and model folders are
checked (missing, incomplete, pickle-only) with one-line errors.
"""

import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_MODEL
from idsedit import cli


@pytest.fixture
def photo(tmp_path):
    """An 80x48 (non-square, so resized for the model and back) picture."""
    x = np.linspace(0, 255, 80, dtype=np.uint8)[None, :].repeat(48, 0)
    path = tmp_path / "photo.png"
    Image.fromarray(np.stack([x, x[::-1], np.full_like(x, 90)], -1)).save(path)
    return path


KEY = re.compile(r"\.[0-9a-f]{8}(?=\.|$)")


def names(folder):
    """File names in ``folder`` with the 8-digit edit key taken out (photo.ids.<key>.png -> photo.ids.png)."""
    return sorted(KEY.sub("", p.name) for p in folder.iterdir())


def output(folder, name):
    """The one path in ``folder`` whose name is ``name`` once its edit key is taken out."""
    (hit,) = [p for p in folder.iterdir() if KEY.sub("", p.name) == name]
    return hit


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_edit_end_to_end_on_tiny_model(photo, tmp_path, capsys):
    out_dir = tmp_path / "out"
    before = photo.read_bytes()
    code, out, err = run(capsys, "edit", photo, "--source", "a red square", "--target", "a blue square",
                         "--model", TINY_MODEL, "--device", "cpu", "--steps", "2", "--guidance", "5",
                         "--fpr-iters", "1", "--seed", "3", "--out", out_dir, "--quiet")
    assert code == 0, err
    assert "Traceback" not in err
    assert names(out_dir) == ["photo.ids.compare.png", "photo.ids.json", "photo.ids.png"]
    edited = Image.open(output(out_dir, "photo.ids.png"))
    assert edited.size == (80, 48) and edited.mode == "RGB"
    assert not np.array_equal(np.asarray(edited), np.asarray(Image.open(photo)))   # something was edited
    compare = Image.open(output(out_dir, "photo.ids.compare.png"))
    assert compare.width > 2 * compare.height * 80 // 48 * 0.9
    rec = json.loads(output(out_dir, "photo.ids.json").read_text())
    assert rec["config"]["method"] == "ids" and rec["config"]["steps"] == 2 and rec["config"]["seed"] == 3
    assert rec["config"]["distill"]["guidance"] == 5.0 and rec["config"]["distill"]["fpr_iters"] == 1
    assert rec["source"] == "a red square" and rec["target"] == "a blue square"
    assert rec["input"] == str(photo) and rec["model"] == str(TINY_MODEL) and rec["device"] == "cpu"
    assert rec["latent_shape"][-2:] == [4, 8]                      # 80x48 -> 64x38.4 -> 64x32 (multiple 16)
    calls = rec["unet_calls"]
    assert calls["forward"] > 0 and calls["forward"] % 2 == 0    # the same count each of the 2 steps
    assert calls["backward"] > 0                                  # exact FPR backpropagates through the UNet
    assert rec["timings_s"]["total_s"] > 0
    assert photo.read_bytes() == before


def test_pickle_only_model_needs_allow_pickle(photo, tmp_path, capsys, monkeypatch):
    import torch
    from safetensors.torch import load_file

    model = tmp_path / "pickled"
    shutil.copytree(TINY_MODEL, model)
    for f in list(model.rglob("*.safetensors")):
        name = "pytorch_model.bin" if f.name == "model.safetensors" else "diffusion_pytorch_model.bin"
        torch.save(load_file(str(f)), f.parent / name)
        f.unlink()
    argv = ["edit", photo, "--source", "a", "--target", "b", "--model", model, "--steps", "1", "--method", "sds",
            "--out", tmp_path / "out", "--quiet"]
    code, _, err = run(capsys, *argv)
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert "pickle" in err and "--allow-pickle" in err
    assert not (tmp_path / "out").exists()
    code, _, err = run(capsys, *argv, "--allow-pickle")
    assert code == 0, err
    assert output(tmp_path / "out", "photo.sds.png").is_file()


@pytest.mark.parametrize("make, phrase", [
    (lambda d: d / "nope", "does not exist"),
    (lambda d: _index_only(d), "no unet"),
    (lambda d: _no_weights(d), "no weights"),
])
def test_bad_model_folders(photo, tmp_path, capsys, make, phrase):
    code, _, err = run(capsys, "edit", photo, "--source", "a", "--target", "b", "--model", make(tmp_path),
                       "--out", tmp_path / "out")
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: ") and phrase in err
    assert not (tmp_path / "out").exists()


def _index_only(d):
    (d / "m").mkdir()
    (d / "m" / "model_index.json").write_text("{}")
    return d / "m"


def _no_weights(d):
    shutil.copytree(TINY_MODEL, d / "m", ignore=shutil.ignore_patterns("*.safetensors"))
    return d / "m"


def test_invert_frames_mask_and_folder_on_tiny_model(tmp_path, capsys):
    pics = tmp_path / "pics"
    pics.mkdir()
    Image.new("RGB", (64, 64), (200, 20, 20)).save(pics / "a.png")
    Image.new("RGBA", (96, 64), (20, 20, 200, 255)).save(pics / "b.png")
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "edit", pics, "--source", "a red square", "--target", "a blue square",
                         "--model", TINY_MODEL, "--steps", "2", "--frames-every", "1", "--invert", "--method", "dds",
                         "--out", out_dir)
    assert code == 0, err
    for stem, size in (("a", (64, 64)), ("b", (96, 64))):
        for suffix in ("png", "inverse.png"):
            assert Image.open(output(out_dir, f"{stem}.dds.{suffix}")).size == size
        assert names(output(out_dir, f"{stem}.dds.frames")) == ["step_0001.png", "step_0002.png"]
        rec = json.loads(output(out_dir, f"{stem}.dds.json").read_text())
        assert rec["invert"]["psnr_db"] is None or rec["invert"]["psnr_db"] > 0
        assert rec["unet_calls_total"]["forward"] == 2 * rec["unet_calls"]["forward"]
    assert out.count("A->B->A PSNR") == 2 and "2 of 2 edits done" in out
    mask = tmp_path / "mask.png"
    m = Image.new("L", (64, 64), 0)
    m.paste(255, (0, 0, 32, 64))
    m.save(mask)
    code, _, err = run(capsys, "edit", pics / "a.png", "--source", "a red square", "--target", "a blue square",
                       "--model", TINY_MODEL, "--steps", "2", "--mask", mask, "--method", "dds",
                       "--out", tmp_path / "masked", "--quiet")
    assert code == 0, err
    edited = np.asarray(Image.open(output(tmp_path / "masked", "a.dds.png"))).astype(int)
    assert (edited[:, 40:] == [200, 20, 20]).all()               # outside the mask: the input, untouched
