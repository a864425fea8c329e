"""``idsedit edit``: edit an image, a folder of images or a manifest of edits (a command module of :mod:`idsedit.cli`).

    idsedit edit cat.png --source "a cat" --target "a pig" --method ids
    idsedit edit photos/ --source "a photo of a house" --target "a photo of a house in winter" --out winter/
    idsedit edit edits.csv --steps 100          # a manifest: image, source, target[, mask, method] per row

Output names. Each edit writes ``<stem>.<method>.<key>.png`` (+ ``.compare.png``, ``.json``, ``.inverse.png``,
``.frames/``), where ``<key>`` is 8 hex digits of a SHA-256 over everything that decides the result: the input
file's bytes, the mask file's bytes, both prompts, the method variant, every EditConfig/DistillConfig setting (seed
included), the model named by --model and --invert. A different edit therefore never has the same name as an
earlier one, and the same edit always has the same name, so a rerun (e.g. of a batch after Ctrl-C) skips every edit
whose outputs are already complete (its JSON record and every file it lists exist) and says how many it skipped;
``--overwrite`` runs them again and replaces their outputs. Device and dtype are not in the key (the same edit on
another machine is the same edit).

Writes are transactions: all outputs of one edit go to hidden temporaries first and are then renamed into place
together (:func:`idsedit.images.replace_together`), the JSON record last; a failure or Ctrl-C part-way leaves the
previous set (if any) exactly as it was.

Methods are the names of :mod:`idsedit.variants` (``ids``, ``ids-jf``, ``ids-adaptive``, ``ids+cut``, ``dds``, ...,
and their aliases). Flags and variants combine by one rule: a variant's own settings are its definition, so a flag
that sets one of them to another value is an error (``--method ids-jf --fpr-mode exact``); every other flag applies
as given (``--method ids --fpr-mode adaptive`` runs adaptive IDS, ``--method ids+cut --cut-weight 1`` a lighter cut).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Sequence

from . import __version__
from .cli import _err, _one_line, is_resource_error, resource_message
from .errors import IdseditError
from .variants import ALIASES, EDIT_PRESETS, VARIANTS, canonical_variant, get_preset, get_variant

DEFAULT_OUT = "idsedit-out"
"""Output folder used when --out is not given (relative to the working directory)."""

METHOD_NAMES_HELP = ", ".join(VARIANTS)
FPR_MODES_HELP = "exact, jacobian-free, adaptive"
KEY_LENGTH = 8
"""Hex digits of the edit key in output names (32 bits: a collision needs ~65000 edits of one image stem)."""

# Flag -> config field. Every flag of `edit` that changes an edit is listed here (tests check each one arrives).
EDIT_FLAGS = {"steps": "steps", "lr": "lr", "seed": "seed", "frames_every": "frames_every",
              "lr_schedule": "lr_schedule", "t_anneal_to": "t_anneal_to"}
DISTILL_FLAGS = {"guidance": "guidance", "fpr_iters": "fpr_iters", "fpr_lambda": "fpr_lambda",
                 "fpr_mode": "fpr_mode", "fpr_attention_backward": "fpr_attention_backward",
                 "with_cut": "with_cut", "cut_weight": "cut_weight",
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


class _ConfigDefaultsFormatter(argparse.HelpFormatter):
    """Appends ``(default: ...)`` from EditConfig/DistillConfig to the help of flags that name a config field.

    The defaults are read only when help is printed, so building the parser never imports torch."""

    def _get_help_string(self, action):
        text = super()._get_help_string(action) or ""
        where = getattr(action, "config_default", None)
        if where is None:
            return text
        from .edit2d import EditConfig

        cfg = EditConfig()
        value = getattr(cfg.distill if where[0] == "distill" else cfg, where[1])
        return text + (f" (default: {value!r})" if isinstance(value, str) and not value else f" (default: {value})")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``idsedit edit``. Defaults stay None so only given flags override EditConfig/DistillConfig."""
    p.formatter_class = _ConfigDefaultsFormatter

    def arg(group, *names, config=None, **kw):
        action = group.add_argument(*names, **kw)
        action.config_default = config
        return action

    p.add_argument("input", metavar="IMAGE_OR_FOLDER_OR_MANIFEST",
                   help="an image file, a folder of images (every format idsedit reads: png, jpg, webp, bmp, gif, "
                        "tif, ...), or a .csv/.jsonl manifest with columns image, source, target[, mask, method]")
    g = p.add_argument_group("prompts")
    g.add_argument("--source", metavar="TEXT", help="prompt describing the input image (not with a manifest)")
    g.add_argument("--target", metavar="TEXT", help="prompt describing the wanted result (not with a manifest)")
    arg(g, "--negative-prompt", metavar="TEXT", config=("distill", "negative_prompt"),
        help="unconditional prompt of classifier-free guidance")
    g = p.add_argument_group("method")
    arg(g, "--method", metavar="NAME", type=str.lower, config=("edit", "method"),
        help=f"method variant: {METHOD_NAMES_HELP} (aliases: {', '.join(ALIASES)}); a manifest's method column "
             "overrides it per row. Flags that contradict a variant's own settings are refused")
    g.add_argument("--preset", metavar="NAME", type=str.lower, choices=list(EDIT_PRESETS),
                   help="a measured setting: " + "; ".join(f"{p.name}: {p.summary}" for p in EDIT_PRESETS.values())
                        + ". Flags given with it override its values")
    arg(g, "--steps", metavar="N", type=_int_at_least(1), config=("edit", "steps"), help="optimisation steps")
    arg(g, "--guidance", metavar="W", type=_float(positive=True), config=("distill", "guidance"),
        help="classifier-free guidance scale")
    g.add_argument("--lr", metavar="LR", type=_float(positive=True),
                   help="SGD learning rate on the latent (default: 0.1 x latent area / 64^2: the official 0.1 "
                        "for SD 1.5 at 512x512, the same per-element step at other sizes)")
    arg(g, "--lr-schedule", metavar="NAME", type=str.lower, choices=["constant", "linear", "cosine"],
        config=("edit", "lr_schedule"), help="learning-rate decay over the steps: constant (the official loop), "
                                            "linear or cosine (to ~0 at the last step)")
    arg(g, "--t-anneal-to", metavar="T", type=_int_at_least(1), config=("edit", "t_anneal_to"),
        help="anneal the timestep range: t's upper end falls linearly from 949 to T over the steps "
             "(default: fixed, t ~ U{50..948})")
    arg(g, "--seed", metavar="S", type=int, config=("edit", "seed"),
        help="random seed of the timestep and noise draws")
    arg(g, "--fpr-iters", metavar="N", type=_int_at_least(0), config=("distill", "fpr_iters"),
        help="IDS fixed-point iterations N (the cap in adaptive mode)")
    arg(g, "--fpr-lambda", metavar="L", type=_float(nonneg=True), config=("distill", "fpr_lambda"),
        help="IDS fixed-point step size lambda")
    arg(g, "--fpr-mode", metavar="MODE", config=("distill", "fpr_mode"),
        help=f"IDS fixed-point gradient: {FPR_MODES_HELP}")
    arg(g, "--fpr-attention-backward", metavar="PREC", type=str.lower, choices=["bf16", "fp32"],
        config=("distill", "fpr_attention_backward"),
        help="precision of the UNet's attention backward inside exact FPR: bf16 (forward stays exact fp32; ~25 %% "
             "less CPU time per exact-IDS step on CPUs with native bf16, same quality; no effect on GPU or fp16 "
             "models) or fp32")
    g.add_argument("--with-cut", action="store_true", default=None,
                   help="add CDS's PatchNCE term to IDS (the official with_cut option; same as --method ids+cut)")
    arg(g, "--cut-weight", metavar="W", type=_float(nonneg=True), config=("distill", "cut_weight"),
        help="weight of the PatchNCE term (CDS, --with-cut)")
    g = p.add_argument_group("input and output")
    g.add_argument("--mask", metavar="PATH",
                   help="edit mask for every input without its own (white = editable, black = keep)")
    g.add_argument("--invert", action="store_true",
                   help="also edit back (target -> source) and report the A->B->A reconstruction PSNR")
    arg(g, "--frames-every", metavar="K", type=_int_at_least(0), config=("edit", "frames_every"),
        help="save a frame every K steps (0: none)")
    g.add_argument("--out", metavar="DIR", default=DEFAULT_OUT, help=f"output folder (default: ./{DEFAULT_OUT}/)")
    g.add_argument("--overwrite", action="store_true",
                   help="run edits whose outputs already exist again and replace them (default: skip them; output "
                        "names carry a key of the input, prompts, method and settings, so other edits never "
                        "collide)")
    g.add_argument("--quiet", action="store_true", help="no progress bars and no per-image summary")
    g = p.add_argument_group("model")
    g.add_argument("--model", metavar="PATH_OR_HUB_ID",
                   help="diffusers folder or hub id of a Stable-Diffusion-family model (default: the bundled mini "
                        "prior)")
    g.add_argument("--device", metavar="DEVICE", help="cpu, cuda, cuda:1, mps (default: the best available)")
    g.add_argument("--dtype", metavar="DTYPE", help="fp32, fp16 or bf16 (default: fp16 on GPU, fp32 on CPU)")
    g.add_argument("--allow-pickle", action="store_true",
                   help="allow pickle (.bin/.ckpt) weights, which can run code; only for sources you trust")


