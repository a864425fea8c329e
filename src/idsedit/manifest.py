"""Manifests: many edits in one file, one edit per row.

A manifest is a CSV file with a header row, or a JSONL file with one JSON object per line, with the keys::

    image    path to the input picture (relative paths start at the manifest's folder)   required
    source   prompt describing the input                                                  required
    target   prompt describing the wanted result                                          required
    mask     path to an edit mask (white = editable), relative like ``image``              optional
    method   method variant for this row (a name of idsedit.variants: ids, ids-jf, ...)   optional

Every row is checked before any edit runs; all problems are reported at once, each with its line number.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .errors import IdseditError

REQUIRED = ("image", "source", "target")
"""Columns/keys every row must have."""

OPTIONAL = ("mask", "method")
"""Columns/keys a row may have (empty means: use the command-line value)."""

SUFFIXES = (".csv", ".jsonl")
"""File suffixes read as manifests."""

MAX_REPORTED = 5
"""How many row problems the error message quotes before summarising the rest."""


@dataclass(frozen=True)
class EditJob:
    """One edit to run: an input image, its prompts and optional per-edit settings."""

    image: Path              # input picture (absolute or relative to the working directory)
    source: str              # prompt describing the input
    target: str              # prompt describing the wanted result
    mask: Path | None = None  # edit mask, white = editable; None = edit everywhere
    method: str | None = None  # distillation method; None = the command-line/default method
    line: int | None = None  # line in the manifest it came from (None when not from a manifest)


def is_manifest(path: str | os.PathLike) -> bool:
    """True for a ``.csv`` or ``.jsonl`` path (a manifest rather than an image)."""
    return Path(path).suffix.lower() in SUFFIXES


def read_manifest(path: str | os.PathLike, methods: Iterable[str] | None = None) -> list[EditJob]:
    """Parse and validate a manifest; raise IdseditError listing every bad row (with line numbers).

    ``methods``: the valid method names (``idsedit edit`` passes every variant name and alias); when given, a row's
    ``method`` must be one of them (compared lower-case).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise IdseditError(f"{path} is not a manifest: use a .csv or .jsonl file")
    if not path.is_file():
        raise IdseditError(f"manifest {path} does not exist" if not path.exists() else
                           f"manifest {path} is not a file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise IdseditError(f"manifest {path} is not UTF-8 text (byte {e.start}): save it as UTF-8") from None
    except OSError as e:
        raise IdseditError(f"manifest {path} could not be read: {e.strerror or e}") from None
    rows = _csv_rows(text, path) if suffix == ".csv" else _jsonl_rows(text, path)
    problems: list[str] = []
    jobs: list[EditJob] = []
    valid = sorted(set(methods)) if methods is not None else None
    for line, row in rows:
        if isinstance(row, str):                               # a parse problem already described
            problems.append(f"line {line}: {row}")
            continue
        job, errs = _check_row(row, line, path.parent, valid)
        problems += [f"line {line}: {e}" for e in errs]
        if job is not None:
            jobs.append(job)
    if not problems and not jobs:
        raise IdseditError(f"manifest {path} has no rows: add one edit per line ({', '.join(REQUIRED)})")
    if problems:
        shown = "; ".join(problems[:MAX_REPORTED])
        more = f" (and {len(problems) - MAX_REPORTED} more)" if len(problems) > MAX_REPORTED else ""
        raise IdseditError(f"manifest {path}: {shown}{more}")
    return jobs


def _csv_rows(text: str, path: Path) -> list[tuple[int, dict | str]]:
    """(line number, row dict) per CSV record; header problems raise at once."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader, None)
    except csv.Error as e:
        raise IdseditError(f"manifest {path}: line 1: {e}") from None
    if header is None:
        raise IdseditError(f"manifest {path} is empty: the first line must be a header such as "
                           f"\"{','.join(REQUIRED)}\"")
    names = [h.strip().lower() for h in header]
    _check_columns(names, path, "column")
    out: list[tuple[int, dict | str]] = []
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            out.append((reader.line_num, f"not valid CSV ({e})"))
            break
        if not values or all(not v.strip() for v in values):
            continue                                           # blank line
        if len(values) != len(names):
            out.append((reader.line_num, f"has {len(values)} fields but the header has {len(names)} "
                                         "(quote prompts that contain commas)"))
            continue
        out.append((reader.line_num, dict(zip(names, values))))
    return out


def _jsonl_rows(text: str, path: Path) -> list[tuple[int, dict | str]]:
    """(line number, object) per non-blank JSONL line; unknown keys raise at once."""
    out: list[tuple[int, dict | str]] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            out.append((n, f"not valid JSON ({e.msg} at column {e.colno})"))
            continue
        if not isinstance(obj, dict):
            out.append((n, f"must be a JSON object like {{\"image\": ..., \"source\": ..., \"target\": ...}}, "
                           f"got {type(obj).__name__}"))
            continue
        obj = {str(k).strip().lower(): v for k, v in obj.items()}
        unknown = [k for k in obj if k not in REQUIRED + OPTIONAL]
        if unknown:
            out.append((n, f"unknown key {unknown[0]!r} (known: {', '.join(REQUIRED + OPTIONAL)})"))
            continue
        out.append((n, obj))
    return out


def _check_columns(names: list[str], path: Path, what: str) -> None:
    """Raise IdseditError for missing, unknown or repeated columns."""
    unknown = [n for n in names if n not in REQUIRED + OPTIONAL]
    if "" in unknown:
        raise IdseditError(f"manifest {path}: the header has an empty {what} name (a trailing comma?): remove it")
    if unknown:
        raise IdseditError(f"manifest {path}: unknown {what} {unknown[0]!r} (known: "
                           f"{', '.join(REQUIRED + OPTIONAL)})")
    missing = [n for n in REQUIRED if n not in names]
    if missing:
        raise IdseditError(f"manifest {path}: missing {what} {missing[0]!r}: the header needs "
                           f"{', '.join(REQUIRED)} (optional: {', '.join(OPTIONAL)})")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise IdseditError(f"manifest {path}: {what} {repeated[0]!r} appears twice")


def _check_row(row: dict, line: int, base: Path, methods: list[str] | None) -> tuple[EditJob | None, list[str]]:
    """Validate one row: required values present and strings, files exist, method known."""
    errs: list[str] = []
    values: dict[str, str | None] = {}
    for key in REQUIRED + OPTIONAL:
        v = row.get(key)
        if v is None or (isinstance(v, str) and not v.strip()):
            if key in REQUIRED:
                errs.append(f"{key} is missing or empty")
            values[key] = None
        elif not isinstance(v, str):
            errs.append(f"{key} must be text, got {json.dumps(v)[:40]}")
            values[key] = None
        else:
            values[key] = v.strip() if key in ("image", "mask", "method") else v
    image = _resolve(values["image"], base) if values["image"] else None
    mask = _resolve(values["mask"], base) if values["mask"] else None
    for key, p in (("image", image), ("mask", mask)):
        if p is not None and not p.is_file():
            errs.append(f"{key} {values[key]!r} " + ("is a folder" if p.is_dir() else f"not found (looked for {p})"))
    method = values["method"].lower() if values["method"] else None
    if method is not None and methods is not None and method not in methods:
        errs.append(f"unknown method {values['method']!r} (valid: {', '.join(methods)})")
    if errs:
        return None, errs
    return EditJob(image, values["source"], values["target"], mask, method, line), []


def _resolve(value: str, base: Path) -> Path:
    """A manifest path: ``~`` expanded, relative paths joined to the manifest's folder."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p
