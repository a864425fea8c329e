"""images.py: every odd image a user may hand us, the resize policy, atomic writes, the comparison figure."""

import json
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from idsedit.errors import IdseditError, InputImageError
from idsedit.images import (
    comparison_image, fit_size, fit_to_model, list_images, load_image, load_mask, restore_size, save_image_atomic,
    save_json_atomic, to_jsonable,
)


def _gradient(w=40, h=30):
    """An RGB test picture with distinct pixels (x -> red, y -> green)."""
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.uint8)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, np.full_like(x, 77)], -1))


def _load_quiet(path, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        img = load_image(path, **kw)
    return img, [str(w.message) for w in caught]


# ----------------------------------------------------------------------------------------------- modes
def test_rgb_png_round_trips_exactly(tmp_path):
    src = _gradient()
    src.save(tmp_path / "a.png")
    img, warned = _load_quiet(tmp_path / "a.png")
    assert img.mode == "RGB" and img.size == (40, 30) and not warned
    assert np.array_equal(np.asarray(img), np.asarray(src))


def test_rgba_is_composited_on_white_with_warning(tmp_path):
    a = np.zeros((20, 20, 4), np.uint8)
    a[..., 0] = 200                       # red everywhere
    a[:10, :, 3] = 255                    # top half opaque, bottom half fully transparent
    Image.fromarray(a, "RGBA").save(tmp_path / "t.png")
    img, warned = _load_quiet(tmp_path / "t.png")
    px = np.asarray(img)
    assert img.mode == "RGB"
    assert tuple(px[0, 0]) == (200, 0, 0)
    assert tuple(px[19, 0]) == (255, 255, 255)
    assert len(warned) == 1 and "transparent" in warned[0] and "t.png" in warned[0]


def test_opaque_rgba_does_not_warn(tmp_path):
    _gradient().convert("RGBA").save(tmp_path / "o.png")
    img, warned = _load_quiet(tmp_path / "o.png")
    assert img.mode == "RGB" and not warned


def test_la_and_l_and_1bit(tmp_path):
    la = Image.new("LA", (20, 20), (100, 0))
    la.paste((30, 255), (0, 0, 10, 20))
    la.save(tmp_path / "la.png")
    Image.new("L", (20, 20), 123).save(tmp_path / "l.png")
    Image.new("1", (20, 20), 1).save(tmp_path / "one.png")
    img, warned = _load_quiet(tmp_path / "la.png")
    assert img.getpixel((0, 0)) == (30, 30, 30) and img.getpixel((15, 0)) == (255, 255, 255) and warned
    assert _load_quiet(tmp_path / "l.png")[0].getpixel((3, 3)) == (123, 123, 123)
    assert _load_quiet(tmp_path / "one.png")[0].getpixel((3, 3)) == (255, 255, 255)


def test_16bit_greyscale_is_scaled_not_clipped(tmp_path):
    a = np.array([[0, 257 * 100, 65535, 32896]], np.uint16).repeat(16, 0).repeat(4, 1)   # 16x16
    Image.fromarray(a).save(tmp_path / "g16.png")                 # Pillow writes/reads this as I;16
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    img, _ = _load_quiet(tmp_path / "g16.png")
    row = np.asarray(img)[0, ::4, 0]
    assert row.tolist() == [0, 100, 255, 128]


def test_32bit_integer_mode_I_is_read_as_16bit(tmp_path):
    a = np.array([[0, 257 * 10, 65535, 257 * 200]], np.int32).repeat(16, 0).repeat(4, 1)
    im = Image.fromarray(a)
    assert im.mode == "I"
    im.save(tmp_path / "i32.tif")
    img, _ = _load_quiet(tmp_path / "i32.tif")
    assert np.asarray(img)[0, ::4, 0].tolist() == [0, 10, 255, 200]


def test_mode_I_out_of_16bit_range_is_stretched_with_warning(tmp_path):
    a = np.array([[-1000, 0, 1000]], np.int32).repeat(16, 0).repeat(6, 1)
    Image.fromarray(a).save(tmp_path / "wide.tif")
    img, warned = _load_quiet(tmp_path / "wide.tif")
    assert np.asarray(img)[0, ::6, 0].tolist() == [0, 128, 255]
    assert any("stretched" in w for w in warned)


def test_float_mode_F_in_unit_range(tmp_path):
    a = np.array([[0.0, 0.5, 1.0]], np.float32).repeat(16, 0).repeat(6, 1)
    Image.fromarray(a).save(tmp_path / "f.tif")
    img, _ = _load_quiet(tmp_path / "f.tif")
    assert np.asarray(img)[0, ::6, 0].tolist() == [0, 128, 255]


def test_palette_with_transparency(tmp_path):
    p = Image.new("P", (20, 20), 0)
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    p.paste(1, (10, 0, 20, 20))
    p.info["transparency"] = 1           # colour index 1 (blue) is transparent
    p.save(tmp_path / "p.png", transparency=1)
    img, warned = _load_quiet(tmp_path / "p.png")
    assert img.getpixel((0, 0)) == (255, 0, 0)
    assert img.getpixel((15, 0)) == (255, 255, 255)
    assert warned


def test_palette_without_transparency(tmp_path):
    _gradient().convert("P").save(tmp_path / "p.gif")
    img, warned = _load_quiet(tmp_path / "p.gif")
    assert img.mode == "RGB" and img.size == (40, 30) and not warned


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)   # pure red in CMYK
    img, _ = _load_quiet(tmp_path / "c.jpg")
    r, g, b = img.getpixel((10, 10))
    assert img.mode == "RGB" and r > 230 and g < 30 and b < 30


