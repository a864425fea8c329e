"""manifest.py: CSV/JSONL parsing, path resolution, and errors with line numbers for every bad row."""

import json

import pytest
from PIL import Image

from idsedit.errors import IdseditError
from idsedit.manifest import EditJob, is_manifest, read_manifest

METHODS = ["cds", "dds", "ids", "pds", "sds"]


@pytest.fixture
def folder(tmp_path):
    """A folder with two images and a mask; manifests are written next to them."""
    for name in ("a.png", "b.png", "m.png"):
        Image.new("RGB", (32, 32)).save(tmp_path / name)
    return tmp_path


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_basic_relative_paths_resolve_against_manifest_folder(folder, monkeypatch, tmp_path_factory):
    m = _write(folder / "edits.csv", "image,source,target,mask,method\n"
                                     "a.png,a cat,a pig,m.png,DDS\n"
                                     "b.png,\"a cat, sitting\",\"a dog, sitting\",,\n")
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))       # not the manifest's folder
    jobs = read_manifest(m, METHODS)
    assert jobs == [
        EditJob(folder / "a.png", "a cat", "a pig", folder / "m.png", "dds", 2),
        EditJob(folder / "b.png", "a cat, sitting", "a dog, sitting", None, None, 3),
    ]


def test_csv_header_only_required_columns_any_order_and_bom(folder):
    m = folder / "e.csv"
    m.write_bytes("\ufeffTarget, Source ,image\r\na pig,a cat,a.png\r\n\r\n".encode("utf-8"))
    jobs = read_manifest(m, METHODS)
    assert len(jobs) == 1 and jobs[0].source == "a cat" and jobs[0].target == "a pig" and jobs[0].mask is None


def test_jsonl_basic_and_absolute_paths(folder):
    rows = [{"image": str(folder / "a.png"), "source": "a cat", "target": "a pig"},
            {"image": "b.png", "source": "x", "target": "y", "method": "ids", "mask": "m.png"}]
    m = _write(folder / "e.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    jobs = read_manifest(m, METHODS)
    assert [j.image for j in jobs] == [folder / "a.png", folder / "b.png"]
    assert jobs[1].method == "ids" and jobs[1].mask == folder / "m.png" and jobs[1].line == 2


@pytest.mark.parametrize("text, phrase", [
    ("image,source\na.png,a cat\n", "missing column 'target'"),
    ("image,source,target,metod\na.png,a,b,ids\n", "unknown column 'metod'"),
    ("image,source,target,\na.png,a,b,\n", "empty column name"),
    ("image,source,target,image\na.png,a,b,b.png\n", "appears twice"),
    ("", "is empty"),
    ("image,source,target\n", "has no rows"),
])
def test_csv_header_errors(folder, text, phrase):
    with pytest.raises(IdseditError, match=phrase):
        read_manifest(_write(folder / "e.csv", text), METHODS)


def test_all_bad_rows_reported_with_line_numbers(folder):
    m = _write(folder / "e.csv", "image,source,target,method\n"
                                 "a.png,a cat,a pig,ids\n"           # line 2: fine
                                 "missing.png,a cat,a pig,\n"        # line 3: no such file
                                 "b.png,,a pig,\n"                   # line 4: empty source
                                 "b.png,a cat,a pig,xyz\n"           # line 5: unknown method
                                 "b.png,a cat\n")                    # line 6: too few fields
    with pytest.raises(IdseditError) as info:
        read_manifest(m, METHODS)
    msg = str(info.value)
    assert "\n" not in msg
    assert "line 3: image 'missing.png' not found" in msg
    assert "line 4: source is missing or empty" in msg
    assert "line 5: unknown method 'xyz' (valid: cds, dds, ids, pds, sds)" in msg
    assert "line 6: has 2 fields but the header has 4" in msg
    assert "line 2" not in msg


def test_many_problems_are_summarised(folder):
    rows = "".join(f"nope{i}.png,a,b\n" for i in range(8))
    with pytest.raises(IdseditError, match=r"\(and 3 more\)"):
        read_manifest(_write(folder / "e.csv", "image,source,target\n" + rows), METHODS)


def test_jsonl_errors_with_line_numbers(folder):
    m = _write(folder / "e.jsonl", "\n".join([
        '{"image": "a.png", "source": "a", "target": "b"}',      # 1 fine
        '{"image": "a.png", "source": "a", "target": }',         # 2 bad JSON
        '["a.png", "a", "b"]',                                     # 3 not an object
        '{"image": "a.png", "source": "a", "target": 3}',        # 4 not text
        '{"image": "a.png", "source": "a", "target": "b", "x": 1}',  # 5 unknown key
        '{"image": "a.png", "target": "b"}',                      # 6 missing key
        '{"image": "sub", "source": "a", "target": "b"}',         # 7 a folder
    ]) + "\n")
    (folder / "sub").mkdir()
    with pytest.raises(IdseditError) as info:
        read_manifest(m, METHODS)
    msg = str(info.value)
    for phrase in ("line 2: not valid JSON", "line 3: must be a JSON object", "line 4: target must be text",
                   "line 5: unknown key 'x'"):
        assert phrase in msg
    assert "line 6: source is missing or empty" in msg
    assert "(and 1 more)" in msg                                  # line 7, beyond the first five


def test_missing_mask_file_and_methods_unchecked_without_list(folder):
    m = _write(folder / "e.csv", "image,source,target,mask,method\na.png,a,b,nomask.png,whatever\n")
    with pytest.raises(IdseditError, match="line 2: mask 'nomask.png' not found"):
        read_manifest(m)
    ok = _write(folder / "f.csv", "image,source,target,method\na.png,a,b,whatever\n")
    assert read_manifest(ok)[0].method == "whatever"              # validated by the caller's list only


def test_missing_unreadable_or_wrong_kind_of_manifest(folder):
    with pytest.raises(IdseditError, match="does not exist"):
        read_manifest(folder / "nope.csv")
    with pytest.raises(IdseditError, match="not a manifest"):
        read_manifest(folder / "a.png")
    (folder / "bin.csv").write_bytes(b"image,source,target\n\xff\xfe\x00a.png,a,b\n")
    with pytest.raises(IdseditError, match="not UTF-8"):
        read_manifest(folder / "bin.csv")


def test_is_manifest():
    assert is_manifest("x.csv") and is_manifest("dir/X.JSONL")
    assert not is_manifest("x.png") and not is_manifest("csv")
