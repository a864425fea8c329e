"""What an evaluation runs: named runs = a method variant (idsedit.variants) + settings.

Every variant of :data:`idsedit.variants.VARIANTS` runs at the shared loop's settings (the official IDS code's:
CFG 7.5, t ~ U{50..948}, SGD, 200 steps). Where a method's authors recommend other settings, a second run
``<variant>@authors`` uses them, so no method loses by our choice:

    pds@authors   Koo et al.'s code (KAIST-Visual-AI-Group/PDS, pds/pds.py, PDSConfig): guidance_scale 100 and t on
                  their 500-step DDIM grid (t = 2k + steps_offset) between 2% and 98% of it (k in [10, 490)),
                  t_prev = the grid's previous step (t - 2, as our pds_t_stride).
    sds@authors   DreamFusion: guidance 100, t ~ U(0.02, 0.98) of the 1000 training steps.

DDS, CDS and IDS need no second run: the shared settings ARE their authors' (the IDS code inherits DDS's
guidance 7.5, t range [50, 950) and SGD lr 0.1, and CDS's w_cut 3.0, 256 patches, patch sizes 1 and 2,
tau 0.07). The optimiser, learning rate and step count stay the shared loop's for every run (the comparison is of
the update directions, not of optimisers).

Ablations change one setting of a run (one factor at a time around the defaults) and are named after it:
``ids[N=1]``, ``ids[lambda=0.25]``, ``dds[steps=100]``, ``ids[w=15]``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import IdseditError
from ..variants import VARIANTS, canonical_variant, variant_config


@dataclass(frozen=True)
class AuthorSettings:
    """A method's own recommended settings where they differ from the shared loop's."""

    variant: str
    distill: dict = field(default_factory=dict)     # DistillConfig overrides
    edit: dict = field(default_factory=dict)        # EditConfig overrides (t range)
    t_grid: tuple[int, int, int, int] | None = None  # (stride, offset, k_lo, k_hi): t = stride k + offset, k ~ U[lo, hi)
    source: str = ""


AUTHOR_SETTINGS: dict[str, AuthorSettings] = {
    "pds@authors": AuthorSettings("pds", {"guidance": 100.0, "pds_t_stride": 2}, {"t_min": 21, "t_max": 980},
                                  (2, 1, 10, 490), "KAIST-Visual-AI-Group/PDS pds/pds.py PDSConfig"),
    "sds@authors": AuthorSettings("sds", {"guidance": 100.0}, {"t_min": 20, "t_max": 980}, None,
                                  "DreamFusion (Poole et al. 2022): w = 100, t ~ U(0.02, 0.98)"),
}

NO_EDIT = "no-edit"
"""The reference run: the source's VAE round trip decode(encode(x)) scored as if it were an edit (0 UNet calls).
It is the ceiling of every identity metric (what the autoencoder and the evaluator alone lose) and the floor of
target reached."""

ABLATION_KEYS = {"fpr_iters": "N", "fpr_lambda": "lambda", "steps": "steps", "guidance": "w", "weight": "weight",
                 "lr_schedule": "lr", "t_anneal_to": "t_anneal"}
"""Ablation setting -> the short name used in run labels."""


@dataclass
class EvalRun:
    """One named configuration that every case is edited with."""

    label: str                                  # "ids", "pds@authors", "ids[N=1]"
    variant: str                                # "ids", "ids-jf", ... (idsedit.variants)
    config: object                              # EditConfig (seed is set per case by the runner)
    t_grid: tuple[int, int, int, int] | None = None
    base: str = ""                              # the run an ablation varies ("ids" for "ids[N=1]"), else label
    ablation: tuple[str, float] | None = None   # (setting, value) for ablation runs
    invert: bool = True                         # also edit B -> A (when the evaluation inverts at all)
    cases: frozenset[str] | None = None         # the case names this run edits (None: every case)

    def record(self) -> dict:
        return {"label": self.label, "variant": self.variant, "config": dataclasses.asdict(self.config),
                "t_grid": list(self.t_grid) if self.t_grid else None, "base": self.base or self.label,
                "ablation": list(self.ablation) if self.ablation else None}


ALL_METHODS: tuple[str, ...] = tuple(VARIANTS) + tuple(AUTHOR_SETTINGS)
"""Every run name ``--methods all`` selects: each variant, then the authors' settings."""


def make_run(name: str, base_config) -> EvalRun:
    """The run for ``name`` (a variant spelling, ``<variant>@authors`` or ``no-edit``) over ``base_config``."""
    key = name.strip().lower()
    if key == NO_EDIT:
        return EvalRun(NO_EDIT, "none", base_config, None, NO_EDIT)
    if key in AUTHOR_SETTINGS:
        a = AUTHOR_SETTINGS[key]
        cfg = variant_config(a.variant, base_config, **a.edit)
        cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, **a.distill))
        return EvalRun(key, a.variant, cfg, a.t_grid, key)
    if key.endswith("@authors"):
        raise IdseditError(f"no authors' settings for {name!r}: known are {', '.join(AUTHOR_SETTINGS)} (dds, cds "
                           "and ids use the shared settings, which are their authors')")
    v = canonical_variant(key)
    return EvalRun(v, v, variant_config(v, base_config), None, v)