def test_exif_rotated_jpeg_is_made_upright(tmp_path):
    src = Image.new("RGB", (40, 20), (0, 0, 255))
    src.paste((255, 0, 0), (0, 0, 20, 20))                      # left half red
    exif = Image.Exif()
    exif[0x0112] = 6                                             # orientation: rotate 90 CW to display
    src.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    img, _ = _load_quiet(tmp_path / "rot.jpg")
    assert img.size == (20, 40)                                  # width and height swapped
    top = img.getpixel((10, 5))
    assert top[0] > 200 and top[2] < 60                          # the red half is now on top


def test_animated_gif_uses_first_frame_with_warning(tmp_path):
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    img, warned = _load_quiet(tmp_path / "anim.gif")
    assert img.getpixel((5, 5))[0] > 200 and img.getpixel((5, 5))[1] < 60
    assert any("3 frames" in w for w in warned)


# ----------------------------------------------------------------------------------------------- bad files
@pytest.mark.parametrize("make, phrase", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "is a folder"),
    (lambda p: p.write_bytes(b""), "is empty"),
    (lambda p: p.write_text("hello, I am not a picture\n"), "not an image"),
])
def test_unusable_files_raise_one_line_error_naming_the_file(tmp_path, make, phrase):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(InputImageError) as info:
        load_image(path)
    msg = str(info.value)
    assert phrase in msg and "bad.png" in msg and "\n" not in msg


def test_formats_that_run_external_programs_are_refused(tmp_path):
    Image.new("RGB", (20, 20)).save(tmp_path / "page.eps")      # Pillow renders EPS with Ghostscript
    with pytest.raises(InputImageError, match=r"page\.eps is not an image in a supported format"):
        load_image(tmp_path / "page.eps")


def test_common_formats_are_read(tmp_path):
    for name in ("a.png", "a.jpg", "a.webp", "a.bmp", "a.gif", "a.tif", "a.ppm", "a.tga"):
        _gradient().save(tmp_path / name)
        assert load_image(tmp_path / name).size == (40, 30), name


def test_truncated_png(tmp_path):
    _gradient(200, 200).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputImageError, match=r"cut\.png.*(truncated|corrupt)"):
        load_image(tmp_path / "cut.png")


def test_tiny_image_is_refused(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "tiny.png")
    with pytest.raises(InputImageError, match=r"tiny\.png is 4x4 pixels.*at least 16 px"):
        load_image(tmp_path / "tiny.png")


def test_huge_image_is_refused_before_decoding(tmp_path):
    Image.new("L", (2000, 1500)).save(tmp_path / "big.png")       # 3 MP, limit lowered to 1 MP
    with pytest.raises(InputImageError, match=r"big\.png is 2000x1500 pixels.*downscale"):
        load_image(tmp_path / "big.png", max_pixels=1_000_000)


def test_decompression_bomb_is_an_input_error(tmp_path, monkeypatch):
    Image.new("L", (300, 300)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)         # Pillow itself refuses above 2x this
    with pytest.raises(InputImageError, match="too large"):
        load_image(tmp_path / "bomb.png")


# ----------------------------------------------------------------------------------------------- masks
def test_mask_is_L_at_image_size_white_editable(tmp_path):
    m = Image.new("RGB", (20, 10), (0, 0, 0))
    m.paste((255, 255, 255), (10, 0, 20, 10))
    m.save(tmp_path / "m.png")
    mask = load_mask(tmp_path / "m.png", (40, 20))
    assert mask.mode == "L" and mask.size == (40, 20)
    assert mask.getpixel((2, 10)) == 0 and mask.getpixel((38, 10)) == 255


