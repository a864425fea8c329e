"""The Gradio page: an Image tab (upload or example, prompts, method, settings, optional mask; Run with live
progress and frames; source | edited side by side, FPR residuals, downloads; compare two methods; Cancel).

The Run button is the API endpoint ``/edit`` (``gradio_client``: ``Client(url).predict(handle_file("cube.png"),
"a red cube", "a blue cube", "ids", "none", 200, 7.5, 3, 1.0, "exact", 0, None, None, api_name="/edit")``).
All work happens in :mod:`idsedit.ui.jobs`; this file only lays out the page and converts values.
"""

from __future__ import annotations

import time
from pathlib import Path

import gradio as gr
import pandas as pd

from ..errors import IdseditError
from ..variants import VARIANTS
from .jobs import FPR_MODES, Done, EditRequest, EditRunner, Failed, Frame, MethodDone, Progress, defaults, \
    painted_mask, render_examples

NO_COMPARE = "none"
HEARTBEAT_S = 0.5
"""Longest time a run's event goes without yielding: Gradio can only cancel a generator between yields."""

CSS = """
#status {min-height: 2.5em}
#status .error {color: #b00020; font-weight: 600}
"""


def _method_choices(with_none: bool = False) -> list[tuple[str, str]]:
    choices = [(f"{v.name}: {v.summary}", v.name) for v in VARIANTS.values()]
    return ([("none (one method)", NO_COMPARE)] if with_none else []) + choices


def _status(text: str, kind: str = "info") -> str:
    """Markdown for the status line; errors start with 'error:' as on the command line."""
    if kind == "error":
        return f'<span class="error">error: {_escape(text)}</span>'
    return _escape(text)


def _escape(text: str) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _residual_frame(results: list[MethodDone]) -> pd.DataFrame | None:
    """Long-form table for the residual plot: one row per (method, step, FPR iteration)."""
    rows = [{"step": s, "residual": r, "series": f"{md.method}, k={k + 1}"}
            for md in results for s, k, r in md.residuals]
    if not rows:                 # None, not an empty frame: Gradio 6's plot draws no lines after an empty one
        return None
    return pd.DataFrame(rows, columns=["step", "residual", "series"])


def check_uploaded(path, uploads: Path, what: str = "image") -> None:
    """IdseditError unless ``path`` (None allowed) lies in the app's upload folder: an API caller may name any
    server-side path in a file payload, and the app must only ever read files that were uploaded to it."""
    if path in (None, ""):
        return
    try:
        inside = Path(str(path)).resolve().is_relative_to(uploads.resolve())
    except (OSError, ValueError):
        inside = False
    if not inside:
        raise IdseditError(f"the {what} must be a file uploaded to this app (gradio_client: handle_file(path)); "
                           f"server-side paths are not read")


def _session(request) -> str:
    """The browser session (or gradio_client connection) a request comes from."""
    return getattr(request, "session_hash", None) or "api"


