"""Hygiene of the test suite itself: the README's test command (scripts/test.sh, which CI runs) runs every test."""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_default_run_deselects_nothing():
    """No -m/-k/--deselect in addopts or scripts/test.sh: tests marked slow run in CI too (they were never run)."""
    opts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    words = shlex.split(opts.get("addopts", ""))
    assert not {"-m", "-k", "--deselect"} & set(words) and not any(w.startswith(("-m", "--deselect")) for w in words)
    script = (ROOT / "scripts" / "test.sh").read_text()
    (line,) = [ln for ln in script.splitlines() if "-m pytest" in ln]
    assert shlex.split(line)[-1] == "$@" and " -m '" not in line and " -k " not in line
