"""Figures of an evaluation: the image grid (source | ground truth | each run) and matplotlib plots.

Every plot is drawn from the rows (and the FPR residual diagnostic) and written atomically as PNG:

    metrics.png        each run's main metrics with 95% CIs
    drift.png          PSNR outside the object against the optimisation step (when the drift happens)
    residual_vs_t.png  ||z_src - z0_hat(z_t)|| against t after 0..N FPR iterations (the paper's motivating plot),
                       and against the iteration
    ablations.png      metric against each ablated setting (N, lambda, steps, guidance)
    frontier.png       quality against UNet forward-equivalents per edit (the cost-quality frontier)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .methods import ABLATION_KEYS
from .report import METRICS


def figure_grid(rows_of_images: list[list[Image.Image]], col_labels: list[str], cell: int = 128,
                row_labels: list[str] | None = None) -> Image.Image:
    """A labelled grid: one row per case, one column per image kind (nearest-neighbour upscaled to ``cell``)."""
    label_h = 14
    left = 0 if not row_labels else 112
    n_rows, n_cols = len(rows_of_images), len(col_labels)
    grid = Image.new("RGB", (left + n_cols * cell, label_h + n_rows * cell), "white")
    draw = ImageDraw.Draw(grid)
    for j, label in enumerate(col_labels):
        draw.text((left + j * cell + 3, 1), label[:22], fill="black")
    for i, images in enumerate(rows_of_images):
        if row_labels:
            draw.text((3, label_h + i * cell + cell // 2 - 6), row_labels[i][:18], fill="black")
        for j, im in enumerate(images):
            if im is not None:
                grid.paste(im.resize((cell, cell), Image.Resampling.NEAREST), (left + j * cell, label_h + i * cell))
    return grid


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    from ..images import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)


def plot_metrics(summary: dict, path: Path, keys=("identity_kept", "target_reached", "psnr_outside", "psnr_target",
                                                    "invert_psnr")) -> None:
    plt = _pyplot()
    keys = [k for k in keys if any(k in s for s in summary.values())]
    labels = [lab for lab, s in summary.items() if not s.get("ablation")]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.4 + 0.12 * len(labels)), squeeze=False)
    for ax, key in zip(axes[0], keys):
        m = [summary[lab].get(key, {}).get("mean", np.nan) for lab in labels]
        lo = [summary[lab].get(key, {}).get("lo", np.nan) for lab in labels]
        hi = [summary[lab].get(key, {}).get("hi", np.nan) for lab in labels]
        scale = 100.0 if METRICS[key][1] == "pct" else 1.0
        y = np.arange(len(labels))
        err = np.array([np.subtract(m, lo), np.subtract(hi, m)]) * scale
        ax.barh(y, np.array(m) * scale, xerr=np.nan_to_num(err), color="#7a9cc6", capsize=2)
        ax.set_yticks(y, labels if ax is axes[0][0] else [""] * len(labels))
        ax.invert_yaxis()
        ax.set_title(METRICS[key][0] + (" %" if scale == 100 else ""), fontsize=9)
        if scale == 100:
            ax.set_xlim(0, 100)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("mean with bootstrap 95% CI", fontsize=9)
    _save(fig, path)


def plot_drift(rows: list[dict], path: Path) -> bool:
    """Mean PSNR outside the object against the step, one line per (non-ablation) run; False if no traces."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for label in dict.fromkeys(r["label"] for r in rows):
        rs = [r for r in rows if r["label"] == label and r.get("trace") and not r.get("ablation")]
        if not rs:
            continue
        steps = rs[0]["trace"]["step"]
        curves = np.array([r["trace"]["psnr_outside"] for r in rs if r["trace"]["step"] == steps], dtype=float)
        ax.plot(steps, np.nanmean(curves, 0), marker=".", label=label)
        drawn = True
    vae = [r.get("vae_psnr_outside") for r in rows if r.get("vae_psnr_outside") is not None]
    if vae:
        ax.axhline(float(np.mean(vae)), color="gray", ls="--", lw=1, label="VAE round trip")
    ax.set_xlabel("optimisation step")
    ax.set_ylabel("PSNR outside the object vs source (dB)")
    ax.set_title("where the identity drift happens (mean over cases)", fontsize=9)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=7)
        _save(fig, path)
    else:
        plt.close(fig)
    return drawn


