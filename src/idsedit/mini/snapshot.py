"""Compact, committable snapshots of a mini-prior training state, and their restore.

A training state folder holds large live checkpoints that git must not track (weights, AdamW moments, caches).
``make`` copies the latest COMPLETE checkpoint (every file of a stage carries its step in its safetensors
metadata; a copy is only written when all of them, and the stage's json, agree) into ``<state>/snapshot/``:

    snapshot/vae.safetensors                   VAE weights, fp32 (the latents the UNet learns depend on them)
    snapshot/unet.safetensors, text_encoder.safetensors             live weights (``--live`` dtype, fp16 default)
    snapshot/unet_ema.safetensors, text_encoder_ema.safetensors     EMA weights (``--ema`` dtype, fp16 default)
    snapshot/*_opt.safetensors                 AdamW moments (bf16), only with ``--moments``
    snapshot/vae.json, unet.json, ...          the stages' step/minutes/loss records
    snapshot/heldout.csv, log.txt              the held-out curve and the training log
    snapshot/SNAPSHOT.json                     what was copied, steps, dtypes, sizes, time

``restore`` does the inverse when the snapshot is newer than the live state (e.g. in a fresh clone): weights
back to fp32 files the trainer reads. Without moments the resumed run starts AdamW afresh (the trainer then
re-warms the learning rate from that step) and is not bit-identical to an uninterrupted run; with
``--moments`` (bf16) it is as close as a normal resume.

    python -m idsedit.mini.snapshot make train-state-v2 [--live fp16] [--ema fp16] [--moments]

fp16 is the default for the UNet/text weights: the same 2 bytes as bf16 with 8x finer rounding (relative 5e-4),
and weights never come near fp16's range limits; the shipped pipeline stores fp16 anyway. The VAE stays fp32
(the cached latents the UNet learns from are computed from it).
    python -m idsedit.mini.snapshot restore train-state-v2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from ..errors import IdseditError

STAGE_FILES = {
    "vae": ("vae.json", ["vae.safetensors"], ["vae_opt.safetensors"]),
    "vae_decoder": ("vae_decoder.json", ["vae_decoder.safetensors"], ["vae_decoder_opt.safetensors"]),
    "unet": ("unet.json", ["unet.safetensors", "text_encoder.safetensors", "unet_ema.safetensors",
                           "text_encoder_ema.safetensors"], ["unet_opt.safetensors"]),
}
"""stage -> (record json, weight files, optimizer files)."""

EXTRA_FILES = ("heldout.csv", "train.log")
"""Small text files copied (train.log: only its message lines, not the progress bars)."""


def _log_lines(text: str) -> str:
    """The message lines of a training log: progress-bar redraws (carriage returns) removed."""
    out = []
    for line in text.splitlines():
        part = line.split("\r")[-1] if "\r" in line else line
        if part.startswith("[") or " run.sh " in part or part.startswith(("error", "Traceback")):
            out.append(part)
    return "\n".join(out) + "\n"

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def file_step(path: Path) -> int | None:
    """The training step stored in a safetensors file's metadata (None when absent)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return int(meta["step"]) if "step" in meta else None


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def _dtype_of(name: str, live: str, ema: str) -> str:
    if name.endswith("_opt.safetensors"):
        return "bf16"
    if name.startswith("vae"):
        return "fp32"
    return ema if "_ema" in name else live