def cli_main(args: argparse.Namespace) -> int:
    """Entry point of the ``edit`` command (called by :func:`idsedit.cli.main`)."""
    return run_edit(args)


# --------------------------------------------------------------------------------------------------- configs
@dataclasses.dataclass
class Outputs:
    """Where one edit's files go."""

    edited: Path    # <name>.png, the edited image at the input size
    compare: Path   # <name>.compare.png, side by side
    record: Path    # <name>.json, settings, timings, UNet calls
    inverse: Path   # <name>.inverse.png, B->A (with --invert)
    frames: Path    # <name>.frames/, step_XXXX.png (with --frames-every)

    def files(self) -> list[Path]:
        return [self.edited, self.compare, self.record, self.inverse, self.frames]


def outputs_for(out_dir: Path, name: str) -> Outputs:
    """The output paths of one edit named ``name`` (``<stem>.<method>.<key>``)."""
    return Outputs(out_dir / f"{name}.png", out_dir / f"{name}.compare.png", out_dir / f"{name}.json",
                   out_dir / f"{name}.inverse.png", out_dir / f"{name}.frames")


def make_config(args: argparse.Namespace, method: str | None = None):
    """EditConfig of the method variant (the job's, else --method, else the default), then the flags given.

    A flag that sets a field the variant defines to a different value is an IdseditError (see module docstring).
    """
    from .edit2d import EditConfig
    from .variants import variant_config

    preset = _preset(args)
    name = _chosen_variant(args, method)
    variant = get_variant(name)
    given = {f: getattr(args, a) for a, f in DISTILL_FLAGS.items() if getattr(args, a) is not None}
    for field, value in variant.distill.items():
        if field in given and given[field] != value:
            flag = "--" + next(a for a, f in DISTILL_FLAGS.items() if f == field).replace("_", "-")
            raise IdseditError(f"--method {name} means {flag.lstrip('-')} {_flag_value(value)}, but {flag} "
                               f"{_flag_value(given[field])} was given: drop {flag} or choose another --method "
                               f"(e.g. {variant.method} with {flag} {_flag_value(given[field])})")
    base = EditConfig()
    if preset is not None:                            # the preset's values, then the flags given
        base = dataclasses.replace(base, distill=dataclasses.replace(base.distill, **preset.distill), **preset.edit)
    base = dataclasses.replace(base, distill=dataclasses.replace(base.distill, **given))
    fields = {f: getattr(args, a) for a, f in EDIT_FLAGS.items() if getattr(args, a) is not None}
    return variant_config(name, base, **fields)