def plot_residuals(curves: dict, path: Path) -> bool:
    """curves: {"t": [T], "norms": [[cases x T x (N+1)]]} from :func:`idsedit.evaluate.diagnostics.fpr_residual_curves`."""
    if not curves or not curves.get("t"):
        return False
    plt = _pyplot()
    t = np.array(curves["t"])
    norms = np.array(curves["norms"], dtype=float)   # (cases, T, N + 1)
    mean = norms.mean(0)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for k in range(mean.shape[1]):
        a1.plot(t, mean[:, k], marker=".", label=f"after {k} FPR iteration{'s' if k != 1 else ''}")
    a1.set_xlabel("t")
    a1.set_ylabel("||z_src - z0_hat(z_t_src)||")
    a1.set_title("residual against t (mean over cases)", fontsize=9)
    a1.legend(fontsize=7)
    a1.grid(alpha=0.3)
    for j in range(0, len(t), max(1, len(t) // 5)):
        a2.plot(range(mean.shape[1]), mean[j] / mean[j, 0], marker="o", label=f"t={t[j]}")
    a2.set_xlabel("FPR iteration")
    a2.set_ylabel("residual / residual before FPR")
    a2.set_title(f"residual against iteration (lambda={curves.get('lambda')})", fontsize=9)
    a2.legend(fontsize=7)
    a2.grid(alpha=0.3)
    _save(fig, path)
    return True


NON_NUMERIC = ("lr_schedule", "t_anneal_to")   # settings whose base value is not a number on the same axis


def plot_ablations(summary: dict, path: Path, keys=("identity_kept", "target_reached", "psnr_outside")) -> bool:
    """One panel per ablated setting: metric against the value, the base run's value included."""
    plt = _pyplot()
    groups: dict[tuple[str, str], list] = {}
    for label, s in summary.items():
        if s.get("ablation") and s["ablation"][0] in ABLATION_KEYS:   # one-factor ablations only
            setting, value = s["ablation"]
            if setting in NON_NUMERIC:   # lr schedules and annealing: in the tables only
                continue
            groups.setdefault((s["base"], setting), []).append((float(value), label))
    if not groups:
        return False
    from ..edit2d import EditConfig

    default = EditConfig()
    defaults = {"fpr_iters": default.distill.fpr_iters, "fpr_lambda": default.distill.fpr_lambda,
                "guidance": default.distill.guidance}
    settings = list(dict.fromkeys(k[1] for k in groups))
    fig, axes = plt.subplots(len(keys), len(settings), figsize=(3.6 * len(settings), 2.6 * len(keys)), squeeze=False)
    for j, setting in enumerate(settings):
        for i, key in enumerate(keys):
            ax = axes[i][j]
            for (base, st), members in groups.items():
                if st != setting or base not in summary:
                    continue
                base_value = summary[base].get("steps") if setting == "steps" else defaults.get(setting)
                pts = sorted(members + [(float(base_value), base)])
                xs = [p[0] for p in pts]
                m = np.array([summary[lab].get(key, {}).get("mean", np.nan) for _, lab in pts])
                lo = np.array([summary[lab].get(key, {}).get("lo", np.nan) for _, lab in pts])
                hi = np.array([summary[lab].get(key, {}).get("hi", np.nan) for _, lab in pts])
                ax.errorbar(xs, m, yerr=np.nan_to_num([m - lo, hi - m]), marker="o", capsize=2, label=base)
            if setting == "fpr_lambda":
                from matplotlib.ticker import NullFormatter, ScalarFormatter

                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(ScalarFormatter())
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(setting)
            ax.set_ylabel(METRICS[key][0], fontsize=8)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_frontier(summary: dict, path: Path, keys=("identity_kept", "psnr_outside")) -> bool:
    """Quality against UNet forward-equivalents per edit, every run a point (ablations included)."""
    pts = [(lab, s) for lab, s in summary.items() if "fe" in s and s.get("steps") != 0]
    if not pts:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for lab, s in pts:
            if key not in s:
                continue
            ax.errorbar(s["fe"]["mean"], s[key]["mean"], yerr=[[s[key]["mean"] - s[key]["lo"]],
                                                               [s[key]["hi"] - s[key]["mean"]]], marker="o", capsize=2)
            ax.annotate(lab, (s["fe"]["mean"], s[key]["mean"]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
        from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("UNet forward-equivalents per edit (samples + 2 x backward samples)")
        ax.set_ylabel(METRICS[key][0])
        ax.grid(alpha=0.3, which="both")
    fig.suptitle("cost-quality frontier", fontsize=9)
    _save(fig, path)
    return True
