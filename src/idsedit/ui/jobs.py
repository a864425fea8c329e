"""What the web app does, without the web: check a request, run one edit (or two, to compare) in a worker thread
with live progress, cooperative cancel and the model's lock held, and write its files under the output folder.

Nothing here imports gradio, so it is tested directly (``tests/test_ui.py``) and reused by any other front end.

    runner = EditRunner(prior, out_dir)
    req = EditRequest.check(image_path, "a red cube", "a blue cube", method="ids", steps=200)
    for event in runner.run(req, session="abc"):     # Progress / Frame / Done / Failed events, as they happen
        ...
    runner.cancel("abc")                             # from another thread: the run stops before its next step
"""

from __future__ import annotations

import dataclasses
import queue
import re
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from ..errors import IdseditError

DEFAULT_OUT = "idsedit-ui"
"""Output folder of the web app (relative to the working directory) unless --out says otherwise."""

FPR_MODES = ("exact", "jacobian-free", "adaptive")


# --------------------------------------------------------------------------------------------------- requests
@dataclass
class Settings:
    """The settings the page exposes (None = the EditConfig / DistillConfig default)."""

    steps: int | None = None
    guidance: float | None = None
    fpr_iters: int | None = None
    fpr_lambda: float | None = None
    fpr_mode: str | None = None
    seed: int | None = None


def defaults() -> dict:
    """The defaults the page shows: EditConfig() and DistillConfig() values of the exposed settings."""
    from ..edit2d import EditConfig

    e = EditConfig()
    d = e.distill
    return {"steps": e.steps, "guidance": d.guidance, "fpr_iters": d.fpr_iters, "fpr_lambda": d.fpr_lambda,
            "fpr_mode": d.fpr_mode, "seed": e.seed if e.seed is not None else 0}


def _number(name: str, value, kind, lo=None, strict=False):
    """value as int/float (None stays None), with a one-line error naming the setting."""
    if value is None or value == "":
        return None
    try:
        x = kind(value)
        if kind is int and float(value) != x:
            raise ValueError
    except (TypeError, ValueError):
        raise IdseditError(f"{name} must be a {'whole number' if kind is int else 'number'}, got {value!r}") from None
    if kind is float and not np.isfinite(x):
        raise IdseditError(f"{name} must be a finite number, got {value!r}")
    if lo is not None and (x <= lo if strict else x < lo):
        raise IdseditError(f"{name} must be {'>' if strict else '>='} {lo}, got {value!r}")
    return x


def edit_config(method: str, settings: Settings):
    """The EditConfig of one method variant with the page's settings: the settings apply first, then the
    variant's own DistillConfig overrides (so ``ids-jf`` stays Jacobian-free whatever the FPR-mode box says)."""
    from ..edit2d import EditConfig
    from ..variants import variant_config

    s = settings
    base = EditConfig()
    dist = {k: v for k, v in (("guidance", s.guidance), ("fpr_iters", s.fpr_iters), ("fpr_lambda", s.fpr_lambda),
                              ("fpr_mode", s.fpr_mode)) if v is not None}
    base = dataclasses.replace(base, distill=dataclasses.replace(base.distill, **dist))
    over = {k: v for k, v in (("steps", s.steps), ("seed", s.seed)) if v is not None}
    return variant_config(method, base, **over)


def forward_equivalents_per_step(method: str, distill) -> int:
    """UNet forward-equivalents of one step (a sample through the UNet = 1, its backward = 2), with CFG:

        sds 2;  dds, pds 4;  cds 4 + 2 = 6 (the conditional target sample runs once, with its backward);
        ids 4 + N (2 + 2 x 2) exact / 4 + 2 N Jacobian-free (adaptive: at most the exact count); +2 with_cut.
    Exact IDS at N = 3 is 22 per step, 4,400 per 200-step edit (the counts idsedit eval measures)."""
    if method == "sds":
        return 2
    if method in ("dds", "pds"):
        return 4
    if method == "cds":
        return 6
    if method == "ids":
        n = int(distill.fpr_iters)
        fe = 4 + (2 * n if distill.fpr_mode == "jacobian-free" else 6 * n)
        return fe + (2 if distill.with_cut else 0)
    return 4


