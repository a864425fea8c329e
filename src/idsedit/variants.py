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