def test_mask_alpha_counts_transparent_as_keep(tmp_path):
    a = np.zeros((16, 16, 4), np.uint8)
    a[..., :3] = 255
    a[:, 8:, 3] = 255                                            # right half opaque white, left transparent
    Image.fromarray(a, "RGBA").save(tmp_path / "ma.png")
    mask = load_mask(tmp_path / "ma.png", (16, 16))
    assert mask.getpixel((2, 2)) == 0 and mask.getpixel((12, 2)) == 255


def test_mask_errors(tmp_path):
    Image.new("L", (20, 20), 0).save(tmp_path / "black.png")
    Image.new("L", (40, 20), 255).save(tmp_path / "wide.png")
    with pytest.raises(InputImageError, match="entirely black"):
        load_mask(tmp_path / "black.png", (20, 20))
    with pytest.raises(InputImageError, match="aspect ratio"):
        load_mask(tmp_path / "wide.png", (20, 20))
    with pytest.raises(InputImageError, match="does not exist"):
        load_mask(tmp_path / "nope.png", (20, 20))


# ----------------------------------------------------------------------------------------------- resizing
@pytest.mark.parametrize("size, resolution, multiple, expected", [
    ((1000, 750), 512, 64, (512, 384)),     # 4:3 landscape
    ((750, 1000), 512, 64, (384, 512)),     # 3:4 portrait
    ((512, 512), 512, 64, (512, 512)),      # already native
    ((64, 64), 512, 64, (512, 512)),        # small square is enlarged
    ((1920, 1080), 512, 64, (512, 320)),    # 16:9: 288 is halfway between 256 and 320, rounds up
    ((3000, 100), 512, 64, (512, 64)),      # extreme panorama: at least one multiple
    ((1000, 750), 64, 8, (64, 48)),         # the mini prior
    ((100, 60), 64, 8, (64, 40)),           # 38.4 -> 40
])
def test_fit_size(size, resolution, multiple, expected):
    assert fit_size(size, resolution, multiple) == expected


def test_fit_size_rounds_to_nearest_multiple():
    for w in range(16, 600, 7):
        for h in (16, 100, 333, 599):
            fw, fh = fit_size((w, h), 512, 64)
            assert fw % 64 == 0 and fh % 64 == 0 and max(fw, fh) == 512
            for got, exact in ((fw, w * 512 / max(w, h)), (fh, h * 512 / max(w, h))):
                assert got == 64 or abs(got - exact) <= 32 + 1e-9


def test_fit_to_model_and_restore_size_keep_content():
    src = _gradient(300, 200)
    small = fit_to_model(src, 64, 8)
    assert small.size == (64, 40) and small.mode == "RGB"
    back = restore_size(small, src.size)
    assert back.size == (300, 200)
    err = np.abs(np.asarray(back, float) - np.asarray(src, float)).mean()
    assert err < 4.0                                              # a smooth gradient survives the round trip
    same = fit_to_model(_gradient(64, 64), 64, 8)
    assert np.array_equal(np.asarray(same), np.asarray(_gradient(64, 64)))


def test_fit_size_rejects_bad_arguments():
    with pytest.raises(ValueError, match="multiple=0"):
        fit_size((10, 10), 512, 0)


# ----------------------------------------------------------------------------------------------- writing
def test_save_image_atomic_writes_and_leaves_no_temp(tmp_path):
    out = save_image_atomic(_gradient(), tmp_path / "sub" / "x.png")
    assert out.is_file() and Image.open(out).size == (40, 30)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["x.png"]