@dataclass
class EditRequest:
    """One checked request: the image (RGB, as load_image read it), prompts, methods (one, or two to compare),
    settings, an optional mask (mode L at the image's size, white = editable)."""

    image: Image.Image
    image_name: str
    source: str
    target: str
    methods: list[str]
    settings: Settings
    mask: Image.Image | None = None
    configs: list = field(default_factory=list)
    run_dir: Path | None = None          # set by the runner: where this request's files go
    notes: list = field(default_factory=list)   # warnings about the input (e.g. transparency flattened)

    @classmethod
    def check(cls, image_path, source, target, *, method="ids", compare_with=None, steps=None, guidance=None,
              fpr_iters=None, fpr_lambda=None, fpr_mode=None, seed=None, mask_path=None,
              painted_mask: Image.Image | None = None, display_name: str | None = None) -> "EditRequest":
        """Every check of the CLI, in its words: the image (images.load_image), the prompts, the method names
        (variants), the settings (EditConfig), the mask (images.load_mask, or a painted one). IdseditError on
        the first problem, with a one-line message naming the uploaded file by its own name."""
        from ..images import load_image, load_mask
        from ..variants import canonical_variant

        if image_path is None or str(image_path).strip() == "":
            raise IdseditError("no image: upload an image (PNG, JPEG, WebP, ...) or pick an example")
        path = Path(str(image_path))
        name = display_name or path.name
        with named_as(path, name) as notes:
            image = load_image(path)
        for what, prompt in (("source", source), ("target", target)):
            if prompt is None or not str(prompt).strip():
                raise IdseditError(f"the {what} prompt is empty: give a short description such as "
                                   f"\"a photo of a cat\"")
        methods = [canonical_variant(method or "ids")]
        if compare_with not in (None, "", "none", "(none)"):
            other = canonical_variant(compare_with)
            if other == methods[0]:
                raise IdseditError(f"compare mode needs two different methods; both are {other}")
            methods.append(other)
        if fpr_mode in ("", None, "(method default)"):
            fpr_mode = None
        elif fpr_mode not in FPR_MODES:
            raise IdseditError(f"unknown FPR mode {fpr_mode!r}: use one of {', '.join(FPR_MODES)}")
        settings = Settings(steps=_number("steps", steps, int, 1), guidance=_number("guidance", guidance, float, 0,
                                                                                      strict=True),
                            fpr_iters=_number("FPR iterations", fpr_iters, int, 0),
                            fpr_lambda=_number("lambda", fpr_lambda, float, 0), fpr_mode=fpr_mode,
                            seed=_number("seed", seed, int))
        configs = [edit_config(m, settings) for m in methods]
        mask = None
        if mask_path not in (None, ""):
            mpath = Path(str(mask_path))
            with named_as(mpath, mpath.name) as mask_notes:
                mask = load_mask(mpath, image.size)
            notes += mask_notes
        elif painted_mask is not None:
            mask = painted_mask.convert("L").resize(image.size, Image.Resampling.BILINEAR)
        return cls(image, name, str(source).strip(), str(target).strip(), methods, settings, mask, configs,
                   notes=notes)


@contextmanager
def named_as(path, name: str) -> Iterator[list]:
    """Inside: IdseditErrors and warnings that name the server-side upload ``path`` name the file as the user
    knows it (``name``). Yields the list of warnings raised inside, one line each, for the page to show."""
    notes: list[str] = []
    try:
        with recorded_warnings() as caught:
            try:
                yield notes
            except IdseditError as e:
                if str(path) in str(e):
                    raise type(e)(str(e).replace(str(path), name)) from None
                raise
    finally:
        notes += [m.replace(str(path), name) for m in caught]     # filled when recorded_warnings exits


