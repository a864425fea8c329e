"""Run every (case, run) edit once, score it, and append its row to ``rows.jsonl`` (crash-safe, resumable).

Pairing. Each case has a seed; every run edits the case with a :class:`PairedSampler` seeded by it, whose step
stream gives the loop's t and eps draws and whose separate method stream gives everything else (PDS's second
noise, CDS's patch permutations). So DDS, CDS, PDS and IDS see exactly the same t and noise sequence on a case,
even though CDS and PDS draw more numbers per step (``tests/test_evaluate.py`` checks this on the tiny model).
Runs with other timestep settings (``pds@authors``) draw t on their own grid.

Cost. UNet forward-equivalents per edit:

    FE = samples + 2 * backward_samples

``samples`` is the number of latents pushed through the UNet (one CFG call on source and target = 4) and
``backward_samples`` the number pushed back through it by autograd (exact FPR: 2 per iteration, CDS: 1 per step);
a backward pass costs about two forwards. They are counted by a forward pre-hook on ``prior.unet`` (so the
counts hold whatever calls the prior makes). Exact IDS at the paper's settings: 200 x (10 + 2 x 6) = 4,400.

Memory. Peak per edit: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the process's peak RSS (VmHWM) after
resetting it before the edit (Linux ``/proc/self/clear_refs``; elsewhere the process's peak so far).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import IdseditError
from ..metrics import capped_psnr, latent_psnr, psnr
from ..rng import PairedSampler, Sampler  # noqa: F401  (PairedSampler re-exported)
from .cases import ShapesEditCase, render_image

ROWS_FILE = "rows.jsonl"
RUN_FILE = "run.json"
INVERT_SEED_OFFSET = 7919  # the backward edit of A -> B -> A draws from the case seed + this


# --------------------------------------------------------------------------------------------------- sampling
# --------------------------------------------------------------------------------------------------- cost
@dataclass
class UNetCost:
    """UNet work counted by :func:`count_unet`."""

    forward: int = 0            # UNet calls
    samples: int = 0            # latents pushed through
    backward: int = 0           # backward passes through the UNet
    backward_samples: int = 0   # latents pushed back through

    @property
    def forward_equivalents(self) -> int:
        """samples + 2 * backward_samples (a backward costs about two forwards)."""
        return self.samples + 2 * self.backward_samples

    def record(self) -> dict:
        return {"forward": self.forward, "samples": self.samples, "backward": self.backward,
                "backward_samples": self.backward_samples, "forward_equivalents": self.forward_equivalents}


@contextmanager
def count_unet(unet: torch.nn.Module):
    """Count the UNet calls made inside the block (forward pre-hook; gradients reaching the UNet's input)."""
    cost = UNetCost()

    def on_backward(grad):
        cost.backward += 1
        cost.backward_samples += int(grad.shape[0])

    def pre_hook(_module, args, kwargs):
        x = args[0] if args else kwargs.get("sample")
        cost.forward += 1
        cost.samples += int(x.shape[0])
        if not (torch.is_grad_enabled() and x.requires_grad):
            return None
        x = x.view_as(x)
        x.register_hook(on_backward)
        if args:
            return (x,) + tuple(args[1:]), kwargs
        return args, {**kwargs, "sample": x}

    handle = unet.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        yield cost
    finally:
        handle.remove()


# --------------------------------------------------------------------------------------------------- memory
def _vm_hwm_mib() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


@contextmanager
def peak_memory(device: torch.device):
    """Yield a dict that holds, after the block, ``peak_mem_mib`` and ``mem_kind`` (see the module docstring)."""
    out: dict = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        yield out
        out.update(peak_mem_mib=round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
                   mem_kind="cuda_max_allocated")
        return
    reset = False
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        pass
    yield out
    hwm = _vm_hwm_mib()
    if hwm is None:
        import resource

        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    out.update(peak_mem_mib=round(hwm, 1), mem_kind="rss_peak" if reset else "rss_peak_process")


# --------------------------------------------------------------------------------------------------- rows file
def run_fingerprint(run_record: dict, case_record: dict, model: str, invert: bool, judge: str | None = None) -> str:
    """A short hash of everything that determines an edit's result (settings, case, model, protocol, and the
    evaluator's weights when they are not the bundled ones)."""
    key = {"run": run_record, "case": case_record, "model": model, "invert": invert}
    if judge is not None:
        key["judge"] = judge
    blob = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def model_identity(prior) -> str:
    """What a row's fingerprint names the model by: for a local folder its weights' content (a SHA-1 over every
    weight file's relative name, size and bytes; files over 64 MiB by their first and last 8 MiB), so that a
    retrained model in the same folder (e.g. a new bundled prior) never resumes the old one's rows, and the same
    weights resume from any path; otherwise (a hub id) the name itself."""
    cached = getattr(prior, "_idsedit_identity", None)
    if cached:
        return cached
    name = str(getattr(prior, "name", "") or "")
    folder = Path(name) if name else None
    if folder is None or not folder.is_dir():
        return name
    h = hashlib.sha1()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin", ".pt", ".ckpt"))
    for path in files:
        size = path.stat().st_size
        h.update(f"{path.relative_to(folder).as_posix()}:{size}".encode())
        with open(path, "rb") as f:
            if size <= 64 * 2**20:
                h.update(f.read())
            else:
                h.update(f.read(8 * 2**20))
                f.seek(size - 8 * 2**20)
                h.update(f.read())
    identity = f"weights:{h.hexdigest()[:16]}"
    try:
        prior._idsedit_identity = identity
    except AttributeError:
        pass
    return identity


def read_rows(path: Path, repair: bool = True) -> list[dict]:
    """The complete rows of a rows.jsonl file. Every row is written with its newline in one write, so a line
    without one is a write cut short by a crash: it is dropped and (``repair``) cut off the file so that appending
    continues cleanly. A bad complete line is an IdseditError."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    rows, pos = [], 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl == -1:
            break
        line = data[pos:nl]
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                lineno = data.count(b"\n", 0, pos) + 1
                raise IdseditError(f"{path}: line {lineno} is not valid JSON; move the file away to start over") from None
        pos = nl + 1
    if pos < len(data) and repair:
        with open(path, "r+b") as f:
            f.truncate(pos)
    return rows


def append_row(path: Path, row: dict) -> None:
    """Append one JSON line and fsync: a row is either wholly in the file or (after a crash) a torn last line
    that :func:`read_rows` drops."""
    line = json.dumps(row, allow_nan=False, default=_json_default) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def _json_default(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def _finite(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


# --------------------------------------------------------------------------------------------------- one edit
def object_masks(case: ShapesEditCase, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(source coverage > 0, outside): the main object's pixels in the source render, and the pixels outside the
    object in the source and in the ground truth, dilated by one pixel (the region
    :func:`idsedit.mini.evaluator.score_edit` scores as 'outside the object')."""
    from ..shapes import render

    src = render(case.source_params, size).coverage > 0
    m = src | (render(case.target_params, size).coverage > 0)
    grown = m.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            grown |= np.roll(np.roll(m, dy, 0), dx, 1)
    return src, ~grown


@dataclass
class CaseContext:
    """What every run of a case shares: the source render, its latent, prompts' embeddings, the mask."""

    case: ShapesEditCase
    source: object          # PIL image
    source_arr: np.ndarray  # (H, W, 3) float in [0, 1]
    z_src: torch.Tensor
    cond_src: object
    cond_trg: object
    source_mask: np.ndarray  # the main object's pixels in the source render
    outside: np.ndarray
    recon: np.ndarray        # decode(encode(source)), 8-bit quantised
    vae_psnr_outside: float  # decode(encode(source)) vs source outside the object: the VAE's ceiling

    @classmethod
    def build(cls, prior, case: ShapesEditCase, negative_prompt: str = "") -> "CaseContext":
        from ..edit2d import image_to_tensor

        size = prior.resolution
        src = render_image(case.source_params, size)
        arr = np.asarray(src, np.float32) / 255.0
        z = prior.encode(image_to_tensor(src))
        source_mask, outside = object_masks(case, size)
        rec = _decode_arr(prior, z)
        return cls(case, src, arr, z, prior.encode_text(case.source_prompt, negative_prompt),
                   prior.encode_text(case.target_prompt, negative_prompt), source_mask, outside, rec,
                   capped_psnr(psnr(rec, arr, mask=outside)))


def _decode_arr(prior, z) -> np.ndarray:
    """Latent -> (H, W, 3) float array in [0, 1], quantised to 8 bits as a saved image would be."""
    x = prior.decode(z)[0].permute(1, 2, 0).float().cpu().numpy()
    return np.round(x * 255.0) / 255.0


def _edit(prior, z_src, cond_src, cond_trg, config, sampler, callback):
    from ..edit2d import edit_latents

    return edit_latents(prior, z_src, cond_src, cond_trg, config, sampler=sampler, callback=callback)


def _score_row(prior, ctx: CaseContext, run, config, edited_arr, evaluator, *, seconds: float, unet: dict, fe: int,
               mem: dict, trace_steps, trace_psnr, fpr_t, fpr_norms, batch: int) -> tuple[dict, object]:
    """The row of one finished forward edit (without the A -> B -> A fields) and its PIL image."""
    from PIL import Image

    from ..mini.evaluator import score_edit

    case = ctx.case
    edited = Image.fromarray((edited_arr * 255).round().astype(np.uint8))
    score = score_edit(ctx.source_arr, edited_arr, source_params=case.source_params,
                       target_params=case.target_params, source_mask=ctx.source_mask, evaluator=evaluator)
    row = {
        "case": case.name, "family": case.attribute, "label": run.label, "variant": run.variant,
        "base": run.base or run.label, "ablation": list(run.ablation) if run.ablation else None, "seed": case.seed,
        "source_prompt": case.source_prompt, "target_prompt": case.target_prompt,
        "steps": 0 if run.variant == "none" else config.steps,
        "changed": score["changed"], "reached": score["reached"], "kept": score["kept"],
        "target_reached": score["target_reached"], "identity_kept": score["identity_kept"],
        "kept_fraction": score["kept_fraction"],
        "psnr_target": capped_psnr(score["psnr_target"]), "ssim_target": _finite(score["ssim_target"]),
        "psnr_outside": capped_psnr(score["psnr_outside"]), "ssim_outside": _finite(score["ssim_outside"]),
        "vae_psnr_outside": ctx.vae_psnr_outside, "pred": score["pred"],
        "seconds": round(seconds, 4), "unet": unet, "fe": fe, **mem, "batch": batch,
        "trace": {"step": trace_steps, "psnr_outside": trace_psnr} if trace_steps else None,
        "fpr": {"t": fpr_t, "norms": fpr_norms} if fpr_t else None,
    }
    return row, edited


def _invert_fields(ctx: CaseContext, aba: np.ndarray, z_back: torch.Tensor, seconds: float) -> dict:
    return dict(invert_psnr=capped_psnr(psnr(aba, ctx.source_arr)),
                invert_psnr_outside=capped_psnr(psnr(aba, ctx.source_arr, mask=ctx.outside)),
                invert_latent_psnr=latent_psnr(ctx.z_src.cpu().numpy(), z_back.cpu().numpy()),
                invert_seconds=round(seconds, 4))


def run_edit(prior, ctx: CaseContext, run, evaluator, *, invert: bool = True, trace_every: int = 0) -> tuple[dict, object]:
    """Edit ``ctx.case`` with ``run``; returns (row, edited PIL image). See the module docstring for the fields."""
    import dataclasses

    case = ctx.case
    config = dataclasses.replace(run.config, seed=case.seed)
    trace_steps, trace_psnr, fpr_t, fpr_norms = [], [], [], []

    def on_step(i, z, draw, out):
        norms = out.info.get("fpr_norms")
        if norms:
            fpr_t.append(int(draw.t.flatten()[0]))
            fpr_norms.append([round(float(n), 5) for n in norms])
        if trace_every and ((i + 1) % trace_every == 0 or i + 1 == config.steps):
            trace_steps.append(i + 1)
            trace_psnr.append(capped_psnr(psnr(_decode_arr(prior, z.detach()), ctx.source_arr, mask=ctx.outside)))

    sampler = PairedSampler(case.seed, run.t_grid, device="cpu")
    with peak_memory(prior.device) as mem, count_unet(prior.unet) as cost:
        t0 = time.perf_counter()
        if run.variant == "none":            # the reference: the VAE round trip, no distillation
            z, edited_arr = ctx.z_src, ctx.recon
        else:
            z = _edit(prior, ctx.z_src, ctx.cond_src, ctx.cond_trg, config, sampler, on_step)
            edited_arr = _decode_arr(prior, z)
        seconds = time.perf_counter() - t0
    row, edited = _score_row(prior, ctx, run, config, edited_arr, evaluator, seconds=seconds, unet=cost.record(),
                             fe=cost.forward_equivalents, mem=mem, trace_steps=trace_steps, trace_psnr=trace_psnr,
                             fpr_t=fpr_t, fpr_norms=fpr_norms, batch=1)
    if invert and run.variant == "none":
        row.update(_invert_fields(ctx, ctx.recon, ctx.z_src, 0.0))
    elif invert:
        back = PairedSampler(case.seed + INVERT_SEED_OFFSET, run.t_grid, device="cpu")
        t1 = time.perf_counter()
        z_back = _edit(prior, z, ctx.cond_trg, ctx.cond_src, config, back, None)
        aba = _decode_arr(prior, z_back)
        row.update(_invert_fields(ctx, aba, z_back, time.perf_counter() - t1))
    return row, edited


def run_edits(prior, ctxs: list[CaseContext], run, evaluator, *, invert: bool = True,
              trace_every: int = 0) -> list[tuple[dict, object]]:
    """Edit K cases with ``run`` in ONE batched edit loop when the run allows it (:func:`batching.batchable`),
    else one by one; returns [(row, image)] in the order of ``ctxs``.

    Each case's row is the one :func:`run_edit` gives (to float tolerance; see :mod:`idsedit.evaluate.batching`):
    its own t and noise, its own step (:func:`batching.batch_config`: ``loss_scale`` and ``cut_weight`` x K undo the loss's mean
    over views), its own FPR
    residuals, and the UNet work it would do alone (calls as alone, samples and backward samples / K, so ``fe``
    is unchanged). ``seconds`` and ``invert_seconds`` are the batch's wall time / K (amortised); ``batch`` = K.
    """
    from .batching import BatchPrior, BatchSampler, batch_config, batchable, stack_conds

    k = len(ctxs)
    if k == 1 or not batchable(run, prior):
        return [run_edit(prior, c, run, evaluator, invert=invert, trace_every=trace_every) for c in ctxs]
    config = batch_config(run.config, k)
    z_src = torch.cat([c.z_src for c in ctxs])
    cond_src, cond_trg = stack_conds([c.cond_src for c in ctxs]), stack_conds([c.cond_trg for c in ctxs])
    traces = [([], []) for _ in ctxs]
    fprs = [([], []) for _ in ctxs]
    bprior = BatchPrior(prior, z_src, record=config.method == "ids", cond_src=cond_src)

    def on_step(i, z, draw, out):
        per_case = bprior.take_residuals()
        if per_case:
            for j in range(k):
                fprs[j][0].append(int(draw.t.flatten()[j]))
                fprs[j][1].append([round(float(n), 5) for n in per_case[j]])
        if trace_every and ((i + 1) % trace_every == 0 or i + 1 == config.steps):
            for j, c in enumerate(ctxs):
                traces[j][0].append(i + 1)
                traces[j][1].append(capped_psnr(psnr(_decode_arr(prior, z[j:j + 1].detach()), c.source_arr,
                                                     mask=c.outside)))

    sampler = BatchSampler([PairedSampler(c.case.seed, run.t_grid, device="cpu") for c in ctxs])
    with peak_memory(prior.device) as mem, count_unet(prior.unet) as cost:
        t0 = time.perf_counter()
        z = _edit(bprior, z_src, cond_src, cond_trg, config, sampler, on_step)
        edited = [_decode_arr(prior, z[j:j + 1]) for j in range(k)]
        seconds = (time.perf_counter() - t0) / k
    per_case = UNetCost(cost.forward, cost.samples // k, cost.backward, cost.backward_samples // k)
    out = [_score_row(prior, c, run, config, edited[j], evaluator, seconds=seconds, unet=per_case.record(),
                      fe=per_case.forward_equivalents, mem=mem, trace_steps=traces[j][0], trace_psnr=traces[j][1],
                      fpr_t=fprs[j][0], fpr_norms=fprs[j][1], batch=k) for j, c in enumerate(ctxs)]
    if invert:
        bprior = BatchPrior(prior, z, record=False)
        back = BatchSampler([PairedSampler(c.case.seed + INVERT_SEED_OFFSET, run.t_grid, device="cpu") for c in ctxs])
        t1 = time.perf_counter()
        z_back = _edit(bprior, z, cond_trg, cond_src, config, back, None)
        abas = [_decode_arr(prior, z_back[j:j + 1]) for j in range(k)]
        secs = (time.perf_counter() - t1) / k
        for j, c in enumerate(ctxs):
            out[j][0].update(_invert_fields(c, abas[j], z_back[j:j + 1], secs))
    return out


# --------------------------------------------------------------------------------------------------- many edits
def shard_rows_name(shard: tuple[int, int]) -> str:
    """The rows file of shard ``(i, k)`` (0-based i of k): ``rows.shard1of2.jsonl`` for (0, 2)."""
    return f"rows.shard{shard[0] + 1}of{shard[1]}.jsonl"


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"I/K"`` (1-based, e.g. ``1/2``) -> (I - 1, K); None stays None."""
    if text is None:
        return None
    try:
        i, k = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise IdseditError(f"--shard must look like 1/2 (this process / processes), got {text!r}") from None
    if not (k >= 1 and 1 <= i <= k):
        raise IdseditError(f"--shard {text}: need 1 <= I <= K")
    return i - 1, k


def _all_rows(out: Path, own: Path) -> list[dict]:
    """Rows of ``rows.jsonl`` and every shard's rows file. ``own`` (the file this process appends to) and
    ``rows.jsonl`` (no process appends to it while shards run) are repaired (a torn last line cut off); another
    shard's torn line may be a write in progress, so it is only skipped."""
    rows = []
    for path in [out / ROWS_FILE] + sorted(out.glob("rows.shard*of*.jsonl")):
        rows += read_rows(path, repair=path in (own, out / ROWS_FILE))
    return rows


def merge_shard_rows(out: Path, keys: list[tuple[str, str]]) -> int:
    """Move the shard files' rows into ``rows.jsonl`` (the plan's ``keys`` first, in plan order; then any other
    run's rows, in file order, so a narrower run over the folder loses none; rows already there stay) and delete
    the shard files. Returns the number of rows moved. Called by an unsharded run once every shard is done."""
    rows_path = out / ROWS_FILE
    shard_files = sorted(out.glob("rows.shard*of*.jsonl"))
    if not shard_files:
        return 0
    have = {(r["case"], r["label"]) for r in read_rows(rows_path)}
    found = {}
    for path in shard_files:
        for r in read_rows(path, repair=False):
            found.setdefault((r["case"], r["label"]), r)
    moved = 0
    for key in list(dict.fromkeys(keys)) + [k for k in found if k not in set(keys)]:
        if key in found and key not in have:
            append_row(rows_path, found[key])
            have.add(key)
            moved += 1
    for path in shard_files:
        path.unlink()
    return moved


def run_evaluation(prior, cases: list[ShapesEditCase], runs: list, out: Path, *, evaluator=None, invert: bool = True,
                   trace_every: int = 0, progress: bool = True, on_row: Callable | None = None,
                   log: Callable[[str], None] | None = None, batch: int = 1, judge: str | None = None,
                   shard: tuple[int, int] | None = None) -> list[dict]:
    """Edit every case with every run, appending each row to ``out/rows.jsonl`` as it finishes; rows already
    there with the same fingerprint are kept and their edits skipped (resume). Returns all rows in case x run
    order (with ``shard``: this shard's rows). The edited images go to ``out/images/<case>.<label>.png``
    (written before the row: the row commits).

    A run edits only its ``cases`` (a set of case names; None = every case) and makes the A -> B -> A edit when
    ``invert`` and its own ``invert`` are both true (the ablation runs of the standard preset use both).

    ``batch`` = K > 1: the cases are taken in fixed blocks of K consecutive cases; each block is edited run by run,
    a batchable run (:func:`idsedit.evaluate.batching.batchable`) in one batched edit of the whole block
    (:func:`run_edits`). A block a resumed run has partly done is edited whole again (only the missing rows are
    stored), so a batch always holds the same cases and a resumed run gives the same numbers bit for bit.
    ``shard`` = (i, k): this process edits only the blocks b with b % k == i and appends to its own rows file
    (:func:`shard_rows_name`); k processes with the same arguments and ``out`` split the work, and an unsharded
    run afterwards finds everything done, merges the shard files into ``rows.jsonl`` and returns every row.
    ``judge``: the path of a non-bundled ``evaluator``'s weights, part of every row's fingerprint (rows judged by
    another evaluator are not resumed).
    """
    from ..mini.evaluator import load_evaluator
    from .batching import batchable

    if batch < 1:
        raise IdseditError(f"--batch must be >= 1, got {batch}")
    evaluator = evaluator or load_evaluator()
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows_path = out / (shard_rows_name(shard) if shard else ROWS_FILE)
    done = {(r["case"], r["label"]): r for r in _all_rows(out, rows_path)}
    neg = runs[0].config.distill.negative_prompt if runs else ""
    blocks = [cases[b0:b0 + batch] for b0 in range(0, len(cases), batch)]
    mine = {c.name for b, block in enumerate(blocks) if shard is None or b % shard[1] == shard[0] for c in block}
    plan, fps = [], {}
    for case in cases:
        for run in runs:
            if not _applies(run, case):
                continue
            fp = run_fingerprint(run.record() | {"config": _seedless(run)}, case.record(), model_identity(prior),
                                 _inverts(run, invert), judge)
            prev = done.get((case.name, run.label))
            if prev is not None and prev.get("fingerprint") != fp:
                raise IdseditError(f"{rows_path} holds a result for {case.name} / {run.label} made with other settings "
                                   "or another model: use another --out, or --overwrite to start over")
            plan.append((case, run, fp, prev))
            fps[(case.name, run.label)] = fp
    todo_plan = [p for p in plan if p[0].name in mine]
    skipped = sum(1 for p in todo_plan if p[3] is not None)
    if skipped and log is not None:
        log(f"resuming: {skipped} of {len(todo_plan)} edits are already in {out}, skipping them")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo_plan), initial=skipped, unit="edit", desc="eval", dynamic_ncols=True)
    new_rows: list[dict] = []
    try:
        for b, block in enumerate(blocks):
            if shard is not None and b % shard[1] != shard[0]:
                continue
            if all((c.name, r.label) in done for c in block for r in runs if _applies(r, c)):
                continue
            ctxs = {c.name: CaseContext.build(prior, c, neg) for c in block}
            for run in runs:
                members = [c for c in block if _applies(run, c)]
                todo = [c for c in members if (c.name, run.label) not in done]
                if not todo:
                    continue
                edit_cases = members if len(members) > 1 and batchable(run, prior) else todo
                if bar is not None:
                    more = f" +{len(edit_cases) - 1}" if len(edit_cases) > 1 else ""
                    bar.set_postfix_str(f"{edit_cases[0].name}{more} {run.label}", refresh=True)
                results = run_edits(prior, [ctxs[c.name] for c in edit_cases], run, evaluator,
                                    invert=_inverts(run, invert), trace_every=trace_every)
                for c, (row, img) in zip(edit_cases, results):
                    if (c.name, run.label) in done:
                        continue
                    store_row(out, rows_path, new_rows, row, img, f"images/{_safe(c.name)}.{_safe(run.label)}.png",
                              fps[(c.name, run.label)], f"{c.name}|{run.label}", bar=bar, on_row=on_row)
                    done[(c.name, run.label)] = row
    finally:
        if bar is not None:
            bar.close()
    keys = [(case.name, run.label) for case, run, _, _ in plan]
    if shard is not None:
        return [done[(case.name, run.label)] for case, run, _, _ in todo_plan]
    if shard is None:
        missing = [k for k in keys if k not in done]
        if missing:  # only possible if a shard file vanished mid-run
            raise IdseditError(f"{len(missing)} edits are missing from {out} after the run: run it again")
        moved = merge_shard_rows(out, keys)
        if moved and log is not None:
            log(f"merged {moved} rows of the shard files into {out / ROWS_FILE}")
    return [done[k] for k in keys if k in done]


