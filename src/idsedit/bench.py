"""`idsedit bench`: seconds per step, UNet calls and peak memory of every method, next to the official figures.

For each (shape, method, path) a FRESH subprocess builds a random-weight model (:mod:`idsedit.models_from_config`),
encodes a 512x512 image to a 64x64 latent, and runs the product's own edit loop (:func:`idsedit.edit2d.edit_latents`)
for ``warmup + steps`` steps, timing each step between the loop's callbacks. Its peak RSS (CPU) or
``torch.cuda.max_memory_allocated`` (GPU) is therefore the memory of one method alone, as in the official figures
(``OFFICIAL_CPU``, from bench/reference-configs.json).

Paths (``--variants`` / ``--baseline``):

- ``fast``     : idsedit's defaults: SDPA attention, batched CFG, cached text embeddings, text encoder released once
                 the prompts are encoded.
- ``baseline`` : the straightforward implementation, as the official code runs: explicit attention
                 (diffusers ``AttnProcessor``: baddbmm + softmax) and the text encoder kept in memory.
- ``fast-keep-te`` (diagnostic: SDPA, text encoder kept) and ``fast-bf16-bwd`` (prototype of a proposed core change:
  exact fp32 attention forward, bf16 flash-attention backward).

UNet backward passes are counted by a hook on the UNet's input (:func:`count_unet_backward`), forwards and samples
by ``prior.calls``. Timings live here and in docs/benchmarks.md, never in tests; ``os.getloadavg()`` is recorded
next to every timing, and on a shared machine ``--threads 1`` (CPU seconds) or ``--omp-wait-policy PASSIVE`` give
numbers that other processes do not distort (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SRC_PROMPT = "a red square, a green triangle and a blue circle"
TRG_PROMPT = "a red square, a green triangle and a blue circle made of neon lights"
EDIT_STEPS = 200  # the official edit length, for the projected seconds per edit

# Method names are the shared table's (idsedit.variants): "ids-jf" means the same here as in `idsedit edit`.
DEFAULT_METHODS = ("dds", "cds", "pds", "sds", "ids", "ids-jf", "ids-adaptive", "ids+cut")
DEFAULT_SHAPES = ("tiny", "medium")

# The official code has exact FPR only: Jacobian-free and adaptive IDS are compared with its exact IDS.
OFFICIAL_KEY = {"dds": "dds", "cds": "cds", "ids": "ids", "ids-jf": "ids", "ids-adaptive": "ids", "ids+cut": "ids_cut"}

# bench/reference-configs.json, "official_implementation_on_2_core_cpu" (a test keeps the two equal)
OFFICIAL_CPU = {
    "tiny": {"dds": {"s_per_step": 0.83, "peak_rss_mib": 715}, "cds": {"s_per_step": 1.97, "peak_rss_mib": 1063},
             "ids": {"s_per_step": 3.81, "peak_rss_mib": 1057}, "ids_cut": {"s_per_step": 4.65, "peak_rss_mib": 1136}},
    "medium": {"dds": {"s_per_step": 16.4, "peak_rss_mib": 5369}, "cds": {"s_per_step": 44.2, "peak_rss_mib": 9856},
               "ids": {"s_per_step": 87.4, "peak_rss_mib": 10188}},
}

# Targets on the medium shape (fast path vs OFFICIAL_CPU): minimum speed-up, maximum memory ratio
TARGETS = {
    ("medium", "ids"): {"speedup": 2.5, "mem_ratio": 1 / 3},
    ("medium", "dds"): {"speedup": 3.0},
    ("medium", "cds"): {"speedup": 3.0},
    ("medium", "ids-jf"): {"speedup": 6.0},
}


@dataclass(frozen=True)
class Variant:
    """One implementation path of the same methods."""

    name: str                       # fast | baseline
    attention: str                  # sdpa (torch scaled_dot_product_attention) | explicit (baddbmm + softmax)
    release_text_encoders: bool     # free the text encoder once the two prompts are encoded


VARIANTS = {
    "fast": Variant("fast", "sdpa", True),
    "baseline": Variant("baseline", "explicit", False),
    "fast-keep-te": Variant("fast-keep-te", "sdpa", False),   # diagnostic: what releasing the text encoder saves
    # prototype of a proposed core change (docs/benchmarks.md): exact fp32 forward, attention backward in bf16
    "fast-bf16-bwd": Variant("fast-bf16-bwd", "sdpa-bf16-backward", True),
}


@dataclass
class CaseSpec:
    """One measurement: a method on a model shape along one path (what a worker subprocess runs)."""

    shape: str                      # tiny | medium | sd15 (models_from_config.SHAPES)
    method: str                     # a method variant name (idsedit.variants.VARIANTS)
    variant: str = "fast"           # a key of VARIANTS
    steps: int = 3                  # measured steps (median reported)
    warmup: int = 1                 # unmeasured steps first
    threads: int = 2                # torch.set_num_threads
    device: str = "cpu"             # cpu | cuda | cuda:N
    dtype: str = "fp32"             # UNet/text-encoder dtype (the VAE runs in fp32)
    image_size: int = 512           # square input image; the latent is image_size / 8
    seed: int = 0                   # model seed (s, s+1, s+2) and edit seed
    tokenizer: str | None = None    # CLIP tokenizer folder (default: the parity fixture's)
    omp_wait_policy: str | None = None  # OMP_WAIT_POLICY of the worker (PASSIVE | ACTIVE); None: inherited


# ------------------------------------------------------------------------------------------------- helpers
def canonical_method(name: str) -> str:
    """A method variant name from a user's spelling (``ids-cut`` -> ``ids+cut``), via :mod:`idsedit.variants`."""
    from .errors import IdseditError
    from .variants import VARIANTS as METHOD_TABLE, canonical_variant

    try:
        return canonical_variant(name)
    except IdseditError:
        raise IdseditError(f"unknown bench method {name!r}: use some of {', '.join(METHOD_TABLE)}") from None