_WARNINGS_LOCK = threading.Lock()


@contextmanager
def recorded_warnings() -> Iterator[list]:
    """Record the warnings raised inside (one line each) instead of printing them. ``warnings.catch_warnings``
    swaps process-wide state, so these blocks are kept short (a file check, a prompt check) and serialised."""
    lines: list[str] = []
    with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield lines
        finally:
            lines += _messages(caught)


@dataclass
class SceneRequest:
    """A checked scene edit: a fitted scene folder, prompts, one method variant, its SceneEditConfig."""

    scene_dir: Path
    scene_name: str
    source: str
    target: str
    method: str
    config: object               # idsedit.scene.edit.SceneEditConfig
    orbit_frames: int = 24

    @classmethod
    def check(cls, scene_dir, source, target, *, method="ids", steps=None, guidance=None, fpr_iters=None,
              fpr_lambda=None, fpr_mode=None, seed=None, orbit_frames=24, root=None) -> "SceneRequest":
        """The scene CLI's checks: a folder made by ``idsedit scene fit`` (load_scene's one-line errors), under
        ``root`` when given (the app's --scenes folder), non-empty prompts, a known method, valid settings."""
        from ..distill import DistillConfig
        from ..scene.edit import SceneEditConfig
        from ..scene.store import load_scene
        from ..variants import get_variant

        if scene_dir is None or not str(scene_dir).strip():
            raise IdseditError("no scene: choose a scene folder made by `idsedit scene fit`")
        path = Path(str(scene_dir).strip()).expanduser()
        if root is not None and not path.resolve().is_relative_to(Path(root).resolve()):
            raise IdseditError(f"{path} is outside {root}: this app edits scenes under its --scenes folder only")
        if not path.is_dir():
            raise IdseditError(f"{path} is not a folder: choose a scene folder made by `idsedit scene fit`")
        load_scene(path)
        for what, prompt in (("source", source), ("target", target)):
            if prompt is None or not str(prompt).strip():
                raise IdseditError(f"the {what} prompt is empty: give a short description such as \"a red cube\"")
        v = get_variant(method or "ids")
        if fpr_mode in ("", None, "(method default)"):
            fpr_mode = None
        elif fpr_mode not in FPR_MODES:
            raise IdseditError(f"unknown FPR mode {fpr_mode!r}: use one of {', '.join(FPR_MODES)}")
        dist = {k: x for k, x in (("guidance", _number("guidance", guidance, float, 0, strict=True)),
                                  ("fpr_iters", _number("FPR iterations", fpr_iters, int, 0)),
                                  ("fpr_lambda", _number("lambda", fpr_lambda, float, 0)),
                                  ("fpr_mode", fpr_mode)) if x is not None}
        fields = {k: x for k, x in (("steps", _number("steps", steps, int, 1)), ("seed", _number("seed", seed, int)))
                  if x is not None}
        cfg = SceneEditConfig(method=v.method, distill=DistillConfig(**{**dist, **v.distill}), **fields)
        frames = _number("orbit frames", orbit_frames, int, 2) or 24
        return cls(path, path.name, str(source).strip(), str(target).strip(), v.name, cfg, frames)


def find_scenes(root: str | Path, depth: int = 3, max_dirs: int = 2000) -> list[str]:
    """Scene folders (made by ``idsedit scene fit`` or ``scene edit``) under ``root``, at most ``depth`` levels
    down (looking into at most ``max_dirs`` folders), sorted; hidden folders and the app's cache are skipped."""
    from ..scene.store import is_scene

    root = Path(root)
    found, frontier, seen = [], [root], 0
    for _ in range(depth + 1):
        nxt = []
        for d in frontier:
            seen += 1
            if seen > max_dirs:                 # a huge tree: stop looking (the box also takes typed paths)
                return sorted(found)
            try:
                if is_scene(d):
                    found.append(str(d))
                    continue
                nxt += [c for c in d.iterdir() if c.is_dir() and not c.name.startswith(".") and c.name != "cache"]
            except OSError:
                continue
        frontier = nxt
    return sorted(found)


