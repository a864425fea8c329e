"""`idsedit eval`: the project's evidence engine. Edits with a ground truth from the shapes world, every method on
the same cases with the same t and noise draws, scored by the shapes evaluator, summarised with bootstrap CIs and
paired differences, plotted, and resumable (see docs/eval.md).

    from idsedit.evaluate import make_cases, build_runs, run_evaluation, summarize
    cases = make_cases(["colour", "shape"], per_family=5, seed=0)
    runs = build_runs(["dds", "ids"], EditConfig(steps=200))
    rows = run_evaluation(prior, cases, runs, Path("eval-out"))
    print(summarize_ci(rows)["ids"]["identity_kept"])       # {"mean", "lo", "hi"}

Modules: cases (the edits), methods (runs: variants, authors' settings, ablations), runner (one edit -> one row,
pairing, cost, resume), report (statistics and tables), figures (grid and plots), diagnostics (FPR residuals),
presets, pairs (user data), cli (`add_arguments` / `cli_main`).
"""

from .cases import FAMILIES, ShapesEditCase, make_case, make_cases, render_image  # noqa: F401
from .cli import add_arguments, cli_main  # noqa: F401
from .figures import figure_grid  # noqa: F401
from .methods import ALL_METHODS, AUTHOR_SETTINGS, EvalRun, build_runs, make_run, parse_methods  # noqa: F401
from .legacy import colour_edit_cases, format_table, run_cases, summarize  # noqa: F401  (the first evaluation's API, used by demo)
from .report import paired_differences  # noqa: F401
from .report import summarize as summarize_ci  # noqa: F401
from .runner import PairedSampler, UNetCost, count_unet, run_edit, run_evaluation  # noqa: F401

__all__ = ["FAMILIES", "ShapesEditCase", "colour_edit_cases", "make_case", "make_cases", "render_image",
           "add_arguments", "cli_main", "figure_grid", "ALL_METHODS", "AUTHOR_SETTINGS", "EvalRun", "build_runs",
           "make_run", "parse_methods", "paired_differences", "summarize_ci", "summarize", "run_cases", "format_table", "PairedSampler", "UNetCost",
           "count_unet", "run_edit", "run_evaluation"]
