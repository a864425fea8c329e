"""Method variants: the names users pick (CLI, bench, eval, UI) and what each means in registered methods.

A variant is a registered method (``idsedit.distill.METHODS``) plus :class:`~idsedit.distill.DistillConfig`
overrides. Every front end resolves names through this one table, so ``ids-jf`` means the same thing in
``idsedit edit --method``, ``idsedit bench --methods``, ``idsedit eval --methods`` and the web UI.

    cfg = variant_config("ids-jf", steps=100)        # EditConfig(method="ids", distill.fpr_mode="jacobian-free")
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .errors import IdseditError


@dataclass(frozen=True)
class Variant:
    """A user-facing method name: a registered method with DistillConfig overrides."""

    name: str                                   # what users type: "ids-jf"
    method: str                                 # registered method: "ids"
    distill: dict = field(default_factory=dict)  # DistillConfig overrides: {"fpr_mode": "jacobian-free"}
    summary: str = ""


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("sds", "sds", {}, "Score Distillation Sampling: eps(z_t_trg, y_trg) - noise (the floor)"),
    Variant("dds", "dds", {}, "Delta Denoising Score: eps(z_t_trg, y_trg) - eps(z_t_src, y_src)"),
    Variant("cds", "cds", {}, "Contrastive Denoising Score: DDS + PatchNCE on self-attention features"),
    Variant("pds", "pds", {}, "Posterior Distillation Sampling: match the DDPM posteriors' stochastic latents"),
    Variant("ids", "ids", {}, "IDS: DDS on FPR-guided noise (exact FPR by default, as the paper)"),
    Variant("ids-jf", "ids", {"fpr_mode": "jacobian-free"},
            "IDS with Jacobian-free FPR (forward passes only, no UNet backward)"),
    Variant("ids-adaptive", "ids", {"fpr_mode": "adaptive"},
            "IDS with adaptive FPR (stop when the residual stops improving)"),
    Variant("ids+cut", "ids", {"fpr_mode": "exact", "with_cut": True}, "IDS + CDS's PatchNCE term (official with_cut)"),
)}

ALIASES: dict[str, str] = {"ids-exact": "ids", "ids-cut": "ids+cut", "ids_cut": "ids+cut", "ids+cds": "ids+cut",
                           "ids-jacobian-free": "ids-jf", "jf": "ids-jf", "adaptive": "ids-adaptive"}


def canonical_variant(name: str) -> str:
    """The table's name for a user's spelling (``IDS-cut`` -> ``ids+cut``); IdseditError listing all if unknown."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in VARIANTS:
        raise IdseditError(f"unknown method {name!r}: use one of {', '.join(VARIANTS)}")
    return key


def get_variant(name: str) -> Variant:
    """The Variant for a user's spelling of its name."""
    return VARIANTS[canonical_variant(name)]


def variant_config(name: str, base=None, **edit_overrides):
    """An EditConfig running variant ``name``: ``base`` (default EditConfig()) with the variant's method and
    DistillConfig overrides applied, then ``edit_overrides`` (EditConfig fields, e.g. steps=100)."""
    from .edit2d import EditConfig

    v = get_variant(name)
    base = base if base is not None else EditConfig()
    distill = dataclasses.replace(base.distill, **v.distill)
    return dataclasses.replace(base, method=v.method, distill=distill, **edit_overrides)


@dataclass(frozen=True)
class EditPreset:
    """A named setting of ``idsedit edit --preset NAME``: a variant plus EditConfig / DistillConfig values, chosen
    by measurement (``evidence`` says where). Flags given on the command line override the preset's values."""

    name: str
    variant: str                                # the method variant, unless --method names another
    edit: dict = field(default_factory=dict)    # EditConfig values (steps, weight, ...)
    distill: dict = field(default_factory=dict)  # DistillConfig values (fpr_iters, ...)
    summary: str = ""
    evidence: str = ""


EDIT_PRESETS: dict[str, EditPreset] = {p.name: p for p in (
    EditPreset("fast", "ids-jf", {"steps": 50}, {"fpr_iters": 1},
               "IDS with one Jacobian-free FPR iteration, 50 steps: 300 UNet forward-equivalents per edit (exact IDS "
               "at the paper's settings: 4,400)",
               "docs/eval.md, 'A fast preset': on 16 paired colour edits with the bundled prior it reached every "
               "target and kept 4.8 dB [3.6, 6.2] more PSNR outside the object than DDS at 200 steps; DDS at 50 "
               "steps does nearly as well (the gain is mostly from fewer steps)"),
)}


def get_preset(name: str) -> EditPreset:
    """The EditPreset called ``name`` (case-insensitive); IdseditError listing the known ones otherwise."""
    key = str(name).strip().lower()
    if key not in EDIT_PRESETS:
        raise IdseditError(f"unknown preset {name!r}: use one of {', '.join(EDIT_PRESETS) or '(none)'}")
    return EDIT_PRESETS[key]


def preset_config(name: str, **edit_overrides):
    """The EditConfig of preset ``name`` (its variant, settings, then ``edit_overrides``)."""
    from .edit2d import EditConfig

    p = get_preset(name)
    base = EditConfig()
    base = dataclasses.replace(base, distill=dataclasses.replace(base.distill, **p.distill), **p.edit)
    return variant_config(p.variant, base, **edit_overrides)