def painted_mask(layers) -> Image.Image | None:
    """A mask (mode L, white = editable) from an image editor's paint layers: every pixel any stroke covers
    (alpha > 0) is editable. None when nothing is painted."""
    mask = None
    for layer in layers or []:
        if layer is None:
            continue
        layer = layer if isinstance(layer, Image.Image) else Image.fromarray(np.asarray(layer))
        a = np.asarray(layer.convert("RGBA"))[..., 3] > 0
        mask = a if mask is None else (mask | a) if mask.shape == a.shape else mask
    if mask is None or not mask.any():
        return None
    return Image.fromarray((mask * 255).astype(np.uint8), "L")


# --------------------------------------------------------------------------------------------------- events
@dataclass
class Progress:
    """Steps done of the whole request (both methods in compare mode) and the estimated seconds left."""

    method: str
    step: int            # within this method
    steps: int
    done: int            # over the request
    total: int
    eta_s: float | None


@dataclass
class Frame:
    """A live preview: the current edit of ``method`` after ``step`` steps."""

    method: str
    step: int
    image: Image.Image


@dataclass
class MethodDone:
    """One method of the request finished (or was cancelled)."""

    method: str
    result: object               # EditResult (partial when cancelled)
    residuals: list              # [(step, fpr iteration k, residual)] for IDS, else []
    files: dict                  # {"edited": path, "record": path, "compare": path}
    cancelled: bool
    steps_done: int


@dataclass
class Done:
    results: list                # [MethodDone] in request order
    cancelled: bool
    messages: list               # warnings raised during the run, one line each
    wall_s: float


@dataclass
class SceneDone:
    out_dir: Path                # the edit's folder: scene/ (the edited scene) and orbit/ (videos)
    videos: dict                 # {"orbit.mp4": path, "orbit.gif": ..., "orbit_depth.mp4": ..., ...}
    cancelled: bool
    steps_done: int
    messages: list
    wall_s: float


@dataclass
class Failed:
    message: str                 # one line


# --------------------------------------------------------------------------------------------------- running
class _Stop:
    """When a run should stop: Cancel was pressed (``set()``), or nobody has taken its events for ``abandon_s``
    seconds. The second case is a client that went away or a Gradio cancel (gradio_client ``job.cancel()``):
    Gradio then simply stops resuming the event's generator (closing a generator that is running in another
    thread is not possible), so the run notices that its consumer stays suspended at a yield."""

    def __init__(self, abandon_s: float):
        self.event = threading.Event()
        self.abandon_s = abandon_s
        self.suspended_since: float | None = None      # set while the consumer holds an event (at a yield)

    def set(self) -> None:
        self.event.set()

    def is_set(self) -> bool:
        since = self.suspended_since
        if since is not None and time.monotonic() - since > self.abandon_s:
            self.event.set()                            # abandoned once: stopped for good
        return self.event.is_set()


