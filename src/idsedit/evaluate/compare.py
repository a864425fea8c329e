"""`idsedit compare A B`: two evaluations of the same cases, paired (for example two priors, two settings).

Each run label that both A and B hold is compared on the cases both edited: B minus A per metric, with the paired
bootstrap 95% CI of the mean difference (``report.paired_metric``). A and B are `idsedit eval` output folders or
their ``rows.jsonl`` / ``rows.csv`` files. Cases are matched by name, and a case must have the same source and
target prompts and seed in both (an eval with another ``--case-seed`` or other families is refused), so that what a
case does to both cancels and only the difference between A and B is left::

    idsedit eval --families colour --n 20 --methods dds,ids --out sig-old
    idsedit eval --families colour --n 20 --methods dds,ids --model runs/mini-ft --out sig-new
    idsedit compare sig-old sig-new            # per run: new - old, mean [95% CI]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from ..errors import IdseditError
from .report import METRICS, PAIRED_METRICS, _diff_cell, _value, labels_in_order, paired_metric, rows_by_case

CASE_KEYS = ("source_prompt", "target_prompt", "seed")
"""What must agree between A's and B's row of a case for the two to be the same edit problem."""


def _parse_cell(v: str):
    """A rows.csv cell as the JSON row holds it: "" -> None, "True"/"False" -> bool, numbers -> float."""
    if v == "":
        return None
    if v in ("True", "False"):
        return v == "True"
    try:
        return float(v)
    except ValueError:
        return v


def load_rows(path: str | Path) -> list[dict]:
    """The rows of an eval: a folder (its rows.jsonl, else rows.csv), a .jsonl or a .csv file."""
    from .runner import read_rows

    p = Path(path)
    if p.is_dir():
        p = p / "rows.jsonl" if (p / "rows.jsonl").is_file() else p / "rows.csv"
    if not p.is_file():
        raise IdseditError(f"{path}: no rows.jsonl or rows.csv there (give an `idsedit eval` output folder or file)")
    if p.suffix == ".csv":
        with open(p, newline="") as f:
            rows = [{k: (_parse_cell(v) if k not in ("case", "label", "family") else v) for k, v in r.items()}
                    for r in csv.DictReader(f)]
    else:
        rows = read_rows(p, repair=False)
    if not rows or any("case" not in r or "label" not in r for r in rows):
        raise IdseditError(f"{p}: not the rows of an `idsedit eval` run (each needs a case and a label)")
    return rows


def check_same_cases(a: list[dict], b: list[dict]) -> None:
    """Refuse when a case name stands for different edits in A and B (other prompts or seed)."""
    first_a = {r["case"]: r for r in a}
    for r in b:
        o = first_a.get(r["case"])
        if o is None:
            continue
        for k in CASE_KEYS:
            if k in o and k in r and o[k] != r[k]:
                raise IdseditError(f"case {r['case']!r} is a different edit in the two evaluations ({k}: {o[k]!r} vs "
                                   f"{r[k]!r}): compare runs made with the same --families, --n and --case-seed")


def compare_rows(a: list[dict], b: list[dict], metrics: tuple[str, ...] = PAIRED_METRICS, *, n_boot: int = 2000,
                 seed: int = 0) -> dict:
    """{label: {metric: {"mean", "lo", "hi", "n", "a", "b"}}}: B minus A on the cases both edited with that label
    ("a", "b": the two means over those cases)."""
    check_same_cases(a, b)
    ba, bb = rows_by_case(a), rows_by_case(b)
    out = {}
    for label in labels_in_order(a):
        cases = [c for (c, lab) in ba if lab == label and (c, label) in bb]
        if not cases:
            continue
        xs, ys = [bb[(c, label)] for c in cases], [ba[(c, label)] for c in cases]
        d = {}
        for key in metrics:
            p = paired_metric(xs, ys, key, n_boot=n_boot, seed=seed)
            if p is not None:
                d[key] = p | {"a": _mean(ys, key), "b": _mean(xs, key)}
        if d:
            out[label] = d
    return out


def _mean(rows: list[dict], key: str) -> float:
    return float(np.nanmean([_value(r, key) for r in rows]))


def _cell(key: str, d: dict) -> str:
    """"A -> B: B - A [95% CI]" (rates in %, their difference in percentage points; dB to 0.01)."""
    kind = METRICS.get(key, ("", ""))[1]
    mean = (lambda x: f"{100 * x:.1f}%") if kind == "pct" else (lambda x: f"{x:.2f}")
    return f"{mean(d['a'])} -> {mean(d['b'])}: {_diff_cell(d, kind, digits=1 if kind == 'pct' else 2)}"


def markdown(result: dict, name_a: str, name_b: str) -> str:
    """One table: a row per run label, a column per metric, cells "A -> B: B - A [95% CI]" (* = CI excludes 0)."""
    keys = [k for k in PAIRED_METRICS if any(k in d for d in result.values())]
    lines = [f"B = {name_b} minus A = {name_a}, paired over the cases both edited; mean [95% CI]; * = CI excludes 0",
             "", "| run | n | " + " | ".join(METRICS[k][0] for k in keys) + " |", "|---|---|" + "---|" * len(keys)]
    for label, d in result.items():
        n = next(iter(d.values()))["n"]
        lines.append(f"| {label} | {n} | " + " | ".join(_cell(k, d[k]) if k in d else "-" for k in keys) + " |")
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", help="the reference evaluation: an `idsedit eval` folder, rows.jsonl or rows.csv")
    p.add_argument("b", help="the evaluation compared with it (B - A is reported)")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default 2000)")


def cli_main(args: argparse.Namespace) -> int:
    a, b = load_rows(args.a), load_rows(args.b)
    result = compare_rows(a, b, n_boot=args.n_boot)
    if not result:
        raise IdseditError(f"{args.a} and {args.b} share no (case, run) pair: were they made with the same cases "
                           "and methods?")
    print(markdown(result, str(args.a), str(args.b)), end="")
    if args.json is not None:
        args.json.write_text(json.dumps({"a": str(args.a), "b": str(args.b), "differences": result}, indent=2))
    return 0
