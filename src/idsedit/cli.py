"""The ``idsedit`` command line: a thin layer over the Python API that owns all input, output and messages.

    idsedit edit cat.png --source "a cat" --target "a pig" --method ids
    idsedit edit photos/ --source "a photo of a house" --target "a photo of a house in winter" --out winter/
    idsedit edit edits.csv --steps 100          # a manifest: image, source, target[, mask, method] per row
    idsedit bench | demo | train-mini | eval    # provided by their own modules (see PLUGINS)

Error policy: anything the user can cause (bad file, bad flag value, missing model) is an ``IdseditError`` and
prints ``error: <one line>`` with exit code 1 and no traceback; argparse usage errors exit 2; Ctrl-C prints
``interrupted`` and exits 130. Warnings print as ``warning: <one line>``. Outputs are written atomically and the
input is never overwritten; in a batch, one failing image is reported and the others still run.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import re
import shutil
import sys
import time
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from . import __version__
from .errors import IdseditError

DEFAULT_OUT = "idsedit-out"
"""Output folder used when --out is not given (relative to the working directory)."""

PLUGINS = {
    "bench": ("idsedit.bench", "benchmark the methods on the shapes world (table, CSV/JSON, figure)"),
    "demo": ("idsedit.demo", "a quick demonstration edit with the bundled mini prior"),
    "train-mini": ("idsedit.mini.train", "train the bundled mini prior on the shapes world"),
    "eval": ("idsedit.evaluate", "evaluate edits (success, identity, invertibility)"),
    "scene": ("idsedit.scene.cli", "fit, edit and render radiance-field scenes (NeRF)"),
    "ui": ("idsedit.ui", "a local web app for editing (Gradio)"),
}
"""Subcommands implemented elsewhere: name -> (module with add_arguments(parser) and cli_main(args), help)."""

METHOD_NAMES_HELP = "sds, dds, cds, pds, ids"   # the registry (idsedit.distill.METHODS) is checked at run time
FPR_MODES_HELP = "exact, jacobian-free, adaptive"

# Flag -> config field. Every flag of `edit` that changes an edit is listed here (tests check each one arrives).
EDIT_FLAGS = {"steps": "steps", "lr": "lr", "seed": "seed", "frames_every": "frames_every"}
DISTILL_FLAGS = {"guidance": "guidance", "fpr_iters": "fpr_iters", "fpr_lambda": "fpr_lambda",
                 "fpr_mode": "fpr_mode", "with_cut": "with_cut", "cut_weight": "cut_weight",
                 "negative_prompt": "negative_prompt"}


# --------------------------------------------------------------------------------------------------- parser
def _int_at_least(lo: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"{value} is too small: use a number >= {lo}")
        return value

    parse.__name__ = "integer"
    return parse


def _float(positive: bool = False, nonneg: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if positive and not value > 0:
            raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
        if nonneg and value < 0:
            raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
        return value

    parse.__name__ = "number"
    return parse


def _defaults() -> tuple[object, object] | tuple[None, None]:
    """(EditConfig(), DistillConfig()) for --help texts; (None, None) when the core cannot be imported."""
    try:
        from .edit2d import EditConfig
    except ImportError:
        return None, None
    cfg = EditConfig()
    return cfg, cfg.distill


def _d(cfg, name: str) -> str:
    if cfg is None:
        return ""
    value = getattr(cfg, name)
    return f" (default: {value!r})" if isinstance(value, str) and not value else f" (default: {value})"


def add_edit_arguments(p: argparse.ArgumentParser, with_defaults: bool = False) -> None:
    """The flags of ``idsedit edit``. Defaults stay None so only given flags override EditConfig/DistillConfig."""
    e, d = _defaults() if with_defaults else (None, None)
    p.add_argument("input", metavar="IMAGE_OR_FOLDER_OR_MANIFEST",
                   help="an image file, a folder of images (png/jpg/jpeg/webp/bmp), or a .csv/.jsonl manifest "
                        "with columns image, source, target[, mask, method]")
    g = p.add_argument_group("prompts")
    g.add_argument("--source", metavar="TEXT", help="prompt describing the input image (not with a manifest)")
    g.add_argument("--target", metavar="TEXT", help="prompt describing the wanted result (not with a manifest)")
    g.add_argument("--negative-prompt", metavar="TEXT",
                   help="unconditional prompt of classifier-free guidance" + _d(d, "negative_prompt"))
    g = p.add_argument_group("method")
    g.add_argument("--method", metavar="NAME", type=str.lower,
                   help=f"distillation method: {METHOD_NAMES_HELP}" + _d(e, "method") +
                        "; a manifest's method column overrides it per row")
    g.add_argument("--steps", metavar="N", type=_int_at_least(1), help="optimisation steps" + _d(e, "steps"))
    g.add_argument("--guidance", metavar="W", type=_float(positive=True),
                   help="classifier-free guidance scale" + _d(d, "guidance"))
    g.add_argument("--lr", metavar="LR", type=_float(positive=True),
                   help="SGD learning rate on the latent (default: 0.1 x latent area / 64^2: the official 0.1 "
                        "for SD 1.5 at 512x512, the same per-element step at other sizes)")
    g.add_argument("--seed", metavar="S", type=int,
                   help="random seed of the timestep and noise draws" + _d(e, "seed"))
    g.add_argument("--fpr-iters", metavar="N", type=_int_at_least(0),
                   help="IDS fixed-point iterations N (the cap in adaptive mode)" + _d(d, "fpr_iters"))
    g.add_argument("--fpr-lambda", metavar="L", type=_float(nonneg=True),
                   help="IDS fixed-point step size lambda" + _d(d, "fpr_lambda"))
    g.add_argument("--fpr-mode", metavar="MODE",
                   help=f"IDS fixed-point gradient: {FPR_MODES_HELP}" + _d(d, "fpr_mode"))
    g.add_argument("--with-cut", action="store_true", default=None,
                   help="add CDS's PatchNCE term to IDS (the official with_cut option)")
    g.add_argument("--cut-weight", metavar="W", type=_float(nonneg=True),
                   help="weight of the PatchNCE term (CDS, --with-cut)" + _d(d, "cut_weight"))
    g = p.add_argument_group("input and output")
    g.add_argument("--mask", metavar="PATH",
                   help="edit mask for every input without its own (white = editable, black = keep)")
    g.add_argument("--invert", action="store_true",
                   help="also edit back (target -> source) and report the A->B->A reconstruction PSNR")
    g.add_argument("--frames-every", metavar="K", type=_int_at_least(0),
                   help="save a frame every K steps (0: none)" + _d(e, "frames_every"))
    g.add_argument("--out", metavar="DIR", default=DEFAULT_OUT, help=f"output folder (default: ./{DEFAULT_OUT}/)")
    g.add_argument("--quiet", action="store_true", help="no progress bars and no per-image summary")
    g = p.add_argument_group("model")
    g.add_argument("--model", metavar="PATH_OR_HUB_ID",
                   help="diffusers folder or hub id of a Stable-Diffusion-family model (default: the bundled mini "
                        "prior)")
    g.add_argument("--device", metavar="DEVICE", help="cpu, cuda, cuda:1, mps (default: the best available)")
    g.add_argument("--dtype", metavar="DTYPE", help="fp32, fp16 or bf16 (default: fp16 on GPU, fp32 on CPU)")
    g.add_argument("--allow-pickle", action="store_true",
                   help="allow pickle (.bin/.ckpt) weights, which can run code; only for sources you trust")


def _selected_command(argv: Sequence[str]) -> str | None:
    """The subcommand named in argv (the first word that is not an option), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The full parser. Only the selected subcommand's module is imported (plugins and --help defaults)."""
    selected = _selected_command(argv)
    parser = argparse.ArgumentParser(
        prog="idsedit", description="Identity-preserving, text-driven image editing by score distillation.")
    parser.add_argument("--version", action="version", version=f"idsedit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    edit = sub.add_parser("edit", help="edit images towards a target prompt",
                          description="Edit an image, a folder of images or a manifest of edits.")
    add_edit_arguments(edit, with_defaults=selected == "edit" and any(a in ("-h", "--help") for a in argv))
    edit.set_defaults(handler=run_edit, parser=edit)
    parser.subcommands = {"edit": edit}              # name -> sub-parser (argparse keeps its own private)
    for name, (module, help_text) in PLUGINS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=run_plugin, plugin=name, parser=p, plugin_error=None)
        parser.subcommands[name] = p
        if name == selected:
            _attach_plugin(p, module)
    return parser