class EditRunner:
    """Runs edits on one prior, one at a time: the prior's lock (``prior.lock`` when the prior has one, else a
    lock of this runner) is held for the whole request; ``cancel(session)`` asks that session's run to stop."""

    def __init__(self, prior, out_dir: str | Path, *, frames: int = 12, abandon_s: float = 10.0):
        self.prior = prior
        self.out_dir = Path(out_dir)
        self.frames = frames
        self.abandon_s = abandon_s       # a run whose events nobody takes for this long stops (client gone)
        self.lock = getattr(prior, "lock", None) or threading.RLock()
        self._stops: dict[str, _Stop] = {}
        self._waiting: dict[str, bool] = {}                # session -> Cancel pressed while its request waited
        self._stops_lock = threading.Lock()
        self.seconds_per_step: dict[tuple, float] = {}    # (variant, latent size, settings) -> measured s/step
        self._unet_timing: dict[tuple, float] = {}        # latent (h, w) -> seconds per UNet sample forward

    # ---------------------------------------------------------------- estimates
    def _key(self, method: str, req: EditRequest) -> tuple:
        s = req.settings
        return (method, self.latent_size(req.image.size), s.fpr_iters, s.fpr_mode)

    def latent_size(self, size: tuple[int, int]) -> tuple[int, int]:
        from ..images import fit_size

        w, h = fit_size(size, self.prior.resolution, self.prior.latent_multiple)
        return h // self.prior.vae_scale_factor, w // self.prior.vae_scale_factor

    def estimate(self, req: EditRequest) -> float | None:
        """Seconds the whole request should take: from earlier runs of the same methods at the same latent size
        on this server where there are any, else from the cost model (UNet forward-equivalents per step, see
        :func:`forward_equivalents_per_step`, times one timed UNet forward). None only when the model is busy
        with another run and nothing was measured yet (the first steps' timing then gives it)."""
        total = 0.0
        for m, cfg in zip(req.methods, req.configs):
            sps = self.seconds_per_step.get(self._key(m, req))
            if sps is None:
                per_sample = self.unet_seconds_per_sample(self.latent_size(req.image.size))
                if per_sample is None:
                    return None
                sps = per_sample * forward_equivalents_per_step(cfg.method, cfg.distill)
            total += sps * cfg.steps
        return total

    def unet_seconds_per_sample(self, latent_hw: tuple[int, int]) -> float | None:
        """Seconds of one UNet forward per sample at ``latent_hw`` (a batch-2 no-grad forward, timed once per
        size; the first call is a warm-up). None if another run holds the model right now."""
        if latent_hw in self._unet_timing:
            return self._unet_timing[latent_hw]
        if not self.lock.acquire(blocking=False):
            return None
        try:
            import torch

            p = self.prior
            cond = p.encode_text("", "")
            z = torch.zeros(2, p.unet.config.in_channels, *latent_hw, device=p.device)
            times = []
            with torch.no_grad():
                for _ in range(2):
                    t0 = time.perf_counter()
                    p.eps([z[:1]], 500, [cond], 7.5)
                    times.append(time.perf_counter() - t0)
            self._unet_timing[latent_hw] = times[-1] / 2
        finally:
            self.lock.release()
        return self._unet_timing[latent_hw]

    def prompt_notes(self, source: str, target: str) -> list[str]:
        """The prior's one-line warnings about the prompts (e.g. words a closed-vocabulary prior does not know,
        a prompt longer than the text encoder's limit), for the page."""
        with recorded_warnings() as notes:
            self.prior.check_prompt(source, "source prompt")
            self.prior.check_prompt(target, "target prompt")
        return notes

    # ---------------------------------------------------------------- cancel
    def running(self) -> list[str]:
        """Sessions with a run in progress (at most one holds the model; the others wait for its lock)."""
        with self._stops_lock:
            return list(self._stops)

    def cancel(self, session: str) -> bool:
        """Ask the run of ``session`` to stop before its next step; True if one was running. Otherwise, if the
        session has a request waiting (see :meth:`submitted`), that request is marked to end as soon as it
        starts (:meth:`cancelled_while_waiting`)."""
        with self._stops_lock:
            ev = self._stops.get(session)
            if ev is None:
                if session in self._waiting:
                    self._waiting[session] = True
                return False
        ev.set()
        return True

    def submitted(self, session: str) -> None:
        """A request of ``session`` joined the queue (called when Run is pressed, before the request waits)."""
        with self._stops_lock:
            self._waiting[session] = False

    def is_waiting(self, session: str) -> bool:
        """True while a request of ``session`` is queued (submitted, not started)."""
        with self._stops_lock:
            return session in self._waiting

    def cancelled_while_waiting(self, session: str) -> bool:
        """Called when the session's request leaves the queue: True if Cancel was pressed while it waited."""
        with self._stops_lock:
            return bool(self._waiting.pop(session, False))

    # ---------------------------------------------------------------- run
    def run(self, req: EditRequest, session: str = "default", *, poll_s: float = 0.1) -> Iterator:
        """Run the request in a worker thread; yield Progress, Frame, MethodDone events as they happen, then Done
        (or Failed with a one-line message). Leaving the iterator early cancels the run."""
        return self._spawn(self._work, req, session, poll_s)

    def run_scene(self, req: "SceneRequest", session: str = "default", *, poll_s: float = 0.1) -> Iterator:
        """Edit a fitted scene in a worker thread, then render source | edited orbit videos; yields Progress and
        Frame events (the view rendered at that step), then SceneDone (or Failed)."""
        return self._spawn(self._scene_work, req, session, poll_s)

    def _spawn(self, work, req, session: str, poll_s: float) -> Iterator:
        stop = _Stop(self.abandon_s)
        with self._stops_lock:
            if session in self._stops:
                self._stops[session].set()
            self._stops[session] = stop
        events: queue.Queue = queue.Queue()
        worker = threading.Thread(target=self._guarded, args=(work, req, stop, events), daemon=True,
                                  name=f"idsedit-ui-{session[:8]}")
        worker.start()
        try:
            while True:
                try:
                    ev = events.get(timeout=poll_s)
                except queue.Empty:
                    if not worker.is_alive() and events.empty():
                        yield Failed("the edit stopped without a result (a bug: please report it)")
                        return
                    continue
                stop.suspended_since = time.monotonic()
                yield ev
                stop.suspended_since = None
                if isinstance(ev, (Done, SceneDone, Failed)):
                    return
        finally:
            stop.set()                          # closed early (a client that went away): stop the run
            with self._stops_lock:
                if self._stops.get(session) is stop:
                    del self._stops[session]

    @staticmethod
    def _guarded(work, req, stop: "_Stop", events: queue.Queue) -> None:
        """Run ``work``; user errors become Failed(one line), anything else Failed(one line) + a logged traceback."""
        try:
            work(req, stop, events)
        except IdseditError as e:
            events.put(Failed(_one_line(e)))
        except Exception as e:                  # noqa: BLE001  the page shows one line, the log keeps the rest
            import traceback

            traceback.print_exc()
            events.put(Failed(resource_message(e)))

    def _work(self, req: EditRequest, stop: "_Stop", events: queue.Queue) -> None:
        t0 = time.perf_counter()
        notes = req.notes + self.prompt_notes(req.source, req.target)
        with self.lock:
            results = []
            total = sum(c.steps for c in req.configs)
            done_before = 0
            for method, cfg in zip(req.methods, req.configs):
                if stop.is_set():
                    break
                md = self._one(req, method, cfg, stop, events, done_before, total)
                results.append(md)
                events.put(md)
                done_before += cfg.steps
                if md.cancelled:
                    break
        cancelled = any(r.cancelled for r in results) or len(results) < len(req.methods)
        events.put(Done(results, cancelled, _unique(notes),
                        time.perf_counter() - t0))

    def _scene_work(self, req: "SceneRequest", stop: "_Stop", events: queue.Queue) -> None:
        from ..scene.edit import edit_scene
        from ..scene.outputs import render_orbit
        from ..scene.store import load_scene

        t0 = time.perf_counter()
        steps = req.config.steps
        every = max(1, steps // max(1, self.frames))
        out = self._fresh_dir("scenes", f"{safe_stem(req.scene_name)}.{req.method.replace('+', '-')}")
        state = {"t1": None}

        def on_step(step, info):
            now = time.perf_counter()
            if step == 1:
                state["t1"] = now
            sps = (now - state["t1"]) / (step - 1) if step > 1 else now - t0
            events.put(Progress(req.method, step, steps, step, steps, sps * (steps - step)))
            if step % every == 0 or step == steps:
                rgb = info["render"][0].detach().clamp(0, 1).mul(255).round().byte().cpu().numpy()
                events.put(Frame(req.method, step, Image.fromarray(rgb)))

        notes = self.prompt_notes(req.source, req.target)
        with self.lock:
            res = edit_scene(self.prior, req.scene_dir, req.source, req.target, out / "scene", req.config,
                             should_stop=stop.is_set, progress=False, callback=on_step)
            source = load_scene(req.scene_dir)
            h, w = source.data.get("size") or (64, 64)
            upscale = max(1, -(-256 // max(1, min(int(h), int(w)))))
            videos = render_orbit(res.scene, req.orbit_frames, out / "orbit", compare=source, upscale=upscale,
                                  progress=False)
        events.put(SceneDone(out, {k: Path(v) for k, v in videos.items()}, res.cancelled, res.steps_done,
                             notes, time.perf_counter() - t0))

    def _one(self, req: EditRequest, method: str, cfg, stop, events, done_before: int, total: int) -> MethodDone:
        from .. import edit2d
        from ..images import restore_size

        key = self._key(method, req)
        position = req.methods.index(method)
        every = max(1, cfg.steps // max(1, self.frames))
        residuals: list = []
        state = {"t_first": None, "steps_done": 0}
        known = self.seconds_per_step.get(key)
        t_start = time.perf_counter()

        def on_step(i, z, draw, out):
            now = time.perf_counter()
            norms = out.info.get("fpr_norms") if getattr(out, "info", None) else None
            for k, r in enumerate(norms or []):
                residuals.append((i + 1, k, float(r)))
            state["steps_done"] = i + 1
            if i == 0:
                state["t_first"] = now
            # s/step: from step 2 on (step 1 includes warm-up), else a previous run's figure, else step 1's
            if i >= 1:
                sps = (now - state["t_first"]) / i
            else:
                sps = known if known is not None else now - t_start
            later = zip(req.methods[position + 1:], req.configs[position + 1:])
            eta = sps * (cfg.steps - i - 1) + sum(self.seconds_per_step.get(self._key(m, req), sps) * c.steps
                                                   for m, c in later)
            events.put(Progress(method, i + 1, cfg.steps, done_before + i + 1, total, eta))
            if (i + 1) % every == 0 or i + 1 == cfg.steps:
                frame = restore_size(edit2d.tensor_to_image(self.prior.decode(z.detach())), req.image.size)
                if req.mask is not None:                        # as the final image: the input outside the mask
                    frame = Image.composite(frame, req.image, req.mask)
                events.put(Frame(method, i + 1, frame))

        result = edit2d.edit_image(self.prior, req.image, req.source, req.target, cfg, mask=req.mask,
                                   progress=False, callback=on_step, should_stop=stop.is_set)
        cancelled = bool(result.cancelled)
        if state["t_first"] is not None and state["steps_done"] >= 3 and not cancelled:
            self.seconds_per_step[key] = (time.perf_counter() - state["t_first"]) / (state["steps_done"] - 1)
        files = self.write(req, method, result, residuals, cancelled, result.steps_done)
        return MethodDone(method, result, residuals, files, cancelled, result.steps_done)

    # ---------------------------------------------------------------- files
    def write(self, req: EditRequest, method: str, result, residuals, cancelled: bool, steps_done: int) -> dict:
        """Write <stem>.<method>.png, .compare.png and .json into a fresh folder under the output folder
        (atomically, the record last); return their paths."""
        from .. import __version__
        from ..images import comparison_image, save_image_atomic, save_json_atomic

        run_dir = self._run_dir(req)
        stem = f"{safe_stem(req.image_name)}.{method.replace('+', '-')}"
        files = {"edited": run_dir / f"{stem}.png", "compare": run_dir / f"{stem}.compare.png",
                 "record": run_dir / f"{stem}.json"}
        save_image_atomic(result.image, files["edited"])
        label = f"{method}: {req.target}" + (f" (cancelled at step {steps_done})" if cancelled else "")
        save_image_atomic(comparison_image(req.image, result.image, [f"source: {req.source}", label]),
                          files["compare"])
        record = dict(result.record())
        record.update({"idsedit_version": __version__, "input": req.image_name, "method": method,
                       "model": getattr(self.prior, "name", None) or "bundled mini prior",
                       "device": str(getattr(self.prior, "device", "")),
                       "dtype": str(getattr(self.prior, "dtype", "")).replace("torch.", ""),
                       "mask": req.mask is not None, "cancelled": cancelled, "steps_done": steps_done,
                       "fpr_residuals": [{"step": s, "iteration": k, "residual": r} for s, k, r in residuals],
                       "outputs": {k: v.name for k, v in files.items()}, "written_by": "idsedit ui"})
        save_json_atomic(record, files["record"])
        return files

    def _run_dir(self, req: EditRequest) -> Path:
        if req.run_dir is None:
            req.run_dir = self._fresh_dir("runs", safe_stem(req.image_name))
        return req.run_dir

    def _fresh_dir(self, kind: str, name: str) -> Path:
        """A new folder out_dir/<kind>/<time>-<name>[-n] (never an existing one)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = self.out_dir / kind
        base.mkdir(parents=True, exist_ok=True)
        n = 0
        while True:
            d = base / (f"{stamp}-{name}" + (f"-{n}" if n else ""))
            try:
                d.mkdir()
                return d
            except FileExistsError:
                n += 1


def safe_stem(name: str) -> str:
    """A file name's stem reduced to [A-Za-z0-9._-] (uploads can be named anything)."""
    stem = Path(str(name)).stem
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "image"


def _messages(caught) -> list[str]:
    """Warnings recorded during a run, one line each, without library deprecation notes."""
    return _unique(" ".join(str(w.message).split()) for w in caught
                   if not issubclass(w.category, (DeprecationWarning, FutureWarning)))


def _unique(lines) -> list[str]:
    out = []
    for line in lines:
        if line and line not in out:
            out.append(line)
    return out


def _one_line(e: BaseException | str) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def resource_message(e: BaseException) -> str:
    """One line for an unexpected error: out of memory, disk, or a bug."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return "out of memory: use a smaller image or fewer steps, or start the server with another --device"
    if isinstance(e, OSError):
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        return f"could not write{where}: {e.strerror or _one_line(e)}: free disk space or choose another --out"
    return f"unexpected {type(e).__name__}: {_one_line(e)[:200]} (a bug: please report it)"


# --------------------------------------------------------------------------------------------------- examples
@dataclass
class Example:
    path: Path
    source: str
    target: str
    label: str


def render_examples(out_dir: str | Path, size: int, n: int = 6, seed: int = 0) -> list[Example]:
    """n seeded shapes-world colour edits rendered as PNGs under ``out_dir``: each scene's canonical caption
    ("a red cube") and the caption with the main object's colour changed ("a blue cube")."""
    from ..images import save_image_atomic
    from ..shapes import COLORS, caption, render, sample_scene, with_changes

    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(n):
        p = sample_scene(rng)
        q = with_changes(p, color=str(rng.choice([c for c in COLORS if c != p.main.color])))
        path = out_dir / f"shapes-{seed}-{i:02d}-{size}px.png"
        if not path.exists():
            rgb = (render(p, size).rgb * 255).round().astype(np.uint8)
            save_image_atomic(Image.fromarray(rgb), path)
        examples.append(Example(path, caption(p), caption(q), f"{caption(p)} -> {caption(q)}"))
    return examples
