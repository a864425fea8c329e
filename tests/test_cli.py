"""cli.py and the edit command (edit_cli.py) with the model and the edit loop replaced by fakes: every flag reaches the config, every error path is
one line on stderr with exit code 1 (2 for usage errors), batches survive a bad image, nothing partial is written.
"""

import json
import re
import sys
import types
import warnings

import pytest
import torch
from PIL import Image

import idsedit.edit2d as edit2d
import idsedit.prior as prior_mod
from idsedit import cli, edit_cli
from idsedit.distill import FPR_MODES, METHODS, DistillConfig
from idsedit.edit2d import EditConfig, EditResult, InvertResult


class FakePrior:
    name = "fake-model"
    device = "cpu"
    dtype = torch.float32


@pytest.fixture
def fake(monkeypatch):
    """Replace load_prior/edit_image/invert_image; record what they receive."""
    seen = types.SimpleNamespace(load=[], edits=[], inverts=[])

    def load_prior(model=None, *, device=None, dtype=None, allow_pickle=False):
        seen.load.append(dict(model=model, device=device, dtype=dtype, allow_pickle=allow_pickle))
        return FakePrior()

    def edit_image(prior, image, source, target, config, *, mask=None, progress=True):
        seen.edits.append(dict(image=image, source=source, target=target, config=config, mask=mask,
                               progress=progress))
        frames = [(k, image) for k in range(config.frames_every, config.steps + 1, config.frames_every)] \
            if config.frames_every else []
        return EditResult(image=image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), source_image=image,
                          latent=torch.zeros(1, 4, 8, 8), source_latent=torch.zeros(1, 4, 8, 8), config=config,
                          source=source, target=target, frames=frames, timings={"total_s": 0.5},
                          unet_calls={"forward": 2 * config.steps, "backward": config.steps, "samples": 8})

    def invert_image(prior, image, source, target, config, *, progress=True):
        seen.inverts.append(dict(source=source, target=target, config=config))
        fwd = edit_image(prior, image, source, target, config, progress=progress)
        bwd = edit_image(prior, fwd.image, target, source, config, progress=progress)
        return InvertResult(fwd, bwd, psnr=31.5, latent_psnr=40.0)

    monkeypatch.setattr(prior_mod, "load_prior", load_prior)
    monkeypatch.setattr(edit2d, "edit_image", edit_image)
    monkeypatch.setattr(edit2d, "invert_image", invert_image)
    return seen


@pytest.fixture
def img(tmp_path):
    path = tmp_path / "in" / "cat.png"
    path.parent.mkdir()
    Image.new("RGB", (48, 32), (200, 10, 10)).save(path)
    return path


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def edit(img, out, *flags):
    return ["edit", img, "--source", "a cat", "--target", "a pig", "--out", out, *flags]


KEY = re.compile(r"\.[0-9a-f]{8}(?=\.|/|$)")


def files_in(folder):
    """The files under ``folder`` with the 8-digit edit key taken out of their names (cat.dds.<key>.png ->
    cat.dds.png), sorted."""
    if not folder.exists():
        return []
    return sorted(KEY.sub("", p.relative_to(folder).as_posix()) for p in folder.rglob("*"))


def output(folder, name):
    """The one file in ``folder`` whose name is ``name`` once its edit key is taken out."""
    (hit,) = [p for p in folder.iterdir() if KEY.sub("", p.name) == name]
    return hit


# ----------------------------------------------------------------------------------------------- flags -> config
FLAG_CASES = [
    (["--method", "dds"], lambda c: c.method == "dds"),
    (["--method", "CDS"], lambda c: c.method == "cds"),
    (["--steps", "7"], lambda c: c.steps == 7),
    (["--guidance", "3.5"], lambda c: c.distill.guidance == 3.5),
    (["--lr", "0.05"], lambda c: c.lr == 0.05),
    (["--seed", "42"], lambda c: c.seed == 42),
    (["--fpr-iters", "5"], lambda c: c.distill.fpr_iters == 5),
    (["--fpr-lambda", "0.25"], lambda c: c.distill.fpr_lambda == 0.25),
    (["--fpr-mode", "jacobian-free"], lambda c: c.distill.fpr_mode == "jacobian-free"),
    (["--fpr-mode", "adaptive"], lambda c: c.distill.fpr_mode == "adaptive"),
    (["--fpr-attention-backward", "fp32"], lambda c: c.distill.fpr_attention_backward == "fp32"),
    (["--with-cut"], lambda c: c.distill.with_cut is True),
    (["--cut-weight", "1.5"], lambda c: c.distill.cut_weight == 1.5),
    (["--negative-prompt", "blurry"], lambda c: c.distill.negative_prompt == "blurry"),
    (["--frames-every", "2"], lambda c: c.frames_every == 2),
    (["--lr-schedule", "cosine"], lambda c: c.lr_schedule == "cosine"),
    (["--t-anneal-to", "300"], lambda c: c.t_anneal_to == 300),
]