def parse_methods(text: str) -> list[str]:
    """Comma-separated run names; ``all`` expands to :data:`ALL_METHODS`. Duplicates are dropped."""
    names = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        names.extend(ALL_METHODS if part.lower() == "all" else [part])
    if not names:
        raise IdseditError("--methods is empty: name at least one method (e.g. dds,ids) or 'all'")
    return list(dict.fromkeys(names))


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _override(cfg, key: str, value):
    """(new config, value) with one setting changed, or (None, value) if it does not apply or changes nothing."""
    if key in ("fpr_iters", "fpr_lambda"):
        if cfg.method != "ids":
            return None, value
        value = int(value) if key == "fpr_iters" else float(value)
        if getattr(cfg.distill, key) == value:
            return None, value
        return dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, **{key: value})), value
    if key == "guidance":
        value = float(value)
        if cfg.distill.guidance == value:
            return None, value
        return dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, guidance=value)), value
    if key == "steps":
        value = int(value)
        if cfg.steps == value:
            return None, value
        return dataclasses.replace(cfg, steps=value), value
    if key == "weight":     # the distillation term's weight (w_dds): with SGD, weight k = a k times larger step
        value = float(value)
        if cfg.weight == value:
            return None, value
        return dataclasses.replace(cfg, weight=value), value
    if key == "lr_schedule":
        value = str(value)
        if cfg.lr_schedule == value:
            return None, value
        return dataclasses.replace(cfg, lr_schedule=value), value
    if key == "t_anneal_to":   # 0 or None: a fixed range
        value = int(value) if value else None
        if cfg.t_anneal_to == value:
            return None, value
        return dataclasses.replace(cfg, t_anneal_to=value), (value or 0)
    raise IdseditError(f"unknown ablation setting {key!r}: use one of {', '.join(ABLATION_KEYS)}")


def ablation_run(run: EvalRun, changes: dict) -> EvalRun | None:
    """``run`` with the settings in ``changes`` changed (None if any does not apply, e.g. FPR settings on a method
    without FPR, or a value equals the run's own)."""
    if run.variant == "none":
        return None
    cfg, parts = run.config, []
    for key, value in changes.items():
        cfg, value = _override(cfg, key, value)
        if cfg is None:
            return None
        parts.append(f"{ABLATION_KEYS[key]}={_fmt(value)}")
    if not parts:
        return None
    ablation = next(iter(changes.items())) if len(changes) == 1 else ("+".join(changes), 0.0)
    return EvalRun(f"{run.label}[{','.join(parts)}]", run.variant, cfg, run.t_grid, run.label, ablation)


def build_runs(methods: list[str], base_config, ablations: dict | None = None,
               ablate_methods: list[str] | None = None, product: bool = False) -> list[EvalRun]:
    """The runs of an evaluation: each method, then ablations of the methods in ``ablate_methods`` (default: all
    of ``methods``). ``ablations`` maps a setting (fpr_iters, fpr_lambda, steps, guidance, weight) to the values to
    try: one factor at a time around the run's own settings, or (``product``) every combination. Labels are unique;
    an ablation that does not apply or equals its base run is skipped."""
    import itertools

    runs = [make_run(m, base_config) for m in methods]
    if len({r.label for r in runs}) != len(runs):
        raise IdseditError(f"--methods names the same method twice: {', '.join(methods)}")
    seen = {r.label for r in runs}
    targets = [canonical_key(m) for m in (ablate_methods or methods)]
    ablations = {k: list(v) for k, v in (ablations or {}).items() if v}
    if product:
        keys = list(ablations)
        combos = [dict((k, v) for k, v in zip(keys, vals) if v is not None)
                  for vals in itertools.product(*[[None] + ablations[k] for k in keys])]
    else:
        combos = [{k: v} for k, vals in ablations.items() for v in vals]
    for run in [r for r in runs if r.label in targets]:
        for changes in combos:
            ab = ablation_run(run, changes) if changes else None
            if ab is not None and ab.label not in seen:
                runs.append(ab)
                seen.add(ab.label)
    return runs


def limit_ablations(runs: list[EvalRun], cases, per_family: int = 0, invert_settings=None,
                    invert_methods=None) -> list[EvalRun]:
    """The ablation runs restricted to the first ``per_family`` cases of each family (0: every case), and
    inverted (A -> B -> A) only when their setting is in ``invert_settings`` (None: every setting); the other
    runs inverted only when their label is in ``invert_methods`` (None: every run)."""
    subset = None
    if per_family > 0:
        seen: dict[str, int] = {}
        names = []
        for c in cases:
            if seen.get(c.attribute, 0) < per_family:
                names.append(c.name)
                seen[c.attribute] = seen.get(c.attribute, 0) + 1
        subset = frozenset(names)
    out = []
    for r in runs:
        if r.ablation is None:
            keep = invert_methods is None or r.label in invert_methods
            out.append(r if keep == r.invert else dataclasses.replace(r, invert=keep))
            continue
        inv = invert_settings is None or any(k in invert_settings for k in str(r.ablation[0]).split("+"))
        out.append(dataclasses.replace(r, invert=inv, cases=subset))
    return out


def canonical_key(name: str) -> str:
    key = name.strip().lower()
    return key if key in AUTHOR_SETTINGS or key == NO_EDIT else canonical_variant(key)
