"""`idsedit ui`: a local web app for editing images (Gradio), on the bundled mini prior or any diffusers model.

    idsedit ui                                   # http://127.0.0.1:7860, the bundled mini prior
    idsedit ui --model /path/to/sd15 --port 8000 --out ui-out
    idsedit ui --host 0.0.0.0                    # reachable from other machines (off by default)

Gradio is an optional extra: ``pip install -e ".[ui]"``. One edit runs at a time per model (a queue shows each
waiting user their position); every file the app writes (edits, records, uploads cached by Gradio, rendered
examples) goes under ``--out``. See docs/ui.md.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import IdseditError

INSTALL_HINT = 'the web UI needs gradio: pip install -e ".[ui]"'


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="PATH_OR_ID", default=None,
                   help="diffusers folder or hub id (default: the bundled mini prior)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="folder for everything the app writes (default: ./idsedit-ui/)")
    p.add_argument("--device", metavar="DEVICE", help="cpu, cuda, cuda:1, mps (default: the best available)")
    p.add_argument("--dtype", metavar="DTYPE", help="fp32, fp16 or bf16 (default: fp16 on GPU, fp32 on CPU)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow pickle (.bin/.ckpt) weights, which can run code; only for sources you trust")
    p.add_argument("--scenes", metavar="DIR", default=".",
                   help="where the Scene tab looks for scenes fitted by `idsedit scene fit` (default: .)")
    p.add_argument("--max-queue", type=int, default=16, metavar="N",
                   help="most requests waiting in the queue (default: 16)")


def check_gradio() -> None:
    """IdseditError with the install line when gradio is missing."""
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise IdseditError(INSTALL_HINT)


def prepare_out(out: str | os.PathLike | None) -> Path:
    """Create the output folder and point Gradio's upload/cache folder (and matplotlib's, which Gradio imports)
    inside it, before gradio is imported, so nothing is written outside it."""
    from .jobs import DEFAULT_OUT

    out_dir = Path(out or DEFAULT_OUT).expanduser().resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise IdseditError(f"--out {out_dir} is a file: give a folder")
    try:
        (out_dir / "cache").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise IdseditError(f"cannot create --out {out_dir}: {e.strerror or e}") from None
    os.environ["GRADIO_TEMP_DIR"] = str(out_dir / "cache")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("MPLCONFIGDIR", str(out_dir / "cache" / "matplotlib"))  # gradio imports matplotlib,
    #                                                                  which would write ~/.cache and ~/.config
    return out_dir


def check_port(host: str, port: int) -> None:
    """IdseditError if nothing can listen on host:port (in use, or an address this machine does not have)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise IdseditError(f"--host {host!r} is not an address of this machine ({e.strerror})") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            why = "is in use" if e.errno == 98 else f"cannot be used ({e.strerror})"
            raise IdseditError(f"port {port} on {host} {why}: choose another --port") from None


def create(prior, out_dir: str | os.PathLike, *, examples: bool = True, max_queue: int = 16,
           scenes: str | os.PathLike | None = "."):
    """(Blocks app with its queue set up, EditRunner) over a loaded prior; launch with ``app.launch(...)``.
    ``scenes``: where the Scene tab looks for fitted scenes (None: no Scene tab)."""
    out_dir = prepare_out(out_dir)
    from .app import build_app, make_examples
    from .jobs import EditRunner

    runner = EditRunner(prior, out_dir)
    ex = make_examples(out_dir, prior.resolution) if examples else []
    app = build_app(runner, examples=ex, model_name=getattr(prior, "name", "") or "bundled mini prior",
                    scenes_root=Path(scenes).expanduser().resolve() if scenes is not None else None)
    app.queue(default_concurrency_limit=1, max_size=max_queue)
    return app, runner


MAX_UPLOAD = "64mb"
"""Largest upload the server accepts (images larger than load_image's 40 MP limit are refused anyway)."""


def launch(app, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False, block: bool = True,
           on_ready=None):
    """Start serving; returns the local URL. ``block=False`` returns at once (tests); with ``block=True``
    ``on_ready(local_url, share_url)`` is called once the server listens (share_url None without --share)."""
    from .app import CSS

    _, url, share_url = app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=True,
                                   quiet=True, show_error=False, inbrowser=False, css=CSS, footer_links=["api"],
                                   max_file_size=MAX_UPLOAD)
    if block:
        if on_ready is not None:
            on_ready(url, share_url)
        app.block_thread()
    return url


def cli_main(args: argparse.Namespace) -> int:
    import warnings

    check_gradio()
    warnings.filterwarnings("ignore", category=ResourceWarning)   # asyncio's event-loop notes from the server
    if not 0 < args.port < 65536:
        raise IdseditError(f"--port must be between 1 and 65535, got {args.port}")
    if args.max_queue < 1:
        raise IdseditError(f"--max-queue must be >= 1, got {args.max_queue}")
    check_port(args.host, args.port)                       # before the model loads: fail in a second
    out_dir = prepare_out(args.out)
    from ..prior import check_device, load_prior, quiet_libraries

    check_device(args.device)
    print(f"loading {args.model or 'the bundled mini prior'} ...", flush=True)
    with quiet_libraries():
        prior = load_prior(args.model, device=args.device, dtype=args.dtype, allow_pickle=args.allow_pickle)
    app, _ = create(prior, out_dir, max_queue=args.max_queue, scenes=args.scenes)
    def ready(url, share_url):
        print(f"idsedit ui: {url} (Ctrl-C to stop); files go to {out_dir}", flush=True)
        if share_url:
            print(f"public link (anyone with it can use this app): {share_url}", flush=True)

    try:
        launch(app, host=args.host, port=args.port, share=args.share, block=True, on_ready=ready)
    except OSError as e:
        raise IdseditError(f"cannot listen on {args.host}:{args.port} ({' '.join(str(e).split())}): choose "
                           "another --port") from None
    except KeyboardInterrupt:
        print("stopped", flush=True)
    return 0