def _attach_plugin(p: argparse.ArgumentParser, module: str) -> None:
    """Import a plugin module and let it add its flags; on failure, remember why (reported by main)."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):
            why = f"{module} is not part of this installation yet"
        else:
            why = f"it needs the package {e.name!r}, which is not installed (pip install {e.name})"
        p.set_defaults(plugin_error=why)
        return
    if not callable(getattr(mod, "cli_main", None)):
        p.set_defaults(plugin_error=f"{module} has no cli_main(args)")
        return
    if callable(getattr(mod, "add_arguments", None)):
        mod.add_arguments(p)
    p.set_defaults(plugin_module=mod)


def _plugin_error(parser: argparse.ArgumentParser, name: str | None) -> str | None:
    """Why the plugin subcommand ``name`` cannot run (None if it can, or if ``name`` is not a plugin)."""
    if name not in PLUGINS:
        return None
    return parser.subcommands[name].get_default("plugin_error")


def run_plugin(args: argparse.Namespace) -> int:
    """Run a plugin subcommand: its module's ``cli_main(args)`` (None counts as success)."""
    code = args.plugin_module.cli_main(args)
    return 0 if code is None else int(code)


# --------------------------------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``idsedit`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with _one_line_warnings():
        try:
            parser = build_parser(argv)
            selected = _selected_command(argv)
            why = _plugin_error(parser, selected)
            if why:                                  # before parsing: its flags are unknown without the module
                raise IdseditError(f"`idsedit {selected}` is not available: {why}")
            args = parser.parse_args(argv)           # usage errors: SystemExit(2) from argparse
            if args.command is None:
                parser.print_help(sys.stderr)
                return 2
            return args.handler(args)
        except IdseditError as e:
            _err(f"error: {_one_line(e)}")
            return 1
        except KeyboardInterrupt:
            _err("interrupted")
            return 130
        except BrokenPipeError:                      # e.g. `idsedit ... | head`: stop quietly
            _silence_stdout()
            return 1


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not complain about the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):    # no real file descriptor (e.g. captured in tests)
        pass


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _one_line(e: BaseException | str) -> str:
    return " ".join(str(e).split()) or type(e).__name__


@contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Show warnings as ``warning: <message>`` on stderr (no source line); hide library deprecation noise."""
    def show(message, category, filename, lineno, file=None, line=None):
        _err(f"warning: {_one_line(str(message))}")

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.showwarning = show
        yield


# --------------------------------------------------------------------------------------------------- edit
@dataclasses.dataclass
class Outputs:
    """Where one edit's files go."""

    edited: Path    # <stem>.<method>.png, the edited image at the input size
    compare: Path   # <stem>.<method>.compare.png, side by side
    record: Path    # <stem>.<method>.json, settings, timings, UNet calls
    inverse: Path   # <stem>.<method>.inverse.png, B->A (with --invert)
    frames: Path    # <stem>.<method>.frames/, step_XXXX.png (with --frames-every)

    def files(self) -> list[Path]:
        return [self.edited, self.compare, self.record, self.inverse, self.frames]


def outputs_for(out_dir: Path, name: str) -> Outputs:
    """The output paths of one edit named ``name`` (``<stem>.<method>``)."""
    return Outputs(out_dir / f"{name}.png", out_dir / f"{name}.compare.png", out_dir / f"{name}.json",
                   out_dir / f"{name}.inverse.png", out_dir / f"{name}.frames")


def make_config(args: argparse.Namespace, method: str | None = None):
    """EditConfig from the defaults, overridden only by the flags given (and a per-job method)."""
    from .edit2d import EditConfig

    base = EditConfig()
    distill = dataclasses.replace(base.distill, **{f: getattr(args, a) for a, f in DISTILL_FLAGS.items()
                                                   if getattr(args, a) is not None})
    fields = {f: getattr(args, a) for a, f in EDIT_FLAGS.items() if getattr(args, a) is not None}
    method = method or args.method
    if method is not None:
        fields["method"] = method
    return dataclasses.replace(base, distill=distill, **fields)