def display(img, min_side: int = 256):
    """An image enlarged by a whole factor (NEAREST, pixels stay crisp) until its shorter side is at least
    ``min_side``, for the page only (downloads keep the real size); None stays None."""
    if img is None:
        return None
    k = -(-min_side // max(1, min(img.size)))
    if k <= 1:
        return img
    from PIL import Image

    return img.resize((img.width * k, img.height * k), Image.Resampling.NEAREST)


def _cancel_handler(runner: EditRunner):
    """The Cancel button's handler (image and scene tabs alike): stop this browser's running edit before its next
    step, or withdraw its request still waiting in the queue."""

    def stop(request: gr.Request):
        session = _session(request)
        if runner.cancel(session):
            return _status("cancelling: the edit stops before its next step")
        if runner.is_waiting(session):
            return _status("cancelled: the request leaves the queue when its turn comes, without running")
        return gr.update()

    return stop


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def build_app(runner: EditRunner, *, examples=None, model_name: str = "", scenes_root=None) -> gr.Blocks:
    """The Blocks app over one EditRunner (one model). Call ``.queue()`` and ``.launch()`` on it (see serve)."""
    d = defaults()
    examples = list(examples or [])
    uploads = runner.out_dir / "cache"                # Gradio's upload folder (GRADIO_TEMP_DIR, see prepare_out)
    with gr.Blocks(title="idsedit", analytics_enabled=False) as app:
        gr.Markdown(f"## idsedit: identity-preserving text-driven image editing\nModel: `{model_name}`. "
                    "Upload an image (or pick an example), describe it and what it should become, then Run.")
        with gr.Tab("Image"):
            with gr.Row():
                with gr.Column(scale=1):
                    # no file_types: the server's own checks (images.load_image) say why a file is unusable
                    upload = gr.File(label="Image (PNG, JPEG, WebP, ...)", type="filepath", elem_id="upload",
                                     height=110)
                    editor = gr.ImageEditor(label="Input: paint the region to edit (optional; unpainted = whole "
                                            "image)", type="pil", sources=(), layers=False, elem_id="editor",
                                            brush=gr.Brush(colors=["#ff00ff"], color_mode="fixed"),
                                            transforms=(), height=300, image_mode="RGBA", format="png")
                    mask_file = gr.File(label="Or upload a mask (white = edit, black = keep; optional)",
                                        type="filepath", elem_id="mask", height=110)
                    if examples:
                        gallery = gr.Gallery(value=[(str(e.path), e.label) for e in examples],
                                             label="Examples from the shapes world (click one: captions are "
                                                   "filled in)", columns=6, height=150, allow_preview=False, buttons=[],
                                             elem_id="examples", interactive=False)
                with gr.Column(scale=1):
                    source = gr.Textbox(label="Source prompt", info="what the image shows",
                                        placeholder="a red cube", elem_id="source")
                    target = gr.Textbox(label="Target prompt", info="what it should show after the edit",
                                        placeholder="a blue cube", elem_id="target")
                    with gr.Row():
                        method = gr.Dropdown(_method_choices(), value="ids", label="Method", elem_id="method")
                        compare = gr.Dropdown(_method_choices(with_none=True), value=NO_COMPARE,
                                              label="Compare with", info="a second method, same input and seed",
                                              elem_id="compare")
                    with gr.Accordion("Settings", open=True):
                        with gr.Row():
                            steps = gr.Number(d["steps"], label="Steps", precision=0, minimum=1,
                                              info="optimisation steps (official: 200)", elem_id="steps")
                            guidance = gr.Number(d["guidance"], label="Guidance",
                                                 info="classifier-free guidance scale w", elem_id="guidance")
                            seed = gr.Number(d["seed"], label="Seed", precision=0,
                                             info="same seed, same edit", elem_id="seed")
                        with gr.Row():
                            fpr_iters = gr.Number(d["fpr_iters"], label="FPR iterations", precision=0, minimum=0,
                                                  info="IDS fixed-point steps N", elem_id="fpr_iters")
                            fpr_lambda = gr.Number(d["fpr_lambda"], label="Lambda", minimum=0,
                                                   info="IDS fixed-point step size", elem_id="fpr_lambda")
                            fpr_mode = gr.Dropdown(list(FPR_MODES), value=d["fpr_mode"], label="FPR mode",
                                                   info="ids-jf / ids-adaptive set their own",
                                                   elem_id="fpr_mode")
                    with gr.Row():
                        run = gr.Button("Run", variant="primary", elem_id="run")
                        cancel = gr.Button("Cancel", variant="stop", elem_id="cancel")
                    status = gr.Markdown("", elem_id="status")
                    live = gr.Image(label="Live preview", type="pil", format="png", interactive=False,
                                    height=200, elem_id="live")
            with gr.Row():
                out_source = gr.Image(label="Source", type="pil", format="png", interactive=False,
                                      elem_id="out_source")
                out_a = gr.Image(label="Edited", type="pil", format="png", interactive=False, elem_id="out_a")
                out_b = gr.Image(label="Edited (compare)", type="pil", format="png", interactive=False,
                                 visible=False, elem_id="out_b")
            with gr.Row():
                plot = gr.LinePlot(_residual_frame([]), x="step", y="residual", color="series",
                                   label="FPR residuals ||z_src - z0_hat(z_t)|| per step (IDS)",
                                   color_title="method, FPR iteration k",
                                   elem_id="plot")
                files = gr.File(label="Downloads: edited PNG, side-by-side PNG, JSON record",
                                file_count="multiple", interactive=False, elem_id="downloads")

        # ------------------------------------------------------------------------------------------ events
        def preview(path):
            """Show an uploaded image in the painter, or the reason it cannot be used."""
            if not path:
                return None, ""
            try:
                req_image, notes = _load_for_preview(path)
            except IdseditError as e:
                return None, _status(str(e), "error")
            line = f"{Path(path).name}: {req_image.width}x{req_image.height}, ready"
            return {"background": req_image, "layers": [], "composite": None}, \
                _status(line + "".join(f"\n\nwarning: {m}" for m in notes))

        upload.change(preview, [upload], [editor, status], concurrency_limit=None, api_visibility="private",
                      show_progress="hidden")

        if examples:
            def pick(evt: gr.SelectData):
                e = examples[evt.index]
                return str(e.path), e.source, e.target

            gallery.select(pick, None, [upload, source, target], concurrency_limit=None,
                           api_visibility="private")

        compare.change(lambda c: gr.update(visible=c != NO_COMPARE), [compare], [out_b],
                       concurrency_limit=None, api_visibility="private", show_progress="hidden")

        def edit(image, source_text, target_text, method_name, compare_name, n_steps, w, n_fpr, lam, mode,
                 seed_value, mask_path, painted, request: gr.Request, progress=gr.Progress()):
            """Edit the image towards the target prompt; yields live frames, then the results and files."""
            session = _session(request)
            two = compare_name not in (None, "", NO_COMPARE)
            keep = gr.update()
            if runner.cancelled_while_waiting(session):
                yield _status("cancelled while waiting in the queue"), keep, keep, keep, keep, keep, keep
                return
            try:
                for what, p in (("image", image), ("mask", mask_path)):
                    check_uploaded(p, uploads, what)
                layers = (painted or {}).get("layers") if isinstance(painted, dict) else None
                req = EditRequest.check(image, source_text, target_text, method=method_name,
                                        compare_with=compare_name, steps=n_steps, guidance=w, fpr_iters=n_fpr,
                                        fpr_lambda=lam, fpr_mode=mode, seed=seed_value, mask_path=mask_path,
                                        painted_mask=painted_mask(layers))
            except IdseditError as e:
                yield _status(str(e), "error"), None, keep, keep, keep, keep, keep
                raise gr.Error(str(e), print_exception=False)
            est = runner.estimate(req)
            total = sum(c.steps for c in req.configs)
            plan = " then ".join(req.methods)
            head = (f"running {plan}, {total} steps: about {_fmt_s(est)} (estimated on this server)" if est
                    is not None else f"running {plan}, {total} steps: estimating the time from the first steps")
            yield _status(head), None, display(req.image), None, None, _residual_frame([]), None
            progress((0, total), desc="starting")
            results: list[MethodDone] = []
            last = time.monotonic()
            for ev in runner.run(req, session):
                if isinstance(ev, Progress):
                    progress((ev.done, ev.total), desc=f"{ev.method} step {ev.step}/{ev.steps}, about "
                                                       f"{_fmt_s(ev.eta_s)} left", unit="steps")
                    if ev.done == 2 and est is None:
                        yield _status(f"running {plan}, {total} steps: about {_fmt_s(ev.eta_s)} left"), keep, \
                            keep, keep, keep, keep, keep
                    elif time.monotonic() - last > HEARTBEAT_S:     # a point where Gradio can cancel the event
                        last = time.monotonic()                      # (client gone, job.cancel()): closing this
                        yield (keep,) * 7                            # generator stops the run before its next step
                elif isinstance(ev, Frame):
                    yield keep, display(ev.image), keep, keep, keep, keep, keep
                elif isinstance(ev, MethodDone):
                    results.append(ev)
                elif isinstance(ev, Failed):
                    yield _status(ev.message, "error"), keep, keep, keep, keep, keep, keep
                    raise gr.Error(ev.message, print_exception=False)
                elif isinstance(ev, Done):
                    yield _finish(ev, req, two)

        def _finish(done: Done, req: EditRequest, two: bool):
            res = done.results
            a = res[0].result.image if res else None
            b = res[1].result.image if len(res) > 1 else None
            paths = [str(p) for md in res for p in (md.files["edited"], md.files["compare"], md.files["record"])]
            parts = []
            for md in res:
                parts.append(f"{md.method}: {'cancelled after ' if md.cancelled else ''}{md.steps_done} steps")
            line = ("cancelled; " if done.cancelled else "done; ") + "; ".join(parts) + \
                f" ({done.wall_s:.1f} s). Files in {res[0].files['record'].parent}" if res else \
                "cancelled before the first step"
            for m in done.messages:
                line += f"\n\nwarning: {m}"
            label_a = f"Edited: {res[0].method}" if res else "Edited"
            label_b = f"Edited: {res[1].method}" if len(res) > 1 else "Edited (compare)"
            return (_status(line), gr.update(), display(req.image), gr.update(value=display(a), label=label_a),
                    gr.update(value=display(b), visible=two, label=label_b),
                    _residual_frame(res), paths or None)

        def submitted(request: gr.Request):
            runner.submitted(_session(request))

        run.click(submitted, None, None, queue=False, api_visibility="private")  # before the edit queues: so
        #                                                                          Cancel can withdraw it
        run.click(edit, [upload, source, target, method, compare, steps, guidance, fpr_iters, fpr_lambda, fpr_mode,
                         seed, mask_file, editor],
                  [status, live, out_source, out_a, out_b, plot, files], api_name="edit",
                  concurrency_limit=1, concurrency_id="model", show_progress="full", show_progress_on=[live])

        cancel.click(_cancel_handler(runner), None, [status], queue=False, api_name="cancel")
        if scenes_root is not None and scene_available():
            scene_tab(runner, Path(scenes_root))
    return app


def _load_for_preview(path):
    """(image, warnings) of an upload, with errors and warnings naming the file by its own name."""
    from ..images import load_image
    from .jobs import named_as

    p = Path(str(path))
    with named_as(p, p.name) as notes:
        image = load_image(p)
    return image, notes


def make_examples(out_dir: Path, resolution: int, n: int = 6):
    """Rendered shapes-world examples in ``out_dir/examples`` at the model's resolution (at most 256 px)."""
    return render_examples(out_dir / "examples", size=min(256, max(64, resolution)), n=n)


def scene_available() -> bool:
    """True when this installation has the scene editor (idsedit.scene.edit)."""
    import importlib.util

    try:
        return importlib.util.find_spec("idsedit.scene.edit") is not None
    except ImportError:
        return False


def scene_tab(runner: EditRunner, scenes_root) -> None:
    """The Scene tab (inside a Blocks context): pick a fitted scene, edit it with progress, play the orbits."""
    from .jobs import SceneDone, SceneRequest, find_scenes

    d = defaults()
    from ..scene.edit import SceneEditConfig

    scene_steps = SceneEditConfig().steps
    with gr.Tab("Scene"):
        gr.Markdown("Edit a radiance-field scene fitted with `idsedit scene fit` (the same methods, applied to "
                    "rendered views), then play source | edited orbit videos.")
        with gr.Row():
            with gr.Column(scale=1):
                with gr.Row():
                    scene = gr.Dropdown(find_scenes(scenes_root), label="Scene folder", allow_custom_value=True,
                                        info=f"found under {scenes_root}; or type a path", elem_id="scene_dir",
                                        scale=4)
                    rescan = gr.Button("Rescan", scale=1, elem_id="scene_rescan")
                s_source = gr.Textbox(label="Source prompt", placeholder="a red cube", elem_id="scene_source")
                s_target = gr.Textbox(label="Target prompt", placeholder="a blue cube", elem_id="scene_target")
                s_method = gr.Dropdown(_method_choices(), value="ids", label="Method", elem_id="scene_method")
                with gr.Row():
                    s_steps = gr.Number(scene_steps, label="Steps", precision=0, minimum=1,
                                        info=f"edit steps (default {scene_steps})", elem_id="scene_steps")
                    s_seed = gr.Number(d["seed"], label="Seed", precision=0, elem_id="scene_seed")
                    s_frames = gr.Number(24, label="Orbit frames", precision=0, minimum=2, elem_id="scene_frames")
                with gr.Row():
                    s_guidance = gr.Number(d["guidance"], label="Guidance", elem_id="scene_guidance")
                    s_fpr = gr.Number(d["fpr_iters"], label="FPR iterations", precision=0, minimum=0,
                                      elem_id="scene_fpr_iters")
                    s_lambda = gr.Number(d["fpr_lambda"], label="Lambda", minimum=0, elem_id="scene_fpr_lambda")
                    s_mode = gr.Dropdown(list(FPR_MODES), value=d["fpr_mode"], label="FPR mode",
                                         elem_id="scene_fpr_mode")
                with gr.Row():
                    s_run = gr.Button("Run", variant="primary", elem_id="scene_run")
                    s_cancel = gr.Button("Cancel", variant="stop", elem_id="scene_cancel")
                s_status = gr.Markdown("", elem_id="scene_status")
            with gr.Column(scale=1):
                s_live = gr.Image(label="Live: the view rendered at the latest step", type="pil", format="png",
                                  interactive=False, height=220, elem_id="scene_live")
                s_video = gr.Video(label="Orbit: source | edited", interactive=False, autoplay=True, loop=True,
                                   elem_id="scene_video")
                s_depth = gr.Video(label="Depth: source | edited", interactive=False, autoplay=True, loop=True,
                                   elem_id="scene_depth")
                s_files = gr.File(label="Downloads: orbit videos (MP4, GIF), edit report", file_count="multiple",
                                  interactive=False, elem_id="scene_downloads")

        rescan.click(lambda: gr.update(choices=find_scenes(scenes_root)), None, [scene], concurrency_limit=None,
                     api_visibility="private")

        def edit_scene(scene_dir, source, target, method, steps, seed, frames, w, n_fpr, lam, mode,
                       request: gr.Request, progress=gr.Progress()):
            """Edit a fitted scene towards the target prompt; yields renders, then the orbit videos and files."""
            session = _session(request)
            keep = gr.update()
            if runner.cancelled_while_waiting(session):
                yield _status("cancelled while waiting in the queue"), keep, keep, keep, keep
                return
            try:
                req = SceneRequest.check(scene_dir, source, target, method=method, steps=steps, guidance=w,
                                         fpr_iters=n_fpr, fpr_lambda=lam, fpr_mode=mode, seed=seed,
                                         orbit_frames=frames, root=scenes_root)
            except IdseditError as e:
                yield _status(str(e), "error"), None, keep, keep, keep
                raise gr.Error(str(e), print_exception=False)
            steps_n = req.config.steps
            yield _status(f"editing {req.scene_name} with {req.method}, {steps_n} steps"), None, None, None, None
            progress((0, steps_n), desc="starting")
            last = time.monotonic()
            for ev in runner.run_scene(req, session):
                if isinstance(ev, Progress):
                    progress((ev.step, ev.steps), desc=f"{ev.method} step {ev.step}/{ev.steps}, about "
                                                       f"{_fmt_s(ev.eta_s)} left", unit="steps")
                    if ev.step == 2:
                        yield _status(f"editing {req.scene_name} with {req.method}: about {_fmt_s(ev.eta_s)} "
                                      "left, then the orbit renders"), keep, keep, keep, keep
                    elif time.monotonic() - last > HEARTBEAT_S:
                        last = time.monotonic()
                        yield (keep,) * 5
                elif isinstance(ev, Frame):
                    yield keep, display(ev.image), keep, keep, keep
                elif isinstance(ev, Failed):
                    yield _status(ev.message, "error"), keep, keep, keep, keep
                    raise gr.Error(ev.message, print_exception=False)
                elif isinstance(ev, SceneDone):
                    what = f"cancelled after {ev.steps_done} steps (partial edit rendered)" if ev.cancelled else \
                        f"done; {req.method}: {ev.steps_done} steps"
                    line = f"{what} ({ev.wall_s:.1f} s). Files in {ev.out_dir}"
                    for m in ev.messages:
                        line += f"\n\nwarning: {m}"
                    report = ev.out_dir / "scene" / "report.json"
                    files = [str(ev.videos[k]) for k in ("orbit.mp4", "orbit.gif", "orbit_depth.mp4")
                             if k in ev.videos] + ([str(report)] if report.is_file() else [])
                    yield (_status(line), keep, str(ev.videos["orbit.mp4"]), str(ev.videos["orbit_depth.mp4"]),
                           files)

        def submitted(request: gr.Request):
            runner.submitted(_session(request))

        s_run.click(submitted, None, None, queue=False, api_visibility="private")
        s_run.click(edit_scene, [scene, s_source, s_target, s_method, s_steps, s_seed, s_frames, s_guidance, s_fpr,
                                 s_lambda, s_mode], [s_status, s_live, s_video, s_depth, s_files],
                    api_name="edit_scene", concurrency_limit=1, concurrency_id="model", show_progress="full",
                    show_progress_on=[s_live])

        s_cancel.click(_cancel_handler(runner), None, [s_status], queue=False, api_visibility="private")
