"""From rows to evidence: means with bootstrap 95% CIs, paired differences between runs, tables and figures.

Every number of the report is computed from ``rows.jsonl`` alone, so a resumed run gives the same tables.
Rates (target reached, identity kept) are means of 0/1 per edit; PSNRs are capped at 100 dB (identical images).
Paired differences resample cases, so what a case does to every method (its difficulty) cancels: a CI that
excludes 0 says the difference is real on these cases.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from ..metrics import bootstrap_ci, paired_bootstrap_ci

METRICS: dict[str, tuple[str, str, bool]] = {
    # key: (column title, format, higher is better)
    "target_reached": ("target reached", "pct", True),
    "identity_kept": ("identity kept", "pct", True),
    "kept_fraction": ("attributes kept", "pct", True),
    "psnr_outside": ("PSNR outside (dB)", "db", True),
    "ssim_outside": ("SSIM outside", "ssim", True),
    "psnr_target": ("PSNR to truth (dB)", "db", True),
    "ssim_target": ("SSIM to truth", "ssim", True),
    "invert_psnr": ("A->B->A PSNR (dB)", "db", True),
    "invert_latent_psnr": ("A->B->A latent PSNR (dB)", "db", True),
    "psnr_source": ("PSNR to input (dB)", "db", True),            # --pairs (outside the mask if one is given)
    "ssim_source": ("SSIM to input", "ssim", True),
    "lpips_source": ("LPIPS to input", "ssim", False),
    "clip_target": ("CLIP score to target", "db", True),
    "clip_gain": ("CLIP gain over input", "db", True),
    "seconds": ("s / edit", "sec", False),
    "fe": ("UNet fwd-eq / edit", "int", False),
    "peak_mem_mib": ("peak MiB", "int", False),
}
COST_METRICS = ("seconds", "fe", "peak_mem_mib")
TIMING_METRICS = ("seconds", "peak_mem_mib")  # vary between runs of the same edits (not part of "the same table")
PAIRED_METRICS = ("target_reached", "identity_kept", "kept_fraction", "psnr_outside", "psnr_target", "invert_psnr",
                  "invert_latent_psnr", "psnr_source", "lpips_source", "clip_target")
ATTRS = ("color", "shape", "size", "position", "floor", "background")


def _value(row: dict, key: str) -> float:
    v = row.get(key)
    if isinstance(v, bool):
        return float(v)
    return float("nan") if v is None else float(v)


def labels_in_order(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["label"] for r in rows))


def summarize(rows: list[dict], *, n_boot: int = 2000, seed: int = 0) -> dict:
    """Per run label: n, base/ablation, and for each metric {"mean", "lo", "hi"} (bootstrap 95% CI over edits);
    ``kept_<attr>`` rates per unchanged attribute; ``fe_per_step``."""
    out = {}
    for label in labels_in_order(rows):
        rs = [r for r in rows if r["label"] == label]
        s = {"n": len(rs), "base": rs[0].get("base", label), "ablation": rs[0].get("ablation"),
             "steps": rs[0].get("steps")}
        for key in METRICS:
            vals = [_value(r, key) for r in rs]
            if all(math.isnan(v) for v in vals):
                continue
            m, lo, hi = bootstrap_ci(vals, n_boot=n_boot, seed=seed)
            s[key] = {"mean": m, "lo": lo, "hi": hi}
        for a in ATTRS:
            vals = [float(r["kept"][a]) for r in rs if a in r.get("kept", {})]
            if vals:
                m, lo, hi = bootstrap_ci(vals, n_boot=n_boot, seed=seed)
                s[f"kept_{a}"] = {"mean": m, "lo": lo, "hi": hi, "n": len(vals)}
        if "fe" in s and s.get("steps"):
            s["fe_per_step"] = s["fe"]["mean"] / s["steps"]
        out[label] = s
    return out


def rows_by_case(rows: list[dict]) -> dict:
    """{(case, label): row}: the index every paired comparison looks rows up in."""
    return {(r["case"], r["label"]): r for r in rows}


def paired_metric(xs: list[dict], ys: list[dict], key: str, *, n_boot: int = 2000, seed: int = 0) -> dict | None:
    """{"mean", "lo", "hi", "n"}: the mean of x_c - y_c on ``key`` over paired rows (``xs[i]`` and ``ys[i]``: the
    two runs' rows of one case) with its paired bootstrap 95% CI; None when either side lacks the metric on every
    case."""
    x = [_value(r, key) for r in xs]
    y = [_value(r, key) for r in ys]
    if all(math.isnan(v) for v in x) or all(math.isnan(v) for v in y):
        return None
    m, lo, hi = paired_bootstrap_ci(x, y, n_boot=n_boot, seed=seed)
    return {"mean": m, "lo": lo, "hi": hi, "n": len(xs)}


def paired_differences(rows: list[dict], baseline: str, *, n_boot: int = 2000, seed: int = 0) -> dict:
    """{label: {metric: {"mean", "lo", "hi", "n"}}}: label minus ``baseline`` on the cases both ran."""
    by = rows_by_case(rows)
    base_cases = [c for (c, lab) in by if lab == baseline]
    out = {}
    for label in labels_in_order(rows):
        if label == baseline:
            continue
        cases = [c for c in base_cases if (c, label) in by]
        if not cases:
            continue
        xs, ys = [by[(c, label)] for c in cases], [by[(c, baseline)] for c in cases]
        d = {key: paired_metric(xs, ys, key, n_boot=n_boot, seed=seed) for key in PAIRED_METRICS}
        out[label] = {k: v for k, v in d.items() if v is not None}
    return out


def ablation_differences(rows: list[dict], *, n_boot: int = 2000, seed: int = 0) -> dict:
    """{ablation label: {metric: {"mean", "lo", "hi", "n"}}}: each ablation run minus its own base run on the
    cases both ran (e.g. ``ids[N=0]`` minus ``ids``, ``dds[lr=cosine]`` minus ``dds``)."""
    bases = {r["label"]: r.get("base") for r in rows if r.get("ablation")}
    out = {}
    for label, base in bases.items():
        sub = [r for r in rows if r["label"] in (label, base)]
        d = paired_differences(sub, base, n_boot=n_boot, seed=seed).get(label)
        if d:
            out[label] = d
    return out


def family_table(rows: list[dict]) -> dict:
    """{label: {family: {"n", "target_reached", "identity_kept", "psnr_outside"}}} (plain means)."""
    out = {}
    for label in labels_in_order(rows):
        fam = {}
        for f in dict.fromkeys(r["family"] for r in rows):
            rs = [r for r in rows if r["label"] == label and r["family"] == f]
            if rs:
                fam[f] = {"n": len(rs), **{k: float(np.nanmean([_value(r, k) for r in rs]))
                                           for k in ("target_reached", "identity_kept", "psnr_outside")}}
        out[label] = fam
    return out


def frontier(summary: dict, reference: str = "ids", target_slack: float = 0.05) -> dict:
    """The cost-quality frontier: runs sorted by UNet forward-equivalents per edit, each marked ``pareto`` when no
    cheaper-or-equal run is at least as good on both identity kept and PSNR outside; and ``cheapest_at_reference``:
    the cheapest run whose identity kept is at least ``reference``'s and whose target-reached rate is within
    ``target_slack`` of it (None if none, or no reference run)."""
    pts = [(lab, s) for lab, s in summary.items()
           if "fe" in s and "identity_kept" in s and "psnr_outside" in s and s.get("steps") != 0]  # no-edit: not a method
    pts.sort(key=lambda p: (p[1]["fe"]["mean"], p[0]))
    rows = []
    for lab, s in pts:
        fe, idk, pso = s["fe"]["mean"], s["identity_kept"]["mean"], s["psnr_outside"]["mean"]
        dominated = any(o["fe"]["mean"] <= fe and o["identity_kept"]["mean"] >= idk and o["psnr_outside"]["mean"] >= pso
                        and (o["identity_kept"]["mean"], o["psnr_outside"]["mean"], o["fe"]["mean"]) != (idk, pso, fe)
                        for _, o in pts)
        rows.append({"run": lab, "fe": fe, "identity_kept": idk, "psnr_outside": pso,
                     "target_reached": s.get("target_reached", {}).get("mean"), "pareto": not dominated})
    best = None
    ref = summary.get(reference)
    if ref and "identity_kept" in ref and "target_reached" in ref:
        for r in rows:
            if r["identity_kept"] >= ref["identity_kept"]["mean"] and \
                    (r["target_reached"] or 0.0) >= ref["target_reached"]["mean"] - target_slack:
                best = r["run"]
                break
    return {"reference": reference if ref else None, "runs": rows, "cheapest_at_reference": best}


# --------------------------------------------------------------------------------------------------- text
def _fmt(v: float, kind: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if kind == "pct":
        return f"{100 * v:.0f}%"
    if kind == "db":
        return f"{v:.2f}"
    if kind == "ssim":
        return f"{v:.3f}"
    if kind == "sec":
        return f"{v:.2f}"
    return f"{v:.0f}"


def _cell(s: dict | None, kind: str, ci: bool = True) -> str:
    if not s:
        return "-"
    text = _fmt(s["mean"], kind)
    if ci and s["lo"] != s["hi"]:
        lo, hi = _fmt(s["lo"], kind), _fmt(s["hi"], kind)
        text += f" [{lo.rstrip('%')}, {hi}]"
    return text


def _diff_cell(s: dict | None, kind: str, digits: int = 1) -> str:
    """A paired difference "mean [lo, hi]" (percentage points for rates), " *" where the CI excludes 0."""
    if not s:
        return "-"
    scale = 100 if kind == "pct" else 1
    unit = " pp" if kind == "pct" else ""
    sig = " *" if (s["lo"] > 0 or s["hi"] < 0) else ""
    f = f"+.{digits}f"
    return f"{scale * s['mean']:{f}} [{scale * s['lo']:{f}}, {scale * s['hi']:{f}}]{unit}{sig}"


def _run_row(label: str, s: dict, cols: list[str]) -> str:
    """One row of a per-run table: n, then each metric's mean [CI] (no CI for the cost columns)."""
    return f"| {label} | {s['n']} | " + " | ".join(_cell(s.get(k), METRICS[k][1], k not in COST_METRICS)
                                                for k in cols) + " |"


def _diff_table(title: str, diffs: dict) -> list[str]:
    """A paired-differences table: its heading, then one row per run with n and each metric's mean [CI]."""
    dcols = [k for k in PAIRED_METRICS if any(k in d for d in diffs.values())]
    lines = ["", title, "", "| run | n | " + " | ".join(METRICS[k][0] for k in dcols) + " |",
             "|---|---|" + "---|" * len(dcols)]
    for label, d in diffs.items():
        n = next(iter(d.values()))["n"] if d else 0
        lines.append(f"| {label} | {n} | " + " | ".join(_diff_cell(d.get(k), METRICS[k][1]) for k in dcols) + " |")
    return lines


def markdown_summary(summary: dict, diffs: dict, families: dict, *, baseline: str | None, header: dict,
                     cases: list[dict], ablation_summary: dict | None = None,
                     ablation_diffs: dict | None = None, claims: list[str] | None = None) -> str:
    """The summary as markdown: settings, main table, paired differences, per family, kept per attribute, cases.
    ``ablation_summary`` (ablations run on a subset of the cases): the summary of those cases only, shown as its
    own table of the ablation runs next to their base runs. ``claims``: markdown lines put after the settings
    (idsedit.evaluate.claims.claims_markdown)."""
    lines = ["# idsedit eval", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    if claims:
        lines += [""] + claims
    lines += ["", "## Per run: mean [bootstrap 95% CI] over edits", ""]
    cols = [k for k in METRICS if any(k in s for s in summary.values())]
    lines.append("| run | n | " + " | ".join(METRICS[k][0] for k in cols) + " |")
    lines.append("|---|---|" + "---|" * len(cols))
    lines += [_run_row(label, s, cols) for label, s in summary.items()]
    if ablation_summary:
        bases = {s["base"] for s in ablation_summary.values() if s.get("ablation")}
        n_abl = max((s["n"] for s in ablation_summary.values() if s.get("ablation")), default=0)
        lines += ["", f"## Ablations on their {n_abl} cases, each next to its base run on the same cases", "",
                  "| run | n | " + " | ".join(METRICS[k][0] for k in cols) + " |", "|---|---|" + "---|" * len(cols)]
        lines += [_run_row(label, s, cols) for label, s in ablation_summary.items()
                  if s.get("ablation") or label in bases]
    if ablation_diffs:
        lines += _diff_table("## Ablations minus their base run (same cases), mean [95% CI]; * = CI excludes 0",
                             ablation_diffs)
    if baseline and diffs:
        lines += _diff_table(f"## Paired differences: run minus {baseline} (same cases), mean [95% CI]; * = CI "
                             "excludes 0", diffs)
    fams = list(dict.fromkeys(f for fam in families.values() for f in fam))
    if fams:
        lines += ["", "## Per edit family: target reached / identity kept", "",
                  "| run | " + " | ".join(fams) + " |", "|---|" + "---|" * len(fams)]
    for label, fam in (families.items() if fams else ()):
        lines.append(f"| {label} | " + " | ".join(
            f"{100 * fam[f]['target_reached']:.0f}% / {100 * fam[f]['identity_kept']:.0f}%" if f in fam else "-"
            for f in fams) + " |")
    attrs = [a for a in ATTRS if any(f"kept_{a}" in s for s in summary.values())]
    if attrs:
        lines += ["", "## Unchanged attributes kept", "", "| run | " + " | ".join(attrs) + " |",
                  "|---|" + "---|" * len(attrs)]
    for label, s in (summary.items() if attrs else ()):
        lines.append(f"| {label} | " + " | ".join(_cell(s.get(f"kept_{a}"), "pct", False) for a in attrs) + " |")
    fr = frontier(summary)
    if len(fr["runs"]) > 1:
        lines += ["", "## Cost-quality frontier (sorted by UNet forward-equivalents per edit; P = Pareto-optimal on "
                  "identity kept and PSNR outside)", "", "| run | fwd-eq / edit | identity kept | target reached | "
                  "PSNR outside (dB) | P |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['run']} | {r['fe']:.0f} | {100 * r['identity_kept']:.0f}% | "
                  f"{_fmt(r['target_reached'], 'pct')} | {r['psnr_outside']:.2f} | {'P' if r['pareto'] else ''} |"
                  for r in fr["runs"]]
        if fr["reference"]:
            lines += ["", f"Cheapest run with identity kept >= {fr['reference']}'s and target reached within 5 pp: "
                      f"{fr['cheapest_at_reference'] or 'none'}."]
    lines += ["", f"## Cases ({len(cases)})", "", "| case | seed | source prompt | target prompt |", "|---|---|---|---|"]
    lines += [f"| {c['name']} | {c['seed']} | {c['source_prompt']} | {c['target_prompt']} |" for c in cases]
    return "\n".join(lines) + "\n"


CSV_FIELDS = ("case", "family", "label", "variant", "base", "seed", "steps", "source_prompt", "target_prompt",
              "target_reached", "identity_kept", "kept_fraction", "psnr_outside", "ssim_outside", "psnr_target",
              "ssim_target", "vae_psnr_outside", "invert_psnr", "invert_psnr_outside", "invert_latent_psnr",
              "psnr_source", "ssim_source", "lpips_source", "clip_target", "clip_gain",
              "seconds", "invert_seconds", "batch", "fe", "peak_mem_mib", "mem_kind", "image")


def rows_csv(rows: list[dict]) -> str:
    """Flat CSV of the rows (scalars only, plus kept_<attr> and the UNet counts)."""
    extra = [f"kept_{a}" for a in ATTRS] + ["unet_forward", "unet_samples", "unet_backward", "unet_backward_samples"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(list(CSV_FIELDS) + extra)
    for r in rows:
        u = r.get("unet") or {}
        w.writerow([r.get(k, "") if r.get(k) is not None else "" for k in CSV_FIELDS]
                   + [r.get("kept", {}).get(a, "") for a in ATTRS]
                   + [u.get("forward", ""), u.get("samples", ""), u.get("backward", ""), u.get("backward_samples", "")])
    return buf.getvalue()
