"""The paper's five claims, each judged on the rows by paired bootstrap 95% CIs, with rules fixed in advance.

A paired difference "a - b" is taken over the cases both runs edited (what a case does to both cancels); it is
*higher* when its CI lies above 0, *lower* when below, *no difference shown* when the CI contains 0. Verdicts:

    holds           every primary test goes the claim's way and no guard goes against it
    partly          the primary tests go the claim's way, a guard or a secondary part is not shown
    not shown       a primary test's CI contains 0 (these cases cannot tell)
    does not hold   a primary test goes against the claim
    not measured    the runs it needs are not in the rows

1. IDS preserves identity better than CDS and DDS.
   Primary: PSNR outside the object to the source, ids - dds and ids - cds, both higher.
   Guards: target reached and attributes kept are not lower (a method wins identity cheaply by editing less).
   Context (added after the first standard run showed why it matters; not part of the verdict): the same
   differences on the cases where both runs reached the target.
2. IDS edits are invertible where DDS's are not.
   Primary: A -> B -> A PSNR to A in pixels, ids - dds higher. Guard: the same in latents is not lower.
3. N = 3 FPR iterations suffice, with diminishing returns (ablation cases).
   Primary: ids (N = 3) - ids[N=0] higher on PSNR outside (the iterations do something: N = 0 is DDS) and
   ids[N=5] - ids not higher (two more iterations add nothing shown). Secondary: the mean gain per added
   iteration shrinks (N 0->1 >= 1->2 >= 2->3).
4. lambda trades editing against preservation; large lambda over-preserves (ablation cases).
   Primary: ids[lambda=<largest>] - ids[lambda=<smallest>] higher on PSNR outside.
   Secondary: the same difference lower on target reached (editing stops at large lambda).
5. IDS at 100 steps beats DDS at 200 (ablation cases).
   Primary: ids[steps=100] - dds higher on PSNR outside. Guards: target reached and attributes kept not lower.
   Context, not part of the verdict: dds[steps=100] - dds (what halving the steps does on its own) and
   ids[steps=100] - dds[steps=100].
"""

from __future__ import annotations

import math
import re

from .report import _value, paired_metric, rows_by_case

HIGHER, LOWER, SAME = "higher", "lower", "no difference shown"


def paired(rows: list[dict], a: str, b: str, key: str, *, n_boot: int = 2000, seed: int = 0,
           both_reached: bool = False) -> dict | None:
    """{"a", "b", "metric", "mean", "lo", "hi", "n", "direction"}: run a minus run b on ``key`` over the cases both
    ran (``both_reached``: and both reached the target; "subset" is then set). None when they share no case or the
    metric is missing."""
    by = rows_by_case(rows)
    cases = [c for (c, lab) in by if lab == a and (c, b) in by]
    if both_reached:
        cases = [c for c in cases if by[(c, a)].get("target_reached") and by[(c, b)].get("target_reached")]
    p = paired_metric([by[(c, a)] for c in cases], [by[(c, b)] for c in cases], key, n_boot=n_boot,
                      seed=seed) if cases else None
    if p is None:
        return None
    direction = HIGHER if p["lo"] > 0 else LOWER if p["hi"] < 0 else SAME
    out = {"a": a, "b": b, "metric": key, **p, "direction": direction}
    return out | {"subset": "cases both reached the target"} if both_reached else out


def _ablation_values(rows: list[dict], base: str, name: str) -> dict[float, str]:
    """{value: label} of the ablation runs ``base[name=value]`` in the rows."""
    pat = re.compile(re.escape(base) + r"\[" + re.escape(name) + r"=([-0-9.e+]+)\]$")
    out = {}
    for lab in dict.fromkeys(r["label"] for r in rows):
        m = pat.match(lab)
        if m:
            out[float(m.group(1))] = lab
    return out


def _expect(p: dict | None, expect: str) -> dict | None:
    """``p`` with the direction the claim expects ("higher", "lower", "not higher", "not lower") and ``met``: True,
    False (the CI goes against it) or None (the CI contains 0 where a direction is needed)."""
    if p is None:
        return None
    d = p["direction"]
    met = {"higher": {HIGHER: True, LOWER: False}.get(d), "lower": {LOWER: True, HIGHER: False}.get(d),
           "not higher": d != HIGHER, "not lower": d != LOWER}[expect]
    return p | {"expect": expect, "met": met}