def _convert(src: Path, dst: Path, dtype: str, step: int) -> int | None:
    """Copy safetensors ``src`` to ``dst`` with floating tensors cast to ``dtype`` (atomic) if ``src`` holds
    ``step`` (read from the same open file as the tensors); returns the bytes written, or None (other step)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        if int((f.metadata() or {}).get("step", -1)) != step:
            return None
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    td = getattr(torch, DTYPES[dtype])
    out = {k: (v.to(td) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    tmp = dst.with_name(dst.name + ".tmp")
    save_file(out, str(tmp), metadata={"step": str(step), "dtype": dtype})
    os.replace(tmp, dst)
    return dst.stat().st_size


def consistent_stage(state: Path, stage: str) -> int | None:
    """The step of ``stage``'s checkpoint if its json and every weight file agree on it, else None (absent or
    mid-write)."""
    record, weights, _ = STAGE_FILES[stage]
    meta = _read_json(state / record)
    if meta is None or not all((state / w).exists() for w in weights):
        return None
    steps = {file_step(state / w) for w in weights}
    return meta["step"] if steps == {meta["step"]} else None


def make(state: str | Path, live: str = "fp16", ema: str = "fp16", moments: bool = False, tries: int = 30,
         wait_s: float = 5.0, log=print) -> dict:
    """Write ``<state>/snapshot/`` from the newest consistent checkpoint (the trainer may keep running: a stage
    whose files disagree is retried every ``wait_s`` seconds up to ``tries`` times). Returns the SNAPSHOT.json
    record."""
    state = Path(state)
    if not (state / "config.json").exists():
        raise IdseditError(f"{state} has no config.json: it is not a mini-prior training state folder")
    for name, d in (("--live", live), ("--ema", ema)):
        if d not in DTYPES:
            raise IdseditError(f"{name} must be one of {', '.join(DTYPES)}, got {d!r}")
    snap = state / "snapshot"
    tmp_dir = state / "snapshot.tmp"
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    tmp_dir.mkdir()
    record = {"made_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "live_dtype": live,
              "ema_dtype": ema, "moments": moments, "stages": {}, "bytes": 0}
    for stage, (rec, weights, opts) in STAGE_FILES.items():
        if not (state / rec).exists():
            continue
        for _ in range(tries):
            step = consistent_stage(state, stage)
            if step is None:
                time.sleep(wait_s)
                continue
            files = weights + ([o for o in opts if (state / o).exists()] if moments else [])
            meta_text = (state / rec).read_text()
            sizes = {f: _convert(state / f, tmp_dir / f, _dtype_of(f, live, ema), step) for f in files}
            if any(v is None for v in sizes.values()):
                time.sleep(wait_s)  # a new checkpoint landed mid-copy: copy again
                continue
            (tmp_dir / rec).write_text(meta_text)
            record["stages"][stage] = {"step": step, "files": sizes}
            record["bytes"] += sum(sizes.values())
            break
        else:
            shutil.rmtree(tmp_dir)
            raise IdseditError(f"could not get a consistent {stage} checkpoint from {state} in {tries} tries; "
                               "run the snapshot again (or stop the trainer with a STOP file first)")
    for f in EXTRA_FILES:
        if (state / f).exists():
            text = (state / f).read_text(errors="replace")
            (tmp_dir / f).write_text(_log_lines(text) if f.endswith(".log") else text)
    (tmp_dir / "SNAPSHOT.json").write_text(json.dumps(record, indent=2))
    old = state / "snapshot.old"
    if snap.exists():
        os.replace(snap, old)
    os.replace(tmp_dir, snap)
    if old.exists():
        shutil.rmtree(old)
    log(f"snapshot of {state}: " + ", ".join(f"{s} step {v['step']}" for s, v in record["stages"].items())
        + f"; {record['bytes'] / 2**20:.1f} MiB in {snap}")
    return record


def restore(state: str | Path, log=print) -> dict:
    """Copy ``<state>/snapshot/`` back into ``<state>`` for every stage whose snapshot step is newer than the live
    checkpoint (or that has none). Weights become fp32; moments only if the snapshot has them (else the live
    optimizer files are removed, so the trainer starts fresh moments). Returns {stage: step restored}."""
    import torch
    from safetensors.torch import load_file

    from .train import save_tensors

    state = Path(state)
    snap = state / "snapshot"
    info = _read_json(snap / "SNAPSHOT.json")
    if info is None:
        return {}
    done = {}
    for stage, entry in info["stages"].items():
        rec, weights, opts = STAGE_FILES[stage]
        live = _read_json(state / rec)
        live_ok = consistent_stage(state, stage) is not None
        if live is not None and live_ok and live["step"] >= entry["step"]:
            continue
        for f in entry["files"]:
            t = load_file(str(snap / f))
            if not f.endswith("_opt.safetensors"):
                t = {k: v.float() if v.is_floating_point() else v for k, v in t.items()}
            save_tensors(state / f, t, entry["step"])
        for o in opts:
            if o not in entry["files"] and (state / o).exists():
                os.remove(state / o)  # stale moments of another step must not be paired with these weights
        shutil.copyfile(snap / rec, state / rec)
        done[stage] = entry["step"]
    if done and (snap / "heldout.csv").exists():
        shutil.copyfile(snap / "heldout.csv", state / "heldout.csv")
    if done and (snap / "train.log").exists() and not (state / "train.log").exists():
        shutil.copyfile(snap / "train.log", state / "train.log")
    if done:
        log(f"restored {state} from its snapshot: " + ", ".join(f"{s} step {v}" for s, v in done.items()))
    del torch
    return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m idsedit.mini.snapshot", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make", help="write <state>/snapshot from the newest complete checkpoint")
    m.add_argument("state", type=Path)
    m.add_argument("--live", default="fp16", choices=list(DTYPES), help="dtype of the live UNet/text weights")
    m.add_argument("--ema", default="fp16", choices=list(DTYPES), help="dtype of the EMA weights")
    m.add_argument("--moments", action="store_true", help="also copy the AdamW moments (bf16)")
    r = sub.add_parser("restore", help="copy a newer snapshot back into the live state")
    r.add_argument("state", type=Path)
    a = p.parse_args(argv)
    try:
        if a.cmd == "make":
            make(a.state, a.live, a.ema, a.moments)
        else:
            restore(a.state)
    except IdseditError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