def _flag_value(value) -> str:
    return "on" if value is True else "off" if value is False else str(value)


def variant_name(args: argparse.Namespace, job) -> str:
    """The canonical variant name a job runs (its manifest method, else --method, else --preset's, else the
    default)."""
    return _chosen_variant(args, job.method)


def _preset(args: argparse.Namespace):
    """The EditPreset --preset names, or None."""
    return get_preset(args.preset) if getattr(args, "preset", None) else None


def _chosen_variant(args: argparse.Namespace, method: str | None) -> str:
    """canonical(method, else --method, else --preset's variant, else EditConfig's default)."""
    from .edit2d import EditConfig

    preset = _preset(args)
    return canonical_variant(method or args.method or (preset.variant if preset else EditConfig().method))


def collect_jobs(args: argparse.Namespace):
    """The list of EditJobs named by the input argument (image, folder or manifest), all checked."""
    from .images import IMAGE_SUFFIXES, list_images
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
        jobs = read_manifest(src, [*VARIANTS, *ALIASES])
        return [dataclasses.replace(j, mask=j.mask or mask,
                                    method=canonical_variant(j.method) if j.method else None) for j in jobs]
    if args.source is None or args.target is None:
        missing = " and ".join(f for f, v in (("--source", args.source), ("--target", args.target)) if v is None)
        args.parser.error(f"{missing} required for an image or a folder (a .csv/.jsonl manifest carries its own)")
    for what, prompt in (("source", args.source), ("target", args.target)):
        if not prompt.strip():
            raise IdseditError(f"the {what} prompt is empty: give a short description such as \"a photo of a cat\"")
    if src.is_dir():
        images = list_images(src)
        if not images:
            shown = ", ".join(s for s in IMAGE_SUFFIXES if s in (".png", ".jpg", ".webp", ".bmp", ".gif", ".tif"))
            raise IdseditError(f"no images in folder {src} (looked for {shown} and the other formats idsedit reads)")
    else:
        images = [src]
    return [EditJob(p, args.source, args.target, mask) for p in images]