def load_average() -> list[float]:
    """os.getloadavg() rounded (1, 5, 15 minutes); [] where unavailable."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def make_image(size: int = 512, seed: int = 0):
    """A deterministic RGB test picture: a colour gradient with a red square, a green triangle and a blue disc."""
    from PIL import Image

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    img = np.stack([0.6 * xx + 0.2, 0.5 * yy + 0.3, 0.7 - 0.4 * xx * yy], axis=-1)
    s = size
    img[s // 8: 3 * s // 8, s // 8: 3 * s // 8] = (0.9, 0.1, 0.1)                                  # red square
    tri = (yy > 0.55) & (yy < 0.9) & (np.abs(xx - 0.3) < (yy - 0.55) * 0.6)
    img[tri] = (0.1, 0.8, 0.2)                                                                     # green triangle
    img[(xx - 0.7) ** 2 + (yy - 0.65) ** 2 < 0.03] = (0.15, 0.25, 0.9)                             # blue disc
    img += np.random.default_rng(seed).normal(0, 0.02, img.shape).astype(np.float32)
    return Image.fromarray((img.clip(0, 1) * 255).round().astype(np.uint8), "RGB")


def set_attention(unet, kind: str) -> None:
    """Attention processors: ``sdpa`` (AttnProcessor2_0), ``explicit`` (AttnProcessor, the official code's) or
    ``sdpa-bf16-backward`` (:class:`Bf16BackwardSDPAProcessor`, a prototype)."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    make = {"sdpa": AttnProcessor2_0, "explicit": AttnProcessor, "sdpa-bf16-backward": Bf16BackwardSDPAProcessor}
    unet.set_attn_processor(make[kind]())


class Bf16BackwardSDPAProcessor:
    """Prototype attention processor (SD-style attention, CPU): fp32 SDPA forward, bf16 flash backward when a
    gradient is needed (the exact-FPR UNet backward); plain SDPA otherwise."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        import torch
        import torch.nn.functional as F

        if hidden_states.ndim != 3 or attn.group_norm is not None or attn.spatial_norm is not None \
                or attn.residual_connection or attention_mask is not None:
            raise NotImplementedError("Bf16BackwardSDPAProcessor handles plain SD transformer attention only")
        b = hidden_states.shape[0]
        ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = attn.to_q(hidden_states), attn.to_k(ctx), attn.to_v(ctx)
        h = attn.heads
        q, k, v = (x.view(b, -1, h, x.shape[-1] // h).transpose(1, 2) for x in (q, k, v))   # (B, h, N, d)
        if q.device.type == "cpu" and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
            from .attention import Bf16BackwardSDPA  # the product's kernel (idsedit.attention)

            o = Bf16BackwardSDPA.apply(q, k, v)
        else:
            o = F.scaled_dot_product_attention(q, k, v)
        o = o.transpose(1, 2).reshape(b, -1, o.shape[1] * o.shape[-1])                           # (B, N, C)
        return attn.to_out[1](attn.to_out[0](o)) / attn.rescale_output_factor


@contextmanager
def count_unet_backward(unet, counter: list[int]):
    """Count backward passes that reach the UNet's input ``sample`` (counter[0] += 1 per pass).

    Prior.calls counts a backward only when the gradient flows through the UNet's OUTPUT; CDS's PatchNCE loss
    differentiates intermediate features (the up blocks' attn1), so a hook on the input sees every backward.
    """

    def on_grad(_grad):
        counter[0] += 1

    def pre_hook(_module, args, kwargs):
        sample = args[0] if args else kwargs.get("sample")
        if sample is not None and sample.requires_grad:
            sample.register_hook(on_grad)

    handle = unet.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        yield counter
    finally:
        handle.remove()


def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (VmHWM, else ru_maxrss), MiB."""
    kib = _proc_status_kib("VmHWM")
    if kib is None:
        ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kib = ru / 1024 if sys.platform == "darwin" else ru
    return round(kib / 1024, 1)


def current_rss_mib() -> float:
    import psutil

    return round(psutil.Process().memory_info().rss / 2**20, 1)


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux: write 5 to /proc/self/clear_refs); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------- measuring
def time_edit(prior, method: str, z_src, cond_src, cond_trg, *, steps: int, warmup: int, seed: int = 0) -> dict:
    """Run ``warmup + steps`` steps of the product edit loop; per-step wall/CPU seconds and UNet calls."""
    from .edit2d import edit_latents
    from .variants import variant_config

    config = variant_config(method, steps=warmup + steps, seed=seed)
    marks, backward = [], [0]
    fpr_iters = []

    def on_step(i, z, draw, out):
        _sync(prior.device)
        marks.append((time.perf_counter(), time.process_time(), prior.calls.snapshot(), backward[0]))
        if "fpr_norms" in out.info:
            fpr_iters.append(len(out.info["fpr_norms"]))

    with count_unet_backward(prior.unet, backward):
        _sync(prior.device)
        marks.append((time.perf_counter(), time.process_time(), prior.calls.snapshot(), backward[0]))
        edit_latents(prior, z_src, cond_src, cond_trg, config, callback=on_step)
    measured = list(zip(marks[warmup:-1], marks[warmup + 1:]))
    wall = [b[0] - a[0] for a, b in measured]
    cpu = [b[1] - a[1] for a, b in measured]
    per_step = lambda k: sum(b[2][k] - a[2][k] for a, b in measured) / len(measured)
    return {
        "s_per_step": statistics.median(wall),
        "s_steps": [round(x, 4) for x in wall],
        "cpu_s_per_step": statistics.median(cpu),
        "warmup_s": [round(b[0] - a[0], 4) for a, b in zip(marks[:warmup], marks[1:warmup + 1])],
        "unet_forward_per_step": per_step("forward"),
        "unet_samples_per_step": per_step("samples"),
        "unet_backward_per_step": sum(b[3] - a[3] for a, b in measured) / len(measured),
        "prior_calls_backward_per_step": per_step("backward"),
        "fpr_iters_per_step": statistics.mean(fpr_iters[warmup:]) if fpr_iters[warmup:] else None,
    }


def run_case(spec: CaseSpec, prior=None) -> dict:
    """Measure one case in this process and return its row (memory fields are clean only in a fresh process).

    Runs with ``spec.threads`` torch threads (restored after): more threads than free cores makes every small op
    wait for a descheduled thread (OpenMP barriers), which can slow a step down a hundredfold on a busy machine.
    """
    import torch

    variant = VARIANTS[spec.variant]
    threads = torch.get_num_threads()
    torch.set_num_threads(spec.threads)
    try:
        return _run_case(spec, variant, prior)
    finally:
        torch.set_num_threads(threads)


def _run_case(spec: CaseSpec, variant: Variant, prior) -> dict:
    import torch

    from .edit2d import image_to_tensor
    from .models_from_config import build_prior, parameter_counts

    row = {"shape": spec.shape, "method": spec.method, "variant": spec.variant, "device": spec.device,
           "dtype": spec.dtype, "threads": spec.threads, "steps": spec.steps, "warmup": spec.warmup,
           "image_size": spec.image_size, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
           "load_before": load_average()}
    t0 = time.perf_counter()
    if prior is None:
        prior = build_prior(spec.shape, device=spec.device, dtype=spec.dtype, seed=spec.seed,
                            tokenizer=spec.tokenizer)
    set_attention(prior.unet, variant.attention)
    row["params_m"] = parameter_counts(prior)
    row["build_s"] = round(time.perf_counter() - t0, 2)
    t1 = time.perf_counter()
    z_src = prior.encode(image_to_tensor(make_image(spec.image_size, spec.seed)))
    _sync(prior.device)
    row["encode_s"] = round(time.perf_counter() - t1, 3)
    row["latent_shape"] = list(z_src.shape)
    cond_src, cond_trg = prior.encode_text(SRC_PROMPT), prior.encode_text(TRG_PROMPT)
    if variant.release_text_encoders:
        prior.release_text_encoders()
    row["text_encoder_released"] = variant.release_text_encoders
    gc.collect()
    row["setup_peak_rss_mib"] = peak_rss_mib()
    row["rss_before_loop_mib"] = current_rss_mib()
    reset_ok = reset_peak_rss()
    if prior.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(prior.device)
        row["cuda_allocated_before_loop_mib"] = round(torch.cuda.memory_allocated(prior.device) / 2**20, 1)
    row.update(time_edit(prior, spec.method, z_src, cond_src, cond_trg, steps=spec.steps, warmup=spec.warmup,
                         seed=spec.seed))
    row["loop_peak_rss_mib"] = peak_rss_mib() if reset_ok else None
    if prior.device.type == "cuda":
        row["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated(prior.device) / 2**20, 1)
        row["cuda_max_reserved_mib"] = round(torch.cuda.max_memory_reserved(prior.device) / 2**20, 1)
        row["gpu"] = torch.cuda.get_device_name(prior.device)
    t2 = time.perf_counter()
    prior.decode(z_src)
    _sync(prior.device)
    row["decode_s"] = round(time.perf_counter() - t2, 3)
    row["peak_rss_mib"] = max(row["setup_peak_rss_mib"], peak_rss_mib())   # setup, then loop + decode
    row["s_per_edit"] = EDIT_STEPS * row["s_per_step"] + row["encode_s"] + row["decode_s"]
    if spec.steps >= EDIT_STEPS:
        row["s_per_edit_measured"] = sum(row["s_steps"]) + row["encode_s"] + row["decode_s"]
    row["load_after"] = load_average()
    row["peak_mem_mib"] = row.get("cuda_max_allocated_mib", row["peak_rss_mib"])
    return row


def compare_official(row: dict) -> dict:
    """Add the official figures, the speed-up and the memory ratio to a row measured in the official setting
    (CPU, fp32, 512x512 input); other rows are returned unchanged."""
    ref = OFFICIAL_CPU.get(row["shape"], {}).get(OFFICIAL_KEY.get(row["method"], ""))
    official_setting = (row.get("device", "cpu"), row.get("dtype", "fp32"), row.get("image_size", 512)) == \
        ("cpu", "fp32", 512)
    if ref is None or not official_setting or row.get("error"):
        return row
    row["official_method"] = OFFICIAL_KEY[row["method"]]
    row["official_s_per_step"] = ref["s_per_step"]
    row["official_peak_rss_mib"] = ref["peak_rss_mib"]
    row["speedup"] = ref["s_per_step"] / row["s_per_step"]
    row["mem_ratio"] = row["peak_rss_mib"] / ref["peak_rss_mib"]
    if row.get("threads") == 1:
        # one thread's CPU seconds bound from above what two threads take on an idle machine
        row["speedup_bound"] = ref["s_per_step"] / row["cpu_s_per_step"]
    return row


def check_targets(rows: list[dict]) -> list[str]:
    """One line per target of TARGETS that has a fast-path row: met / missed with the numbers."""
    lines = []
    for (shape, method), goal in TARGETS.items():
        for row in rows:
            if (row["shape"], row["method"], row["variant"]) != (shape, method, "fast") or "speedup" not in row:
                continue
            speed, how = row["speedup"], "wall clock"
            if "speedup_bound" in row:
                speed, how = row["speedup_bound"], "lower bound from 1-thread CPU time"
            ok = speed >= goal["speedup"]
            text = (f"{shape} {method} ({row.get('threads')} thr): {speed:.2f}x faster, {how} "
                    f"(target >= {goal['speedup']:g}x)")
            if "mem_ratio" in goal:
                ok = ok and row["mem_ratio"] <= goal["mem_ratio"]
                text += f", memory {row['mem_ratio']:.2f} of official (target <= {goal['mem_ratio']:.2f})"
            lines.append(("MET     " if ok else "MISSED  ") + text + f" [load {row.get('load_before')}]")
    return lines


# ------------------------------------------------------------------------------------------------- subprocesses
def run_in_subprocess(spec: CaseSpec, timeout: float | None = None) -> dict:
    """Run one case in a fresh ``python -m idsedit.bench --worker`` process; its row, with the child's peak RSS."""
    env = dict(os.environ, OMP_NUM_THREADS=str(spec.threads), MKL_NUM_THREADS=str(spec.threads),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
               PYTHONWARNINGS="ignore")
    if spec.omp_wait_policy:  # read once, when the OpenMP runtime starts: must be set before the worker imports torch
        env["OMP_WAIT_POLICY"] = spec.omp_wait_policy
    with tempfile.TemporaryDirectory(prefix="idsedit-bench-") as tmp:
        out, err = Path(tmp) / "row.json", Path(tmp) / "stderr.txt"
        cmd = [sys.executable, "-m", "idsedit.bench", "--worker", json.dumps(dataclasses.asdict(spec)),
               "--worker-out", str(out)]
        t0 = time.perf_counter()
        with open(err, "w") as ferr:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=ferr, env=env)
            try:
                _, status, usage = _wait4(proc, timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                return {**_spec_row(spec), "error": f"timed out after {timeout:.0f} s"}
        wall = time.perf_counter() - t0
        code = os.waitstatus_to_exitcode(status)
        if code != 0 or not out.is_file():
            tail = err.read_text(errors="replace").strip().splitlines()[-3:]
            return {**_spec_row(spec), "error": f"worker exit {code}: " + " | ".join(tail)[-400:]}
        row = json.loads(out.read_text())
    kib = usage.ru_maxrss / 1024 if sys.platform == "darwin" else usage.ru_maxrss
    row["child_maxrss_mib"] = round(kib / 1024, 1)
    if "peak_rss_mib" in row:  # the kernel's mark at exit also covers the worker's last moments
        row["peak_rss_mib"] = max(row["peak_rss_mib"], row["child_maxrss_mib"])
        if row.get("device", "cpu") == "cpu":
            row["peak_mem_mib"] = row["peak_rss_mib"]
    row["process_wall_s"] = round(wall, 1)
    return row


def _wait4(proc: subprocess.Popen, timeout: float | None):
    """os.wait4 on the child (its own rusage, not the sum over children), with an optional timeout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG if deadline else 0)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return pid, status, usage
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(proc.args, timeout)
        time.sleep(0.2)


def _spec_row(spec: CaseSpec) -> dict:
    return {"shape": spec.shape, "method": spec.method, "variant": spec.variant, "device": spec.device,
            "dtype": spec.dtype, "threads": spec.threads, "steps": spec.steps, "warmup": spec.warmup,
            "load_before": load_average()}


def worker_main(spec_json: str, out_path: str) -> int:
    """Entry point of a worker subprocess: run one case, write its row as JSON."""
    import torch

    spec = CaseSpec(**json.loads(spec_json))
    torch.set_num_threads(spec.threads)
    from .prior import _quiet_transformers

    _quiet_transformers()
    try:
        row = run_case(spec)
    except Exception as e:  # noqa: BLE001 - the parent reports it as the row's error
        row = {**_spec_row(spec), "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"}
    Path(out_path).write_text(json.dumps(row))
    return 0


# ------------------------------------------------------------------------------------------------- table
def _fmt(x, nd=2, suffix=""):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}{suffix}"
    return f"{x}{suffix}"


TABLE_HEADER = ["shape", "method", "path", "threads", "s/step", "cpu s/step", "s/200-step edit", "UNet fwd / samples / bwd",
                "peak MiB", "official s/step", "speed-up", "speed-up bound", "official MiB", "mem ratio",
                "load (1 min)"]


def _threads(r: dict) -> str:
    """Threads, with "p" when the OpenMP wait policy was PASSIVE."""
    return f"{r.get('threads', '')}{'p' if r.get('omp_wait_policy') == 'PASSIVE' else ''}"


def table_rows(rows: list[dict]) -> list[list[str]]:
    out = []
    for r in rows:
        if r.get("error"):
            out.append([r["shape"], r["method"], r["variant"], str(r.get("threads", "")),
                        "error: " + r["error"][:80]] + [""] * 10)
            continue
        calls = (f"{r['unet_forward_per_step']:g} / {r['unet_samples_per_step']:g} / "
                 f"{r['unet_backward_per_step']:g}")
        nd = 3 if r["s_per_step"] < 1 else 2
        out.append([r["shape"], r["method"], r["variant"], _threads(r), _fmt(r["s_per_step"], nd), _fmt(r["cpu_s_per_step"], nd),
                    _fmt(r.get("s_per_edit_measured", r["s_per_edit"]), 0 if r["s_per_edit"] > 10 else 1), calls, _fmt(r["peak_mem_mib"], 0),
                    _fmt(r.get("official_s_per_step")), _fmt(r.get("speedup"), 2, "x"),
                    _fmt(r.get("speedup_bound"), 2, "x"),
                    _fmt(r.get("official_peak_rss_mib")), _fmt(r.get("mem_ratio"), 2),
                    _fmt((r.get("load_before") or [None])[0])])
    return out


def format_table(rows: list[dict], markdown: bool = False) -> str:
    """The result table as aligned text (or a Markdown table)."""
    body = table_rows(rows)
    if markdown:
        lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
        return "\n".join(lines + ["| " + " | ".join(c for c in r) + " |" for r in body])
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(TABLE_HEADER)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([fmt(TABLE_HEADER), fmt(["-" * w for w in widths])] + [fmt(r) for r in body])


def machine_info() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    return info


def merge_results(old: dict | None, new_rows: list[dict]) -> list[dict]:
    """Rows of ``old`` not re-measured, then the new rows (key: shape, method, path, device, dtype, threads, OpenMP
    wait policy)."""
    key = lambda r: (r["shape"], r["method"], r["variant"], r.get("device", "cpu"), r.get("dtype", "fp32"),
                     r.get("threads"), r.get("omp_wait_policy"))
    fresh = {key(r) for r in new_rows}
    kept = [r for r in (old or {}).get("rows", []) if key(r) not in fresh]
    return kept + new_rows


# ------------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `idsedit bench`."""
    parser.add_argument("--shapes", default=",".join(DEFAULT_SHAPES),
                        help="comma-separated model shapes: tiny, medium, sd15 (real SD1.5 size, meant for GPUs)")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated method variants (idsedit.variants): {', '.join(DEFAULT_METHODS)}")
    parser.add_argument("--steps", type=int, default=3, help="measured steps per case (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured steps before the measured ones")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in each worker")
    parser.add_argument("--threads-filter", default=None,
                        help="with --from-json: only rows with these threads (--shapes, --variants and "
                             "--omp-wait-policy filter too)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--dtype", default=None, help="fp32 | fp16 | bf16 (default fp32 on CPU, fp16 on CUDA)")
    parser.add_argument("--image-size", type=int, default=512, help="input image side (latent side = size / 8)")
    parser.add_argument("--baseline", action="store_true",
                        help="also measure the straightforward path (explicit attention, text encoder kept)")
    parser.add_argument("--variants", default=None,
                        help="comma-separated paths to measure: fast, baseline, fast-keep-te (SDPA, text encoder "
                             "kept), fast-bf16-bwd (prototype: attention backward in bf16)")
    parser.add_argument("--json", dest="json_out", default=None, help="write rows + machine info to this JSON file")
    parser.add_argument("--merge", action="store_true", help="with --json: keep the file's rows not re-measured")
    parser.add_argument("--tokenizer", default=None, help="CLIP tokenizer folder (default: the parity fixture's)")
    parser.add_argument("--omp-wait-policy", default=None, choices=["PASSIVE", "ACTIVE"],
                        help="OMP_WAIT_POLICY of the workers (PASSIVE: waiting threads sleep instead of spinning; "
                             "much faster when other processes share the cores)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds allowed per case (default: none)")
    parser.add_argument("--in-process", action="store_true",
                        help="run every case in this process (faster; peak memory is then not per case)")
    parser.add_argument("--from-json", default=None,
                        help="measure nothing: print the table of a results file written by --json")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)


def specs_from_args(args) -> list[CaseSpec]:
    """Every (shape, method, path) case the flags ask for, in table order."""
    from .errors import IdseditError
    from .models_from_config import SHAPES

    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    for s in shapes:
        if s not in SHAPES:
            raise IdseditError(f"unknown shape {s!r} in --shapes: use some of {', '.join(SHAPES)}")
    methods = [canonical_method(m) for m in args.methods.split(",") if m.strip()]
    variants = [v.strip() for v in (args.variants or ("fast,baseline" if args.baseline else "fast")).split(",")]
    for v in variants:
        if v not in VARIANTS:
            raise IdseditError(f"unknown path {v!r} in --variants: use some of {', '.join(VARIANTS)}")
    if args.steps < 1 or args.warmup < 0 or args.threads < 1:
        raise IdseditError("--steps must be >= 1, --warmup >= 0 and --threads >= 1")
    dtype = args.dtype or ("fp32" if args.device == "cpu" else "fp16")
    return [CaseSpec(shape=s, method=m, variant=v, steps=args.steps, warmup=args.warmup, threads=args.threads,
                     device=args.device, dtype=dtype, image_size=args.image_size, tokenizer=args.tokenizer,
                     omp_wait_policy=args.omp_wait_policy)
            for s in shapes for m in methods for v in variants]


def cli_main(args) -> int:
    """Run the benchmark, print the table, optionally write JSON. Returns the exit code."""
    if args.worker:
        return worker_main(args.worker, args.worker_out)
    if args.from_json:
        rows = json.loads(Path(args.from_json).read_text())["rows"]
        keep = lambda r, field, flag: flag is None or str(r.get(field)) in flag.split(",")
        rows = [r for r in rows if keep(r, "shape", args.shapes) and keep(r, "threads", args.threads_filter)
                and keep(r, "variant", args.variants) and keep(r, "omp_wait_policy", args.omp_wait_policy)]
        print(format_table(rows, markdown=args.markdown))
        for line in check_targets(rows):
            print(line)
        return 0
    specs = specs_from_args(args)
    command = "idsedit bench " + " ".join(a for a in sys.argv[1:] if a != "bench")
    old = None
    if args.json_out and args.merge and Path(args.json_out).is_file():
        old = json.loads(Path(args.json_out).read_text())
    rows = []
    for spec in specs:
        print(f"[bench] {spec.shape} {spec.method} ({spec.variant}, {spec.device} {spec.dtype}) "
              f"load {load_average()} ...", file=sys.stderr, flush=True)
        if args.in_process:
            import torch

            torch.set_num_threads(spec.threads)
            row = run_case(spec)
        else:
            row = run_in_subprocess(spec, args.timeout)
        row["command"] = command
        row["measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
        rows.append(compare_official(row))
        status = row.get("error") or f"{row['s_per_step']:.3f} s/step, peak {row['peak_mem_mib']:.0f} MiB"
        print(f"[bench]   -> {status}", file=sys.stderr, flush=True)
        if args.json_out:  # after every case, so an interrupted run keeps what it measured
            write_results(Path(args.json_out), rows, merge=args.merge, old=old)
    print(format_table(rows))
    for line in check_targets(rows):
        print(line)
    return 1 if any(r.get("error") for r in rows) else 0


def write_results(path: Path, rows: list[dict], *, merge: bool, old: dict | None) -> None:
    """Write rows + machine info atomically (``old``: the file's content before this run, kept with merge)."""
    doc = {"machine": machine_info(), "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
           "official_implementation_on_2_core_cpu": OFFICIAL_CPU,
           "rows": merge_results(old if merge else None, rows)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m idsedit.bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return cli_main(args)
    except BrokenPipeError:  # `... | head`: stop quietly
        sys.stdout = open(os.devnull, "w")
        return 0
    except Exception as e:  # noqa: BLE001 - one-line errors from the CLI
        from .errors import IdseditError

        if isinstance(e, IdseditError):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