def test_save_image_atomic_failure_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "x.png"
    target.write_bytes(b"old")

    def boom(self, fp, format=None, **kw):
        fp.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_image_atomic(_gradient(), target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_save_image_atomic_unknown_suffix(tmp_path):
    with pytest.raises(IdseditError, match="format"):
        save_image_atomic(_gradient(), tmp_path / "x.unknownext")
    assert not list(tmp_path.iterdir())


def test_save_json_atomic_handles_paths_tuples_numpy_and_inf(tmp_path):
    obj = {"path": tmp_path / "a.png", "sizes": (1, 2), "psnr": float("inf"), "x": np.float32(1.5),
           "n": np.int64(3)}
    save_json_atomic(obj, tmp_path / "r.json")
    back = json.loads((tmp_path / "r.json").read_text())
    assert back == {"path": str(tmp_path / "a.png"), "sizes": [1, 2], "psnr": None, "x": 1.5, "n": 3}
    assert to_jsonable({1: {2, }}) == {"1": [2]}


def test_save_json_atomic_unserialisable_leaves_nothing(tmp_path, monkeypatch):
    import idsedit.images as images

    monkeypatch.setattr(images.json, "dumps", lambda *a, **k: (_ for _ in ()).throw(ValueError("no")))
    with pytest.raises(ValueError):
        save_json_atomic({"a": 1}, tmp_path / "r.json")
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------- misc
def test_comparison_image_layout():
    a, b = Image.new("RGB", (64, 48), (255, 0, 0)), Image.new("RGB", (64, 48), (0, 0, 255))
    fig = comparison_image(a, b, ("source", "target: " + "a very long prompt " * 10))
    assert fig.mode == "RGB" and fig.height > 256 and fig.width >= 2 * 256 * 64 // 48
    px = np.asarray(fig)
    assert tuple(px[-1, 5]) == (255, 0, 0) and tuple(px[-1, -5]) == (0, 0, 255)
    assert (px[:10] < 128).any()                                  # some label text was drawn in the band
    three = comparison_image(a, b, ("a", "b", "c"), a)
    assert three.width > fig.width
    with pytest.raises(ValueError, match="labels"):
        comparison_image(a, b, ("only one",))


def test_comparison_image_non_latin_labels_with_either_font(monkeypatch):
    import idsedit.images as images
    from PIL import ImageFont

    a = Image.new("RGB", (32, 32))
    labels = ("source: 一只猫 🐱", "target: ein Hund über")
    assert comparison_image(a, a, labels).height > 32
    monkeypatch.setattr(images, "_font", lambda size: ImageFont.load_default_imagefont())   # no FreeType
    assert comparison_image(a, a, labels).height > 32


def test_list_images_sorted_filtered(tmp_path):
    for name in ("b.PNG", "a.jpg", "c.webp", "d.bmp", "e.jpeg", "notes.txt", ".hidden.png"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.webp", "d.bmp", "e.jpeg"]
    with pytest.raises(InputImageError):
        list_images(tmp_path / "a.jpg")


def test_messages_are_single_line(tmp_path):
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    with pytest.raises(InputImageError) as info:
        load_image(tmp_path / "x.png")
    assert "\n" not in str(info.value) and "x.png" in str(info.value)


# ----------------------------------------------------------------------------------------------- issue 11
def test_folder_suffixes_are_exactly_those_load_image_reads(tmp_path):
    """One shared list: every suffix Pillow registers for a format load_image opens, and each of them is read."""
    from idsedit.images import IMAGE_SUFFIXES, READ_FORMATS

    registered = {ext for ext, fmt in Image.registered_extensions().items() if fmt in READ_FORMATS and fmt in Image.OPEN}
    assert set(IMAGE_SUFFIXES) == registered
    assert {".tif", ".tiff", ".gif", ".webp", ".bmp", ".png", ".jpg", ".jpeg", ".ppm", ".tga"} <= set(IMAGE_SUFFIXES)
    for i, name in enumerate(["a.tif", "b.TIFF", "c.gif", "d.ppm", "e.tga", "f.webp", "g.bmp"]):
        _gradient().save(tmp_path / name)
    found = list_images(tmp_path)
    assert [p.name for p in found] == ["a.tif", "b.TIFF", "c.gif", "d.ppm", "e.tga", "f.webp", "g.bmp"]
    for p in found:
        assert _load_quiet(p)[0].size == (40, 30)


def _tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


def _new_set(tmp_path):
    """Temporaries for a new a.png (file), b/ (folder with one file) and c.json; the old set exists already."""
    from idsedit.images import temp_near

    moves = []
    for name, data in (("a.png", b"new-a"), ("c.json", b"new-c")):
        tmp = temp_near(tmp_path / name)
        tmp.write_bytes(data)
        moves.append((tmp, tmp_path / name))
    d = temp_near(tmp_path / "b", folder=True)
    (d / "f1").write_bytes(b"new-f1")
    moves.insert(1, (d, tmp_path / "b"))
    return moves


def _old_set(tmp_path):
    (tmp_path / "a.png").write_bytes(b"old-a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "f0").write_bytes(b"old-f0")
    (tmp_path / "c.json").write_bytes(b"old-c")
    (tmp_path / "stale.png").write_bytes(b"stale")


def test_replace_together_replaces_files_and_folders_and_removes_stale(tmp_path):
    from idsedit.images import replace_together

    _old_set(tmp_path)
    replace_together(_new_set(tmp_path), remove=[tmp_path / "stale.png"])
    assert _tree(tmp_path) == {"a.png": b"new-a", "b": None, "b/f1": b"new-f1", "c.json": b"new-c"}


@pytest.mark.parametrize("failing", range(1, 8))
def test_replace_together_is_all_or_nothing(tmp_path, monkeypatch, failing):
    """The k-th rename fails: the old set (files, folder, the file to remove) is back exactly, no temporaries."""
    from idsedit.images import replace_together

    _old_set(tmp_path)
    before = _tree(tmp_path)
    moves = _new_set(tmp_path)
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == failing:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space"):
        replace_together(moves, remove=[tmp_path / "stale.png"])
    monkeypatch.setattr(os, "replace", real)
    assert _tree(tmp_path) == before