@pytest.mark.parametrize("flags, check", FLAG_CASES, ids=[" ".join(f) for f, _ in FLAG_CASES])
def test_every_config_flag_reaches_the_config(fake, img, tmp_path, capsys, flags, check):
    code, out, err = run(capsys, *edit(img, tmp_path / "out", *flags))
    assert code == 0, err
    (call,) = fake.edits
    cfg = call["config"]
    assert isinstance(cfg, EditConfig) and isinstance(cfg.distill, DistillConfig)
    assert check(cfg)
    changed = {f for f in ("method", "steps", "lr", "seed", "frames_every", "lr_schedule", "t_anneal_to")
               if getattr(cfg, f) != getattr(
        EditConfig(), f)}
    changed |= {f"distill.{f}" for f in vars(DistillConfig()) if getattr(cfg.distill, f) != getattr(
        DistillConfig(), f)}
    assert len(changed) == 1, f"{flags} changed {changed}: a flag must change only its own field"


def test_no_flags_gives_the_default_config(fake, img, tmp_path, capsys):
    code, out, err = run(capsys, *edit(img, tmp_path / "out"))
    assert code == 0, err
    assert fake.edits[0]["config"] == EditConfig()
    assert fake.edits[0]["progress"] is True and fake.edits[0]["mask"] is None
    assert (fake.edits[0]["source"], fake.edits[0]["target"]) == ("a cat", "a pig")
    assert fake.load == [dict(model=None, device=None, dtype=None, allow_pickle=False)]