# --------------------------------------------------------------------------------------------------- names
def _file_digest(path: Path | None) -> str | None:
    """SHA-256 of a file's bytes (None for no file); an unreadable file is left to the image reader to report."""
    if path is None:
        return None
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return f"unreadable:{path}"
    return h.hexdigest()


def edit_key(job, variant: str, config, args: argparse.Namespace) -> str:
    """8 hex digits naming one edit: input and mask bytes, prompts, variant, every setting, model, --invert."""
    from .images import to_jsonable

    what = {"input": _file_digest(job.image), "mask": _file_digest(job.mask), "source": job.source,
            "target": job.target, "variant": variant, "config": to_jsonable(config),
            "model": args.model or "bundled mini prior", "invert": bool(args.invert)}
    text = json.dumps(what, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:KEY_LENGTH]


def plan_outputs(jobs, configs, variants: Sequence[str], out_dir: Path, input_arg: Path,
                 args: argparse.Namespace) -> list[Outputs]:
    """Output paths per job (``<stem>.<variant>.<key>``), unique within the run; refuse any that would overwrite
    an input."""
    if out_dir.exists() and not out_dir.is_dir():
        raise IdseditError(f"--out {out_dir} is a file: give a folder")
    if input_arg.is_dir() and out_dir.exists() and out_dir.resolve() == input_arg.resolve():
        raise IdseditError(f"--out {out_dir} is the input folder: outputs would mix with the inputs; "
                           "choose another --out")
    _check_writable(out_dir)
    inputs = {input_arg.resolve()} | {j.image.resolve() for j in jobs} | {j.mask.resolve() for j in jobs if j.mask}
    taken: set[str] = set()
    plans = []
    for job, config, variant in zip(jobs, configs, variants):
        stem, key, n = job.image.stem, edit_key(job, variant, config, args), 1
        name = f"{stem}.{variant}.{key}"
        while name.lower() in taken:                 # the very same edit twice in one run (e.g. a repeated row)
            n += 1
            name = f"{stem}-{n}.{variant}.{key}"
        taken.add(name.lower())
        outs = outputs_for(out_dir, name)
        for path in outs.files():
            if path.resolve() in inputs:
                raise IdseditError(f"--out {out_dir} would overwrite the input {path}: choose another --out")
        plans.append(outs)
    return plans