def collect_jobs(args: argparse.Namespace, methods: Sequence[str]):
    """The list of EditJobs named by the input argument (image, folder or manifest), all checked."""
    from .images import list_images, IMAGE_SUFFIXES
    from .manifest import EditJob, is_manifest, read_manifest

    src = Path(args.input).expanduser()
    if not src.exists():
        raise IdseditError(f"{src} does not exist: give an image, a folder of images or a .csv/.jsonl manifest")
    mask = Path(args.mask).expanduser() if args.mask else None
    if mask is not None and not mask.is_file():
        raise IdseditError(f"mask {mask} " + ("is a folder, not an image" if mask.is_dir() else "does not exist"))
    if src.is_file() and is_manifest(src):
        if args.source is not None or args.target is not None:
            args.parser.error("--source/--target come from the manifest's columns; remove them")
        jobs = read_manifest(src, methods)
        return [dataclasses.replace(j, mask=j.mask or mask) for j in jobs]
    if args.source is None or args.target is None:
        missing = " and ".join(f for f, v in (("--source", args.source), ("--target", args.target)) if v is None)
        args.parser.error(f"{missing} required for an image or a folder (a .csv/.jsonl manifest carries its own)")
    for what, prompt in (("source", args.source), ("target", args.target)):
        if not prompt.strip():
            raise IdseditError(f"the {what} prompt is empty: give a short description such as \"a photo of a cat\"")
    if src.is_dir():
        images = list_images(src)
        if not images:
            raise IdseditError(f"no images in folder {src} (looked for {', '.join(IMAGE_SUFFIXES)})")
    else:
        images = [src]
    return [EditJob(p, args.source, args.target, mask) for p in images]


def plan_outputs(jobs, out_dir: Path, default_method: str, input_arg: Path) -> list[Outputs]:
    """Output paths per job, unique within the run; refuse any that would overwrite an input."""
    if out_dir.exists() and not out_dir.is_dir():
        raise IdseditError(f"--out {out_dir} is a file: give a folder")
    if input_arg.is_dir() and out_dir.exists() and out_dir.resolve() == input_arg.resolve():
        raise IdseditError(f"--out {out_dir} is the input folder: outputs would mix with the inputs; "
                           "choose another --out")
    _check_writable(out_dir)
    inputs = {input_arg.resolve()} | {j.image.resolve() for j in jobs} | {j.mask.resolve() for j in jobs if j.mask}
    taken: set[str] = set()
    plans = []
    for job in jobs:
        stem, n = job.image.stem, 1
        name = f"{stem}.{job.method or default_method}"
        while name.lower() in taken:                 # same stem twice (a.png + a.jpg, or one image, many rows)
            n += 1
            name = f"{stem}-{n}.{job.method or default_method}"
        taken.add(name.lower())
        outs = outputs_for(out_dir, name)
        for path in outs.files():
            if path.resolve() in inputs:
                raise IdseditError(f"--out {out_dir} would overwrite the input {path}: choose another --out")
        plans.append(outs)
    return plans