def _verdict(primary: list[dict | None], others: list[dict | None] = (), secondary_ok: bool = True) -> str:
    """Primary tests decide holds / not shown / does not hold; a guard or secondary test not met makes "partly"."""
    if not primary or any(p is None for p in primary):
        return "not measured"
    if any(p["met"] is False for p in primary):
        return "does not hold"
    if any(p["met"] is None for p in primary):
        return "not shown"
    if any(g is not None and g["met"] is not True for g in others) or not secondary_ok:
        return "partly"
    return "holds"


def judge_claims(rows: list[dict], *, n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """The five claims of the module docstring: [{"claim", "verdict", "primary", "guards", "secondary", "context",
    "note"}]; each test carries its expected direction ("expect") and whether it was met ("met")."""
    def d(a, b, key, expect=None):
        p = paired(rows, a, b, key, n_boot=n_boot, seed=seed) if a and b else None
        return _expect(p, expect) if expect else p

    def claim(text, prim, guards=(), secondary=(), context=(), note="", secondary_ok=True):
        return {"claim": text, "verdict": _verdict(prim, list(guards) + list(secondary), secondary_ok),
                "primary": [p for p in prim if p], "guards": [g for g in guards if g],
                "secondary": [g for g in secondary if g], "context": [c for c in context if c], "note": note}

    out = []
    # 1. identity
    out.append(claim(
        "IDS preserves identity better than CDS and DDS",
        [d("ids", "dds", "psnr_outside", "higher"), d("ids", "cds", "psnr_outside", "higher")],
        guards=[d("ids", o, k, "not lower") for o in ("dds", "cds") for k in ("target_reached", "kept_fraction")],
        context=[paired(rows, "ids", o, k, n_boot=n_boot, seed=seed, both_reached=True)
                 for o in ("dds", "cds") for k in ("psnr_outside", "kept_fraction")],
        note=by_family(rows, "ids", "dds")))
    # 2. invertibility
    out.append(claim(
        "IDS edits are invertible where DDS's are not", [d("ids", "dds", "invert_psnr", "higher")],
        guards=[d("ids", "dds", "invert_latent_psnr", "not lower")],
        context=[d("ids", "cds", "invert_psnr"), d("dds", "no-edit", "invert_psnr"),
                 d("ids", "no-edit", "invert_psnr")]))
    # 3. N = 3 suffices
    n_runs = {**_ablation_values(rows, "ids", "N"), 3.0: "ids"}
    note, ok = "", True
    steps = [n for n in (0.0, 1.0, 2.0, 3.0) if n in n_runs]
    if len(steps) == 4:
        gains = [d(n_runs[b], n_runs[a], "psnr_outside") for a, b in zip(steps, steps[1:])]
        if all(gains):
            means = [g["mean"] for g in gains]
            ok = means[0] >= means[1] >= means[2]
            note = "gain per added iteration (PSNR outside, dB; secondary: must shrink): " + ", ".join(
                f"N {a:g}->{b:g}: {g['mean']:+.2f}" for a, b, g in zip(steps, steps[1:], gains))
    out.append(claim(
        "N = 3 FPR iterations suffice, with diminishing returns",
        [d("ids", n_runs.get(0.0), "psnr_outside", "higher"), d(n_runs.get(5.0), "ids", "psnr_outside", "not higher")],
        context=[d(n_runs[k], "ids", "target_reached") for k in sorted(n_runs) if k != 3.0],
        note=note, secondary_ok=ok))
    # 4. lambda trade-off
    lam = {**_ablation_values(rows, "ids", "lambda"), 1.0: "ids"}
    lo_l, hi_l = min(lam), max(lam)
    note = ""
    if len(lam) > 1:
        note = "means by lambda (PSNR outside dB / target reached): " + ", ".join(
            f"{v:g}: {_mean(rows, lam[v], 'psnr_outside', lam):.2f} / "
            f"{100 * _mean(rows, lam[v], 'target_reached', lam):.0f}%" for v in sorted(lam))
    big, small = (lam[hi_l], lam[lo_l]) if len(lam) > 1 else (None, None)
    out.append(claim(
        "lambda trades editing against preservation (large lambda over-preserves)",
        [d(big, small, "psnr_outside", "higher")], secondary=[d(big, small, "target_reached", "lower")], note=note))
    # 5. IDS@100 vs DDS@200
    i100 = _ablation_values(rows, "ids", "steps").get(100.0)
    d100 = _ablation_values(rows, "dds", "steps").get(100.0)
    out.append(claim(
        "IDS at 100 steps beats DDS at 200", [d(i100, "dds", "psnr_outside", "higher")],
        guards=[d(i100, "dds", k, "not lower") for k in ("target_reached", "kept_fraction")],
        context=[d(d100, "dds", "psnr_outside"), d(i100, d100, "psnr_outside")]))
    return out


def by_family(rows: list[dict], a: str, b: str) -> str:
    """Mean paired differences a - b per edit family (PSNR outside, target reached), as one line ('' if none)."""
    by = rows_by_case(rows)
    fams: dict[str, list[tuple[float, float]]] = {}
    for (c, lab), r in by.items():
        if lab == a and (c, b) in by:
            o = by[(c, b)]
            fams.setdefault(r.get("family", "?"), []).append(
                (_value(r, "psnr_outside") - _value(o, "psnr_outside"),
                 _value(r, "target_reached") - _value(o, "target_reached")))
    if not fams:
        return ""
    return f"{a} - {b} by family (PSNR outside dB / target reached pp, n): " + ", ".join(
        f"{f} {sum(d for d, _ in v) / len(v):+.2f} / {100 * sum(t for _, t in v) / len(v):+.0f} ({len(v)})"
        for f, v in fams.items())


def _mean(rows: list[dict], label: str, key: str, group: dict) -> float:
    """Mean of ``key`` for ``label`` over the cases every run of ``group`` edited."""
    labels = set(group.values())
    per = {}
    for r in rows:
        if r["label"] in labels:
            per.setdefault(r["case"], {})[r["label"]] = r
    vals = [_value(v[label], key) for v in per.values() if len(v) == len(labels)]
    vals = [v for v in vals if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else float("nan")


def _fmt_diff(p: dict) -> str:
    pct = p["metric"] in ("target_reached", "identity_kept", "kept_fraction")
    s, unit = (100, " pp") if pct else (1, " dB")
    name = {"psnr_outside": "PSNR outside", "invert_psnr": "A->B->A PSNR", "invert_latent_psnr": "A->B->A latent PSNR",
            "target_reached": "target reached", "kept_fraction": "attributes kept"}.get(p["metric"], p["metric"])
    where = f", on the {p['subset']}" if p.get("subset") else ""
    return (f"{p['a']} - {p['b']}, {name}{where}: {s * p['mean']:+.2f} [{s * p['lo']:+.2f}, {s * p['hi']:+.2f}]"
            f"{unit} (n = {p['n']})")


_KIND = {"primary": "test", "guards": "guard", "secondary": "secondary", "context": "context"}


def claims_markdown(claims: list[dict]) -> list[str]:
    """The claims as a markdown section: one line per claim with its verdict, then its evidence (each test with
    the direction it must go and, where it is not met, "not met" or "not shown")."""
    lines = ["## The paper's claims, judged here (paired 95% CIs; rules in idsedit.evaluate.claims)", ""]
    for i, c in enumerate(claims, 1):
        lines.append(f"{i}. **{c['claim']}: {c['verdict']}.**")
        for kind in ("primary", "guards", "secondary", "context"):
            for p in c.get(kind, ()):
                e = p.get("expect", "")
                expect = f" (must {'not be ' + e[4:] if e.startswith('not ') else 'be ' + e})" if e else ""
                status = {False: " - not met", None: " - not shown"}.get(p.get("met"), "") if "expect" in p else ""
                lines.append(f"   - {_KIND[kind]}{expect}: {_fmt_diff(p)}{status}")
        if c["note"]:
            lines.append(f"   - {c['note']}")
    return lines