def _applies(run, case) -> bool:
    """Whether ``run`` edits ``case`` (runs with a ``cases`` subset, e.g. ablations on a few cases per family)."""
    subset = getattr(run, "cases", None)
    return subset is None or case.name in subset


def _inverts(run, invert: bool) -> bool:
    """Whether ``run``'s edits get the A -> B -> A edit: the evaluation's ``invert`` and the run's own flag."""
    return bool(invert and getattr(run, "invert", True))


def _seedless(run) -> dict:
    import dataclasses

    d = dataclasses.asdict(run.config)
    d.pop("seed", None)
    return d


def store_row(out: Path, rows_path: Path, rows: list, row: dict, image, image_name: str, fingerprint: str, key: str,
              *, bar=None, on_row: Callable | None = None) -> None:
    """One finished edit: save its image under ``out``, stamp the row with it (image, fingerprint, key), append the
    row crash-safely to ``rows_path`` and to ``rows``, advance the progress bar and call ``on_row``."""
    from ..images import save_image_atomic

    save_image_atomic(image, out / image_name)
    row.update(image=image_name, fingerprint=fingerprint, key=key)
    append_row(rows_path, row)
    rows.append(row)
    if bar is not None:
        bar.update(1)
    if on_row is not None:
        on_row(row)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_+@=." else "_" for c in name)