def expected_files(outs: Outputs, config, invert: bool) -> list[Path]:
    """The files a complete run of this edit leaves: PNG, compare PNG, JSON [, inverse PNG] [, frames folder]."""
    files = [outs.edited, outs.compare, outs.record]
    if invert:
        files.append(outs.inverse)
    if config.frames_every and config.frames_every <= config.steps:
        files.append(outs.frames)
    return files


def is_complete(outs: Outputs, config, invert: bool) -> bool:
    """True when a previous run left this edit's whole set: a readable JSON record and every expected file."""
    try:
        record = json.loads(outs.record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and all(p.exists() for p in expected_files(outs, config, invert))


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


# --------------------------------------------------------------------------------------------------- running
def run_edit(args: argparse.Namespace) -> int:
    """``idsedit edit``: check everything, skip complete edits, load the model once, run each edit, write it."""
    if args.method is not None:
        canonical_variant(args.method)                # unknown names fail here, listing the valid ones
    make_config(args)                                 # bad flag values fail here, before anything is loaded
    jobs = collect_jobs(args)
    if args.invert and any(j.mask for j in jobs):
        raise IdseditError("--invert does not take a mask (the A->B->A test edits the whole image): drop --mask")
    configs = [make_config(args, j.method) for j in jobs]
    variants = [variant_name(args, j) for j in jobs]
    plans = plan_outputs(jobs, configs, variants, Path(args.out).expanduser(), Path(args.input).expanduser(), args)
    todo = [i for i, (c, o) in enumerate(zip(configs, plans))
            if args.overwrite or not is_complete(o, c, args.invert)]
    skipped = len(jobs) - len(todo)
    if skipped and not args.quiet:
        if len(jobs) == 1:
            print(f"{jobs[0].image}: already done, {plans[0].edited} is complete (--overwrite runs it again)",
                  flush=True)
        else:
            print(f"skipped {skipped} of {len(jobs)} edits whose outputs are already complete (--overwrite runs "
                  "them again)", flush=True)
    if not todo:
        return 0
    check_device(args.device)
    from .prior import quiet_libraries

    with quiet_libraries():                          # diffusers/transformers chatter (hub download bars stay on)
        prior = _load_prior(args)
        done = [_run_reported(prior, jobs[i], configs[i], variants[i], plans[i], args, single=len(jobs) == 1)
                for i in todo]
    failed = done.count(False)
    if len(jobs) > 1 and (failed or not args.quiet):
        tail = f", {skipped} skipped" if skipped else ""
        print(f"{len(todo) - failed} of {len(jobs)} edits done, {failed} failed{tail}",
              file=sys.stderr if failed else sys.stdout, flush=True)
    return 1 if failed else 0


def _run_reported(prior, job, config, variant: str, outs: Outputs, args: argparse.Namespace, single: bool) -> bool:
    """Run one edit and print its summary line. A single edit raises its error; in a batch the error is printed
    as one line (a traceback too if it looks like a bug) and False is returned so the other edits still run.
    """
    try:
        line = run_one(prior, job, config, variant, outs, args)
    except IdseditError as e:
        if single:
            raise
        message = _one_line(e)
    except Exception as e:                           # noqa: BLE001  one bad edit must not stop a batch
        if single and is_resource_error(e):
            raise IdseditError(resource_message(e)) from None
        if single:
            raise                                    # a bug: keep the traceback
        if not is_resource_error(e):
            traceback.print_exc()
        message = resource_message(e)
    else:
        if not args.quiet:
            print(line, flush=True)
        return True
    _err(f"error: {message}" if str(job.image) in message else f"error: {job.image}: {message}")
    return False


def check_device(name: str | None) -> None:
    """Raise IdseditError for a --device that torch cannot parse or that this machine does not have."""
    from .prior import check_device as check

    check(name)


def _load_prior(args: argparse.Namespace):
    """The model named by --model (or the bundled mini prior)."""
    from . import prior as prior_mod

    return prior_mod.load_prior(args.model, device=args.device, dtype=args.dtype, allow_pickle=args.allow_pickle)


def run_one(prior, job, config, variant: str, outs: Outputs, args: argparse.Namespace) -> str:
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
    record = build_record(result, job, config, variant, outs, prior, args, inverse, time.perf_counter() - t0)
    write_outputs(result, inverse, record, outs, job, variant)
    calls = record["unet_calls_total"]
    extra = f", A->B->A PSNR {inverse.psnr:.2f} dB" if inverse is not None else ""
    return (f"{job.image} -> {outs.edited}  ({record['wall_s']:.1f} s, {calls['forward']} UNet calls"
            f"{' + %d backward' % calls['backward'] if calls.get('backward') else ''}{extra})")


def build_record(result, job, config, variant: str, outs: Outputs, prior, args, inverse, wall_s: float) -> dict:
    """The JSON record of one edit: EditResult.record() plus input, model, outputs and (with --invert) PSNR."""
    record = dict(result.record())
    calls = {k: int(result.unet_calls.get(k, 0)) for k in ("forward", "backward", "samples")}
    record.update({
        "idsedit_version": __version__,
        "input": str(job.image),
        "mask": str(job.mask) if job.mask else None,
        "manifest_line": job.line,
        "method": config.method,
        "variant": variant,
        "edit_key": outs.record.stem.rsplit(".", 1)[-1],
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


_FRAME = re.compile(r"step_\d+\.png")


def write_outputs(result, inverse, record: dict, outs: Outputs, job, variant: str) -> None:
    """Write every output of one edit as one transaction: each file to a hidden temporary first, then all renamed
    into place together, the JSON record last (:func:`idsedit.images.replace_together`). Outputs of an earlier run
    under the same name that this run does not produce (e.g. old frames) are removed in the same transaction. On any
    failure or Ctrl-C the previous set stays exactly as it was and no temporary is left.
    """
    from .images import _remove, comparison_image, json_text, replace_together, temp_near, write_image, write_text

    if outs.frames.exists():
        if not outs.frames.is_dir() or any(not _FRAME.fullmatch(p.name) for p in outs.frames.iterdir()):
            raise IdseditError(f"{outs.frames} exists and holds files that are not frames: move it away or choose "
                               "another --out")
    temps: list[Path] = []
    moves: list[tuple[Path, Path]] = []

    def temp_for(dest: Path, folder: bool = False) -> Path:
        temps.append(temp_near(dest, folder=folder))
        moves.append((temps[-1], dest))
        return temps[-1]

    try:
        if result.frames:
            tmp = temp_for(outs.frames, folder=True)
            for step, frame in result.frames:
                write_image(frame, tmp / f"step_{int(step):04d}.png", "PNG")
        write_image(result.image, temp_for(outs.edited), "PNG")
        panels, labels = [result.image], [f"{variant}: {job.target}"]
        if inverse is not None:
            write_image(inverse.backward.image, temp_for(outs.inverse), "PNG")
            panels.append(inverse.backward.image)
            labels.append(f"back: {job.source} ({inverse.psnr:.1f} dB)")
        fig = comparison_image(result.source_image, panels[0], [f"source: {job.source}", *labels], *panels[1:])
        write_image(fig, temp_for(outs.compare), "PNG")
        write_text(json_text(record), temp_for(outs.record))       # last: its presence marks a complete set
    except BaseException:
        for tmp in temps:
            _remove(tmp)
        raise
    produced = {dest for _, dest in moves}
    replace_together(moves, remove=[p for p in outs.files() if p not in produced and p.exists()])
