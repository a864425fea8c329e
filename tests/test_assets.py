"""The bundled assets (mini prior folder, evaluator weights) are part of the package: present, packaged, and their
tests fail, never skip, when they are missing (a broken export must not pass green)."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import idsedit
from idsedit.mini import BUNDLED_DIR
from idsedit.mini.evaluator import DEFAULT_WEIGHTS

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path(idsedit.__file__).resolve().parent

REQUIRED = ["model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
            "text_encoder/model.safetensors", "tokenizer/vocab.json", "tokenizer/merges.txt",
            "tokenizer/tokenizer_config.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
            "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]


def test_bundled_assets_are_present():
    missing = [f for f in REQUIRED if not (BUNDLED_DIR / f).is_file()]
    assert not missing, f"the bundled prior {BUNDLED_DIR} lacks {missing}: run idsedit train-mini --stage export"
    assert DEFAULT_WEIGHTS.is_file() and DEFAULT_WEIGHTS.with_suffix(".json").is_file()


def test_bundled_assets_are_package_data():
    """Every asset file matches a pattern of pyproject's package-data (recursive globs, as setuptools expands
    them), so wheels carry it."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["idsedit"]
    packaged = {Path(f).resolve() for pat in patterns for f in glob.glob(str(PACKAGE / pat), recursive=True)}
    files = [p.resolve() for p in (PACKAGE / "assets").rglob("*") if p.is_file()]
    assert len(files) >= len(REQUIRED) + 2
    assert [str(f) for f in files if f not in packaged] == []


PLUGIN = """
import os
from pathlib import Path
import idsedit.mini, idsedit.mini.evaluator as ev
empty = Path(os.environ["IDSEDIT_EMPTY_ASSETS"])
idsedit.mini.BUNDLED_DIR = empty / "mini-sd"
ev.DEFAULT_WEIGHTS = empty / "evaluator.safetensors"
"""


def test_asset_tests_fail_not_skip_without_the_assets(tmp_path):
    """Point BUNDLED_DIR and the evaluator's weights at an empty folder (a broken export) and run the asset tests:
    they must fail, and none may skip. A subprocess (imports torch): ~10 s."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "no_assets_plugin.py").write_text(PLUGIN)
    env = dict(os.environ, IDSEDIT_EMPTY_ASSETS=str(tmp_path / "empty"),
               PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    tests = [f"{ROOT}/tests/test_mini_model.py::test_folder_is_small_safetensors_without_safety_checker",
             f"{ROOT}/tests/test_evaluator.py::test_score_edit_on_perfect_and_null_edits",
             f"{ROOT}/tests/test_assets.py::test_bundled_assets_are_present"]
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no_assets_plugin", "-p", "no:cacheprovider",
                          "-o", "addopts=", "-q", "-rfEs", *tests], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    summary = out.stdout.strip().splitlines()[-1]
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    bad = sum(int(n) for n in re.findall(r"(\d+) (?:failed|errors?)\b", summary))
    assert "skipped" not in summary and bad == 3, summary