def _check_writable(out_dir: Path) -> None:
    """Fail early (before any model loads) if the output folder cannot be created or written."""
    probe = out_dir
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise IdseditError(f"cannot create --out {out_dir}: {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise IdseditError(f"cannot write to --out {out_dir} ({probe} is not writable): choose another --out")


def run_edit(args: argparse.Namespace) -> int:
    """``idsedit edit``: check everything, load the model once, run each edit, write its outputs."""
    from .distill import METHODS

    if args.method is not None and args.method not in METHODS:
        raise IdseditError(f"unknown method {args.method!r}: use one of {', '.join(sorted(METHODS))}")
    config = make_config(args)                       # bad flag values fail here, before anything is loaded
    jobs = collect_jobs(args, sorted(METHODS))
    if args.invert and any(j.mask for j in jobs):
        raise IdseditError("--invert does not take a mask (the A->B->A test edits the whole image): drop --mask")
    plans = plan_outputs(jobs, Path(args.out).expanduser(), config.method, Path(args.input).expanduser())
    configs = [make_config(args, j.method) if j.method else config for j in jobs]
    check_device(args.device)
    with _quiet_libraries():                         # diffusers/transformers chatter; our own warnings still show
        prior = _load_prior(args)
        done = [_run_reported(prior, job, cfg, outs, args, single=len(jobs) == 1)
                for job, cfg, outs in zip(jobs, configs, plans)]
    failed = done.count(False)
    if len(jobs) > 1 and (failed or not args.quiet):
        print(f"{len(jobs) - failed} of {len(jobs)} edits done, {failed} failed", file=sys.stderr if failed else
              sys.stdout, flush=True)
    return 1 if failed else 0


def _run_reported(prior, job, config, outs: Outputs, args: argparse.Namespace, single: bool) -> bool:
    """Run one edit and print its summary line. A single edit raises its error; in a batch the error is printed
    as one line (a traceback too if it looks like a bug) and False is returned so the other edits still run.
    """
    try:
        line = run_one(prior, job, config, outs, args)
    except IdseditError as e:
        if single:
            raise
        message = _one_line(e)
    except Exception as e:                           # noqa: BLE001  one bad edit must not stop a batch
        if single and _is_resource_error(e):
            raise IdseditError(_resource_message(e)) from None
        if single:
            raise                                    # a bug: keep the traceback
        if not _is_resource_error(e):
            traceback.print_exc()
        message = _resource_message(e)
    else:
        if not args.quiet:
            print(line, flush=True)
        return True
    _err(f"error: {message}" if str(job.image) in message else f"error: {job.image}: {message}")
    return False


def _is_resource_error(e: BaseException) -> bool:
    """Out of (GPU) memory, or an OS error while writing: the user can fix these."""
    return isinstance(e, (MemoryError, OSError)) or type(e).__name__ == "OutOfMemoryError"


def _resource_message(e: BaseException) -> str:
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return ("out of memory: use a smaller image, --dtype fp16 on a GPU, or another --device "
                f"({_one_line(e)[:120]})")
    if isinstance(e, OSError):
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        return f"could not write{where}: {e.strerror or _one_line(e)}: free disk space or choose another --out"
    return f"unexpected {type(e).__name__}: {_one_line(e)[:200]} (a bug: please report it)"


def check_device(name: str | None) -> None:
    """Raise IdseditError for a --device that torch cannot parse or that this machine does not have."""
    from .prior import check_device as check

    check(name)


def _load_prior(args: argparse.Namespace):
    """The model named by --model (or the bundled mini prior)."""
    from . import prior as prior_mod

    return prior_mod.load_prior(args.model, device=args.device, dtype=args.dtype, allow_pickle=args.allow_pickle)


@contextmanager
def _quiet_libraries() -> Iterator[None]:
    """diffusers/transformers log only errors and show no loading bars while inside."""
    restore = []
    for name in ("diffusers", "transformers"):
        try:
            logging_mod = importlib.import_module(f"{name}.utils.logging")
        except ImportError:
            continue
        restore.append((logging_mod, logging_mod.get_verbosity()))
        logging_mod.set_verbosity_error()
        if hasattr(logging_mod, "disable_progress_bar"):
            logging_mod.disable_progress_bar()
    try:
        yield
    finally:
        for logging_mod, level in restore:
            logging_mod.set_verbosity(level)
            if hasattr(logging_mod, "enable_progress_bar"):
                logging_mod.enable_progress_bar()


def run_one(prior, job, config, outs: Outputs, args: argparse.Namespace) -> str:
    """Run one edit (and its inverse with --invert), write its outputs; return the summary line."""
    from . import edit2d
    from .images import load_image, load_mask

    t0 = time.perf_counter()
    image = load_image(job.image)
    mask = load_mask(job.mask, image.size) if job.mask else None
    progress = not args.quiet
    inverse = None
    if args.invert:
        inv = edit2d.invert_image(prior, image, job.source, job.target, config, progress=progress)
        result, inverse = inv.forward, inv
    else:
        result = edit2d.edit_image(prior, image, job.source, job.target, config, mask=mask, progress=progress)
    record = build_record(result, job, config, outs, prior, args, inverse, time.perf_counter() - t0)
    write_outputs(result, inverse, record, outs, job, config)
    calls = record["unet_calls_total"]
    extra = f", A->B->A PSNR {inverse.psnr:.2f} dB" if inverse is not None else ""
    return (f"{job.image} -> {outs.edited}  ({record['wall_s']:.1f} s, {calls['forward']} UNet calls"
            f"{' + %d backward' % calls['backward'] if calls.get('backward') else ''}{extra})")


def build_record(result, job, config, outs: Outputs, prior, args, inverse, wall_s: float) -> dict:
    """The JSON record of one edit: EditResult.record() plus input, model, outputs and (with --invert) PSNR."""
    record = dict(result.record())
    calls = {k: int(result.unet_calls.get(k, 0)) for k in ("forward", "backward", "samples")}
    record.update({
        "idsedit_version": __version__,
        "input": str(job.image),
        "mask": str(job.mask) if job.mask else None,
        "manifest_line": job.line,
        "method": config.method,
        "model": getattr(prior, "name", None) or args.model or "bundled mini prior",
        "device": str(getattr(prior, "device", args.device)),
        "dtype": str(getattr(prior, "dtype", args.dtype)).replace("torch.", ""),
        "outputs": {"edited": str(outs.edited), "compare": str(outs.compare), "record": str(outs.record)},
    })
    if result.frames:
        record["outputs"]["frames"] = str(outs.frames)
    if inverse is not None:
        back = inverse.backward
        record["invert"] = {"psnr_db": inverse.psnr, "latent_psnr_db": getattr(inverse, "latent_psnr", None),
                            "inverse_image": str(outs.inverse), "backward": back.record()}
        record["outputs"]["inverse"] = str(outs.inverse)
        for k in calls:
            calls[k] += int(back.unet_calls.get(k, 0))
    record.setdefault("unet_calls", dict(result.unet_calls))
    record.setdefault("timings_s", dict(result.timings))
    record["unet_calls_total"] = calls
    record["wall_s"] = wall_s
    return record


def write_outputs(result, inverse, record: dict, outs: Outputs, job, config) -> None:
    """Write every output of one edit; on any failure (or Ctrl-C) remove those already written, then re-raise."""
    from .images import comparison_image, save_image_atomic, save_json_atomic

    written: list[Path] = []
    try:
        if result.frames:
            _save_frames(result.frames, outs.frames)
            written.append(outs.frames)
        save_image_atomic(result.image, outs.edited)
        written.append(outs.edited)
        panels, labels = [result.image], [f"{config.method}: {job.target}"]
        if inverse is not None:
            save_image_atomic(inverse.backward.image, outs.inverse)
            written.append(outs.inverse)
            panels.append(inverse.backward.image)
            labels.append(f"back: {job.source} ({inverse.psnr:.1f} dB)")
        fig = comparison_image(result.source_image, panels[0], [f"source: {job.source}", *labels], *panels[1:])
        save_image_atomic(fig, outs.compare)
        written.append(outs.compare)
        save_json_atomic(record, outs.record)          # last: its presence means the set is complete
    except BaseException:
        for path in written:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise


_FRAME = re.compile(r"step_\d+\.png")


def _save_frames(frames, dest: Path) -> None:
    """Write frames to ``dest/step_XXXX.png`` via a temporary folder renamed into place."""
    from .images import atomic_dir, save_image_atomic

    if dest.exists():
        if not dest.is_dir() or any(not _FRAME.fullmatch(p.name) for p in dest.iterdir()):
            raise IdseditError(f"{dest} exists and holds files that are not frames: move it away or choose "
                               "another --out")
    with atomic_dir(dest) as tmp:                    # a previous run's frames are replaced as a whole
        for step, frame in frames:
            save_image_atomic(frame, tmp / f"step_{int(step):04d}.png")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