def test_model_flags_reach_load_prior(fake, img, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(edit_cli, "check_device", lambda name: None)     # this machine may have no cuda:1
    code, _, err = run(capsys, *edit(img, tmp_path / "out", "--model", "some/model", "--device", "cuda:1",
                                     "--dtype", "bf16", "--allow-pickle"))
    assert code == 0, err
    assert fake.load == [dict(model="some/model", device="cuda:1", dtype="bf16", allow_pickle=True)]


def test_mask_reaches_edit_image_at_image_size(fake, img, tmp_path, capsys):
    Image.new("L", (24, 16), 255).save(tmp_path / "mask.png")
    code, _, err = run(capsys, *edit(img, tmp_path / "out", "--mask", tmp_path / "mask.png"))
    assert code == 0, err
    mask = fake.edits[0]["mask"]
    assert mask.mode == "L" and mask.size == (48, 32)


def test_quiet_prints_nothing_and_turns_progress_off(fake, img, tmp_path, capsys):
    code, out, err = run(capsys, *edit(img, tmp_path / "out", "--quiet"))
    assert code == 0 and out == "" and err == ""
    assert fake.edits[0]["progress"] is False


def test_every_edit_option_is_covered_by_a_test():
    """A new flag must be added to FLAG_CASES (or the explicit list below) so it is proven to reach the config."""
    parser = cli.build_parser(["edit"])
    edit_parser = parser.subcommands["edit"]
    options = {s for a in edit_parser._actions for s in a.option_strings if s.startswith("--")} - {"--help"}
    covered = {f[0] for f, _ in FLAG_CASES} | {"--model", "--device", "--dtype", "--allow-pickle", "--mask",
                                               "--quiet", "--invert", "--out", "--source", "--target",
                                               "--overwrite", "--preset"}  # --preset: test_eval_fast_preset.py
    assert options == covered
    assert set(edit_cli.EDIT_FLAGS.values()) <= set(vars(EditConfig()))
    assert set(edit_cli.DISTILL_FLAGS.values()) <= set(vars(DistillConfig()))


def test_help_lists_the_method_variants_and_fpr_modes():
    from idsedit.variants import VARIANTS

    assert edit_cli.METHOD_NAMES_HELP.split(", ") == list(VARIANTS)
    assert set(METHODS) <= set(VARIANTS)
    assert edit_cli.FPR_MODES_HELP.split(", ") == list(FPR_MODES)


def test_edit_help_shows_config_defaults(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["edit", "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())             # argparse wraps lines
    assert "(default: 200)" in out and "(default: 7.5)" in out and "(default: ids)" in out


# ----------------------------------------------------------------------------------------------- outputs
def test_outputs_named_sized_and_recorded(fake, img, tmp_path, capsys):
    out_dir = tmp_path / "out"
    before = img.read_bytes()
    code, out, err = run(capsys, *edit(img, out_dir, "--method", "dds", "--steps", "4", "--frames-every", "2"))
    assert code == 0, err
    assert files_in(out_dir) == ["cat.dds.compare.png", "cat.dds.frames", "cat.dds.frames/step_0002.png",
                                 "cat.dds.frames/step_0004.png", "cat.dds.json", "cat.dds.png"]
    assert Image.open(output(out_dir, "cat.dds.png")).size == (48, 32)
    rec = json.loads(output(out_dir, "cat.dds.json").read_text())
    assert rec["config"]["method"] == "dds" and rec["config"]["steps"] == 4
    assert rec["input"] == str(img) and rec["model"] == "fake-model"
    assert rec["unet_calls"]["forward"] == 8 and rec["unet_calls_total"]["forward"] == 8
    assert rec["timings_s"] == {"total_s": 0.5}
    assert out.strip().startswith(f"{img} -> {output(out_dir, 'cat.dds.png')}") and "8 UNet calls" in out
    assert img.read_bytes() == before


def test_invert_writes_inverse_and_psnr(fake, img, tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, *edit(img, out_dir, "--invert", "--steps", "3"))
    assert code == 0, err
    assert fake.inverts[0]["config"].steps == 3
    assert {"cat.ids.png", "cat.ids.inverse.png", "cat.ids.compare.png", "cat.ids.json"} == set(files_in(out_dir))
    rec = json.loads(output(out_dir, "cat.ids.json").read_text())
    assert rec["invert"]["psnr_db"] == 31.5 and rec["invert"]["inverse_image"] == str(output(out_dir,
                                                                                           "cat.ids.inverse.png"))
    assert rec["unet_calls_total"]["forward"] == 12                   # both directions
    assert "PSNR 31.50 dB" in out
    assert Image.open(output(out_dir, "cat.ids.inverse.png")).size == (48, 32)


def test_overwrite_replaces_previous_frames(fake, img, tmp_path, capsys):
    out_dir = tmp_path / "out"
    assert run(capsys, *edit(img, out_dir, "--steps", "4", "--frames-every", "2"))[0] == 0
    frames = output(out_dir, "cat.ids.frames")
    (frames / "step_0003.png").write_bytes((frames / "step_0002.png").read_bytes())   # a stale frame
    assert run(capsys, *edit(img, out_dir, "--steps", "4", "--frames-every", "2", "--overwrite"))[0] == 0
    assert files_in(frames) == ["step_0002.png", "step_0004.png"]
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")]     # no temporary leftovers


# ----------------------------------------------------------------------------------------------- batches
def test_folder_batch_survives_a_bad_image(fake, tmp_path, capsys):
    folder = tmp_path / "pics"
    folder.mkdir()
    for name in ("a.png", "c.jpg"):
        Image.new("RGB", (32, 32), (0, 200, 0)).save(folder / name)
    (folder / "b.png").write_text("not an image")
    (folder / "notes.txt").write_text("ignored")
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, *edit(folder, out_dir))
    assert code == 1
    assert [e["image"].size for e in fake.edits] == [(32, 32), (32, 32)]
    assert {p for p in files_in(out_dir) if p.endswith(".ids.png")} == {"a.ids.png", "c.ids.png"}
    err_lines = err.strip().splitlines()
    assert any(line.startswith("error: ") and "b.png" in line for line in err_lines)
    assert "2 of 3 edits done, 1 failed" in err and "Traceback" not in err


def test_batch_keeps_going_after_a_bug_or_oom_in_one_edit(fake, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "pics"
    folder.mkdir()
    for name, colour in (("a.png", (1, 0, 0)), ("b.png", (2, 0, 0)), ("c.png", (3, 0, 0))):
        Image.new("RGB", (32, 32), colour).save(folder / name)
    real = edit2d.edit_image

    def flaky(prior, image, *a, **k):
        red = image.getpixel((0, 0))[0]
        if red == 1:
            raise ZeroDivisionError("a bug")
        if red == 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(prior, image, *a, **k)

    monkeypatch.setattr(edit2d, "edit_image", flaky)
    code, out, err = run(capsys, *edit(folder, tmp_path / "out"))
    assert code == 1
    assert "c.ids.png" in files_in(tmp_path / "out") and "a.ids.png" not in files_in(tmp_path / "out")
    assert "a.ids.json" not in files_in(tmp_path / "out") and "b.ids.json" not in files_in(tmp_path / "out")
    assert "Traceback" in err and "ZeroDivisionError" in err                  # a bug keeps its traceback
    assert any(line.startswith("error: ") and "b.png" in line and "out of memory" in line
               for line in err.splitlines())
    assert "1 of 3 edits done, 2 failed" in err


def test_same_stem_twice_gets_distinct_outputs(fake, tmp_path, capsys):
    folder = tmp_path / "pics"
    folder.mkdir()
    Image.new("RGB", (32, 32)).save(folder / "a.png")
    Image.new("RGB", (32, 32)).save(folder / "a.jpg")
    code, _, err = run(capsys, *edit(folder, tmp_path / "out"))
    assert code == 0, err
    assert len([p for p in (tmp_path / "out").iterdir() if KEY.sub("", p.name) == "a.ids.png"]) == 2


def test_manifest_prompts_and_methods_per_row(fake, tmp_path, capsys):
    for name in ("x.png", "y.png"):
        Image.new("RGB", (32, 32)).save(tmp_path / name)
    m = tmp_path / "edits.csv"
    m.write_text("image,source,target,method\nx.png,a red cube,a blue cube,dds\nx.png,a red cube,a red ball,\n"
                 "y.png,a cat,a dog,sds\n")
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "edit", m, "--out", out_dir, "--steps", "3", "--method", "pds")
    assert code == 0, err
    got = [(e["source"], e["target"], e["config"].method, e["config"].steps) for e in fake.edits]
    assert got == [("a red cube", "a blue cube", "dds", 3), ("a red cube", "a red ball", "pds", 3),
                   ("a cat", "a dog", "sds", 3)]
    assert {"x.dds.png", "x.pds.png", "y.sds.png"} <= set(files_in(out_dir))
    assert json.loads(output(out_dir, "y.sds.json").read_text())["manifest_line"] == 4


def test_manifest_is_validated_before_any_edit(fake, tmp_path, capsys):
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    m = tmp_path / "edits.jsonl"
    m.write_text('{"image": "x.png", "source": "a", "target": "b"}\n{"image": "gone.png", "source": "a", '
                 '"target": "b"}\n')
    code, out, err = run(capsys, "edit", m, "--out", tmp_path / "out")
    assert code == 1 and fake.edits == [] and fake.load == []
    assert err.count("\n") == 1 and "line 2" in err and "gone.png" in err


# ----------------------------------------------------------------------------------------------- errors
def assert_one_line_error(code, err, *phrases, exit_code=1):
    assert code == exit_code
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    for phrase in phrases:
        assert phrase in lines[0]


@pytest.mark.parametrize("make_input, phrases", [
    (lambda d: d / "missing.png", ["missing.png", "does not exist"]),
    (lambda d: _write(d / "text.png", "hello"), ["text.png", "not an image"]),
    (lambda d: _write(d / "empty.png", ""), ["empty.png", "empty"]),
    (lambda d: _save(Image.new("RGB", (4, 4)), d / "tiny.png"), ["tiny.png", "4x4"]),
    (lambda d: _mkdir(d / "nothing"), ["no images"]),
])
def test_bad_inputs(fake, tmp_path, capsys, make_input, phrases):
    code, out, err = run(capsys, *edit(make_input(tmp_path), tmp_path / "out"))
    assert_one_line_error(code, err, *phrases)
    assert not (tmp_path / "out").exists()


def _write(path, text):
    path.write_text(text)
    return path


def _save(im, path):
    im.save(path)
    return path


def _mkdir(path):
    path.mkdir()
    return path


@pytest.mark.parametrize("flags, phrases", [
    (["--method", "xds"], ["unknown method 'xds'", "sds", "dds", "cds", "pds", "ids"]),
    (["--fpr-mode", "fast"], ["unknown FPR mode 'fast'", "exact"]),
    (["--mask", "nomask.png"], ["mask", "does not exist"]),
])
def test_bad_flag_values_are_errors_before_loading(fake, img, tmp_path, capsys, flags, phrases):
    code, _, err = run(capsys, *edit(img, tmp_path / "out", *flags))
    assert_one_line_error(code, err, *phrases)
    assert fake.load == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("prompt_flag", ["--source", "--target"])
def test_empty_prompt(fake, img, tmp_path, capsys, prompt_flag):
    argv = edit(img, tmp_path / "out")
    argv[argv.index(prompt_flag) + 1] = "   "
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err, "prompt is empty")
    assert fake.load == []


@pytest.mark.parametrize("argv_tail", [
    ["--steps", "0"], ["--steps", "abc"], ["--guidance", "-1"], ["--lr", "nan"], ["--fpr-iters", "-1"],
    ["--frames-every", "-2"], ["--bogus"],
])
def test_usage_errors_exit_2(fake, img, tmp_path, capsys, argv_tail):
    with pytest.raises(SystemExit) as info:
        cli.main([str(a) for a in edit(img, tmp_path / "out", *argv_tail)])
    assert info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err and fake.edits == []


def test_missing_prompts_and_no_command_are_usage_errors(fake, img, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["edit", str(img), "--source", "a cat"])
    assert info.value.code == 2 and "--target" in capsys.readouterr().err
    assert cli.main([]) == 2
    m = tmp_path / "e.csv"
    m.write_text(f"image,source,target\n{img},a,b\n")
    with pytest.raises(SystemExit) as info:
        cli.main(["edit", str(m), "--source", "a cat"])
    assert info.value.code == 2 and "manifest" in capsys.readouterr().err


def test_out_must_not_overwrite_inputs(fake, tmp_path, capsys):
    import argparse

    from idsedit.manifest import EditJob

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    args = argparse.Namespace(model=None, invert=False)
    key = edit_cli.edit_key(EditJob(tmp_path / "a.png", "a", "b"), "ids", EditConfig(), args)
    clash = out_dir / f"a.ids.{key}.png"
    Image.new("RGB", (32, 32)).save(clash)                         # an input that is also a planned output
    before = clash.read_bytes()
    m = tmp_path / "e.csv"
    m.write_text(f"image,source,target\na.png,a,b\nout/{clash.name},a,b\n")
    code, _, err = run(capsys, "edit", m, "--out", out_dir)
    assert_one_line_error(code, err, "would overwrite the input")
    assert clash.read_bytes() == before and fake.edits == []


def test_out_is_the_input_folder_or_a_file(fake, tmp_path, capsys, img):
    code, _, err = run(capsys, *edit(img.parent, img.parent))
    assert_one_line_error(code, err, "is the input folder")
    code, _, err = run(capsys, *edit(img, img))
    assert_one_line_error(code, err, "is a file")
    assert files_in(img.parent) == ["cat.png"]


def test_invert_with_mask_is_refused(fake, img, tmp_path, capsys):
    Image.new("L", (48, 32), 255).save(tmp_path / "m.png")
    code, _, err = run(capsys, *edit(img, tmp_path / "out", "--invert", "--mask", tmp_path / "m.png"))
    assert_one_line_error(code, err, "--invert")


def test_library_error_during_edit_is_one_line(fake, img, tmp_path, capsys, monkeypatch):
    from idsedit.errors import IdseditError

    def boom(*a, **k):
        raise IdseditError("the ids update became\nnon-finite at t=500")

    monkeypatch.setattr(edit2d, "edit_image", boom)
    code, _, err = run(capsys, *edit(img, tmp_path / "out"))
    assert_one_line_error(code, err, "non-finite at t=500")
    assert not (tmp_path / "out").exists()


def test_out_of_memory_is_one_line(fake, img, tmp_path, capsys, monkeypatch):
    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(edit2d, "edit_image", oom)
    code, _, err = run(capsys, *edit(img, tmp_path / "out"))
    assert_one_line_error(code, err, "out of memory")


@pytest.mark.parametrize("device, phrase", [
    ("foo", "unknown --device 'foo'"), ("cuda", "no CUDA GPU"), ("cuda:1", "no CUDA GPU"), ("mps", "MPS"),
])
def test_bad_or_absent_device(fake, img, tmp_path, capsys, monkeypatch, device, phrase):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    code, _, err = run(capsys, *edit(img, tmp_path / "out", "--device", device))
    assert_one_line_error(code, err, phrase)
    assert fake.load == []


def test_missing_cuda_index(monkeypatch):
    from idsedit.errors import IdseditError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    edit_cli.check_device("cuda:1")
    with pytest.raises(IdseditError, match=r"only 2 CUDA device\(s\)"):
        edit_cli.check_device("cuda:2")


def test_unwritable_out_fails_before_loading(fake, img, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(edit_cli.os, "access", lambda path, mode: False)
    code, _, err = run(capsys, *edit(img, tmp_path / "out"))
    assert_one_line_error(code, err, "not writable")
    assert fake.load == []


# ----------------------------------------------------------------------------------------------- interrupts
def test_interrupt_during_edit_exits_130_with_no_outputs(fake, img, tmp_path, capsys, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(edit2d, "edit_image", interrupted)
    code, out, err = run(capsys, *edit(img, tmp_path / "out"))
    assert code == 130 and err.strip() == "interrupted"
    assert files_in(tmp_path / "out") == []


def test_interrupt_while_saving_leaves_no_partial_set(fake, img, tmp_path, capsys, monkeypatch):
    import idsedit.images as images

    def interrupted(text, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(images, "write_text", interrupted)           # the JSON, after the PNGs were written
    code, _, err = run(capsys, *edit(img, tmp_path / "out", "--frames-every", "100"))
    assert code == 130 and err.strip() == "interrupted"
    assert list((tmp_path / "out").iterdir()) == []                  # no outputs, no temporaries


# ----------------------------------------------------------------------------------------------- warnings
def test_warnings_are_one_line_without_source(fake, img, tmp_path, capsys, monkeypatch):
    real = edit2d.edit_image

    def warn_then_edit(*a, **k):
        warnings.warn("the target prompt has 90 tokens,\nmore than the limit")
        return real(*a, **k)

    monkeypatch.setattr(edit2d, "edit_image", warn_then_edit)
    code, _, err = run(capsys, *edit(img, tmp_path / "out"))
    assert code == 0
    assert err.strip().splitlines() == ["warning: the target prompt has 90 tokens, more than the limit"]


def test_rgba_input_warns_once_and_still_edits(fake, tmp_path, capsys):
    path = tmp_path / "t.png"
    Image.new("RGBA", (32, 32), (255, 0, 0, 0)).save(path)
    code, _, err = run(capsys, *edit(path, tmp_path / "out"))
    assert code == 0
    assert err.strip().startswith("warning: ") and "white" in err and err.count("\n") == 1


# ----------------------------------------------------------------------------------------------- plugins
def test_missing_plugin_is_one_line(capsys, monkeypatch):
    monkeypatch.setitem(cli.PLUGINS, "bench", ("idsedit.no_such_module_xyz", "help"))
    code, _, err = run(capsys, "bench", "--some-flag", "3")
    assert_one_line_error(code, err, "idsedit bench", "not available")


def test_plugin_with_missing_dependency(capsys, monkeypatch):
    monkeypatch.setitem(cli.PLUGINS, "demo", ("fake_plugin_dep", "help"))

    def importer(name):
        raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")

    monkeypatch.setattr(cli.importlib, "import_module", importer)
    code, _, err = run(capsys, "demo")
    assert_one_line_error(code, err, "matplotlib", "pip install")


def test_plugin_gets_its_flags_and_namespace(capsys, monkeypatch):
    mod = types.ModuleType("fake_plugin")
    got = {}

    def add_arguments(parser):
        parser.add_argument("--n", type=int, default=1)

    def cli_main(args):
        got["n"] = args.n
        print("ran")
        return 3

    mod.add_arguments, mod.cli_main = add_arguments, cli_main
    monkeypatch.setitem(sys.modules, "fake_plugin", mod)
    monkeypatch.setitem(cli.PLUGINS, "eval", ("fake_plugin", "help"))
    code, out, _ = run(capsys, "eval", "--n", "5")
    assert code == 3 and got == {"n": 5} and out == "ran\n"


def test_plugins_are_registered_and_not_imported_for_other_commands(capsys, monkeypatch):
    imported = []
    monkeypatch.setattr(cli, "_attach_plugin", lambda p, module: imported.append(module))
    parser = cli.build_parser(["edit", "x.png"])
    assert {"edit", "bench", "demo", "train-mini", "eval"} <= set(parser.subcommands)
    assert imported == ["idsedit.edit_cli"]                           # the selected command's module only


def test_top_level_help_does_not_import_torch():
    import subprocess

    code = ("import sys, idsedit.cli as c; c.build_parser(['--help']); c.build_parser(['edit', 'x.png']); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("idsedit ")


# ----------------------------------------------------------------------------------------------- reruns (issue 11)
def _bytes(folder):
    return {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_edit_command_is_a_routed_module():
    """cli.py only routes: `edit` is a PLUGINS entry whose module has add_arguments/cli_main."""
    assert cli.PLUGINS["edit"][0] == "idsedit.edit_cli"
    assert callable(edit_cli.add_arguments) and callable(edit_cli.cli_main)
    assert not hasattr(cli, "run_edit") and not hasattr(cli, "write_outputs")


def test_rerun_of_the_same_edit_is_skipped_and_other_edits_never_collide(fake, img, tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, *edit(img, out_dir, "--steps", "2"))
    assert code == 0, err
    first = _bytes(out_dir)
    code, out, err = run(capsys, *edit(img, out_dir, "--steps", "2"))   # the same edit again: nothing to do
    assert code == 0 and len(fake.edits) == 1 and "already done" in out and _bytes(out_dir) == first
    assert len(fake.load) == 1                                            # not even the model was loaded
    for flags in (["--target", "a dog"], ["--seed", "1"], ["--method", "dds"], ["--guidance", "3"]):
        argv = edit(img, out_dir, "--steps", "2")
        if flags[0] == "--target":
            argv[argv.index("--target") + 1] = flags[1]
        else:
            argv += flags
        assert run(capsys, *argv)[0] == 0
    assert len(fake.edits) == 5 and len(list(out_dir.glob("*.json"))) == 5   # five edits, five sets
    assert {k: v for k, v in _bytes(out_dir).items() if k in first} == first  # the first set is untouched


def test_overwrite_runs_the_same_edit_again(fake, img, tmp_path, capsys):
    out_dir = tmp_path / "out"
    assert run(capsys, *edit(img, out_dir, "--steps", "2"))[0] == 0
    assert run(capsys, *edit(img, out_dir, "--steps", "2", "--overwrite"))[0] == 0
    assert len(fake.edits) == 2 and len(list(out_dir.glob("*.json"))) == 1


def test_batch_rerun_resumes_after_ctrl_c_and_says_how_many_it_skipped(fake, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "pics"
    folder.mkdir()
    for name, red in (("a.png", 1), ("b.png", 2), ("c.png", 3)):
        Image.new("RGB", (32, 32), (red, 0, 0)).save(folder / name)
    real = edit2d.edit_image

    def ctrl_c_at_c(prior, image, *a, **k):
        if image.getpixel((0, 0))[0] == 3:
            raise KeyboardInterrupt
        return real(prior, image, *a, **k)

    monkeypatch.setattr(edit2d, "edit_image", ctrl_c_at_c)
    code, _, err = run(capsys, *edit(folder, tmp_path / "out"))
    assert code == 130 and files_in(tmp_path / "out") == ["a.ids.compare.png", "a.ids.json", "a.ids.png",
                                                          "b.ids.compare.png", "b.ids.json", "b.ids.png"]
    monkeypatch.setattr(edit2d, "edit_image", real)
    fake.edits.clear()
    code, out, err = run(capsys, *edit(folder, tmp_path / "out"))
    assert code == 0, err
    assert [e["image"].getpixel((0, 0))[0] for e in fake.edits] == [3]       # only c ran
    assert "skipped 2 of 3 edits" in out and "1 of 3 edits done, 0 failed, 2 skipped" in out


def test_an_incomplete_set_is_run_again(fake, img, tmp_path, capsys):
    out_dir = tmp_path / "out"
    assert run(capsys, *edit(img, out_dir))[0] == 0
    output(out_dir, "cat.ids.compare.png").unlink()                        # e.g. deleted by hand
    assert run(capsys, *edit(img, out_dir))[0] == 0
    assert len(fake.edits) == 2 and files_in(out_dir) == ["cat.ids.compare.png", "cat.ids.json", "cat.ids.png"]


FULL_SET = ("--invert", "--frames-every", "1", "--steps", "2")   # png, compare, inverse, json, 2 frames


@pytest.mark.parametrize("flags, n_files, failing", [((), 3, k) for k in (1, 2, 3, 4, 5)] +
                         [(FULL_SET, 6, k) for k in (1, 2, 3, 5, 7, 9)])
def test_a_failed_rename_keeps_the_previous_set_whole(fake, img, tmp_path, capsys, monkeypatch, flags, n_files,
                                                       failing):
    """All outputs of one edit are replaced together or not at all: with the k-th os.replace of the rerun failing
    (disk full), the previous run's PNG, compare PNG (inverse PNG, frames) and JSON are all still there, unchanged,
    and nothing temporary is left."""
    import errno
    import os

    out_dir = tmp_path / "out"
    assert run(capsys, *edit(img, out_dir, *flags))[0] == 0
    before = _bytes(out_dir)
    assert len(before) == n_files
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == failing:
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(edit2d, "edit_image", _edit_with_other_pixels(edit2d.edit_image))
    monkeypatch.setattr(os, "replace", replace)
    code, _, err = run(capsys, *edit(img, out_dir, *flags, "--overwrite"))
    monkeypatch.setattr(os, "replace", real_replace)
    assert len(calls) >= failing
    assert_one_line_error(code, err, "No space left on device")
    assert _bytes(out_dir) == before                   # the previous set, whole and unchanged
    assert sorted(p.name for p in out_dir.iterdir() if p.name.startswith(".")) == []


def _edit_with_other_pixels(real):
    def edit_image(prior, image, *a, **k):
        result = real(prior, image, *a, **k)
        result.image = Image.new("RGB", result.image.size, (1, 2, 3))
        return result
    return edit_image


# ----------------------------------------------------------------------------------------------- variants (issue 11)
VARIANT_CASES = [
    (["--method", "ids-jf"], "ids-jf", lambda c: c.method == "ids" and c.distill.fpr_mode == "jacobian-free"),
    (["--method", "JF"], "ids-jf", lambda c: c.method == "ids" and c.distill.fpr_mode == "jacobian-free"),
    (["--method", "ids-adaptive", "--fpr-iters", "5"], "ids-adaptive",
     lambda c: c.distill.fpr_mode == "adaptive" and c.distill.fpr_iters == 5),
    (["--method", "IDS+CUT", "--cut-weight", "1"], "ids+cut",
     lambda c: c.method == "ids" and c.distill.with_cut and c.distill.cut_weight == 1.0),
    (["--method", "ids-cut"], "ids+cut", lambda c: c.distill.with_cut and c.distill.fpr_mode == "exact"),
    (["--method", "ids", "--fpr-mode", "adaptive"], "ids", lambda c: c.distill.fpr_mode == "adaptive"),
    (["--method", "ids-jf", "--fpr-mode", "jacobian-free"], "ids-jf", lambda c: c.distill.fpr_mode == "jacobian-free"),
]


@pytest.mark.parametrize("flags, name, check", VARIANT_CASES, ids=[" ".join(f) for f, _, _ in VARIANT_CASES])
def test_method_takes_every_variant_name(fake, img, tmp_path, capsys, flags, name, check):
    code, out, err = run(capsys, *edit(img, tmp_path / "out", *flags))
    assert code == 0, err
    assert check(fake.edits[0]["config"])
    assert files_in(tmp_path / "out") == [f"cat.{name}.compare.png", f"cat.{name}.json", f"cat.{name}.png"]
    rec = json.loads(output(tmp_path / "out", f"cat.{name}.json").read_text())
    assert rec["variant"] == name and rec["method"] == "ids"


@pytest.mark.parametrize("flags, phrase", [
    (["--method", "ids-jf", "--fpr-mode", "exact"], "--method ids-jf means fpr-mode jacobian-free"),
    (["--method", "ids+cut", "--fpr-mode", "adaptive"], "--method ids+cut means fpr-mode exact"),
    (["--method", "ids-adaptive", "--fpr-mode", "jacobian-free"], "drop --fpr-mode"),
])
def test_flags_that_contradict_a_variant_are_refused(fake, img, tmp_path, capsys, flags, phrase):
    code, _, err = run(capsys, *edit(img, tmp_path / "out", *flags))
    assert_one_line_error(code, err, phrase)
    assert fake.load == []


def test_manifest_rows_take_variant_names(fake, tmp_path, capsys):
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    m = tmp_path / "edits.jsonl"
    m.write_text('{"image": "x.png", "source": "a", "target": "b", "method": "ids-jf"}\n'
                 '{"image": "x.png", "source": "a", "target": "b", "method": "ids+cut"}\n')
    code, _, err = run(capsys, "edit", m, "--out", tmp_path / "out")
    assert code == 0, err
    assert [(e["config"].distill.fpr_mode, e["config"].distill.with_cut) for e in fake.edits] == [
        ("jacobian-free", False), ("exact", True)]
    assert {"x.ids-jf.png", "x.ids+cut.png"} <= set(files_in(tmp_path / "out"))


# ----------------------------------------------------------------------------------------------- plugins, folders
@pytest.mark.parametrize("error", [OSError(28, "No space left on device", "/data/eval/rows.jsonl"),
                                   PermissionError(13, "Permission denied", "/data/eval")])
def test_plugin_os_errors_are_one_line(capsys, monkeypatch, error):
    mod = types.ModuleType("fake_plugin_io")

    def cli_main(args):
        raise error

    mod.cli_main = cli_main
    monkeypatch.setitem(sys.modules, "fake_plugin_io", mod)
    monkeypatch.setitem(cli.PLUGINS, "eval", ("fake_plugin_io", "help"))
    code, _, err = run(capsys, "eval")
    assert_one_line_error(code, err, error.strerror, error.filename)


def test_folder_mode_takes_every_format_load_image_reads(fake, tmp_path, capsys):
    from idsedit.images import IMAGE_SUFFIXES

    folder = tmp_path / "pics"
    folder.mkdir()
    names = ["a.png", "b.JPG", "c.webp", "d.bmp", "e.gif", "f.tif", "g.tiff", "h.ppm", "i.tga"]
    for i, name in enumerate(names):
        Image.new("RGB", (32, 32), (10 * i, 0, 0)).save(folder / name)
    code, out, err = run(capsys, *edit(folder, tmp_path / "out"))
    assert code == 0, err
    assert len(fake.edits) == len(names) and f"{len(names)} of {len(names)} edits done" in out
    assert {".tif", ".tiff", ".gif", ".webp", ".bmp", ".png", ".jpg", ".jpeg"} <= set(IMAGE_SUFFIXES)
