"""The ``idsedit`` command line: routing only. Each command lives in its own module with ``add_arguments(parser)``
and ``cli_main(args)``, registered in :data:`PLUGINS` and imported only when selected:

    idsedit edit cat.png --source "a cat" --target "a pig" --method ids     # idsedit.edit_cli
    idsedit bench | demo | train-mini | eval | compare | scene | ui         # their own modules

Error policy (for every command): anything the user can cause (bad file, bad flag value, missing model) is an
``IdseditError`` and prints ``error: <one line>`` with exit code 1 and no traceback; so does an OSError from a
command (disk full, permission denied) and running out of memory; argparse usage errors exit 2; Ctrl-C prints
``interrupted`` and exits 130. Warnings print as ``warning: <one line>``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from contextlib import contextmanager
from typing import Iterator, Sequence

from . import __version__
from .errors import IdseditError

PLUGINS = {
    "edit": ("idsedit.edit_cli", "edit images towards a target prompt (an image, a folder or a manifest)"),
    "bench": ("idsedit.bench", "benchmark the methods on the shapes world (table, CSV/JSON, figure)"),
    "demo": ("idsedit.demo", "a quick demonstration edit with the bundled mini prior"),
    "train-mini": ("idsedit.mini.train", "train the bundled mini prior on the shapes world"),
    "eval": ("idsedit.evaluate", "evaluate edits (success, identity, invertibility)"),
    "compare": ("idsedit.evaluate.compare", "two evaluations of the same cases, paired: B - A with bootstrap CIs"),
    "scene": ("idsedit.scene.cli", "fit, edit and render radiance-field scenes (NeRF)"),
    "ui": ("idsedit.ui", "a local web app for editing (Gradio)"),
}
"""Every command: name -> (module with add_arguments(parser) and cli_main(args), help)."""


# --------------------------------------------------------------------------------------------------- parser
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
    parser.subcommands = {}                          # name -> sub-parser (argparse keeps its own private)
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
    """Run a command: its module's ``cli_main(args)`` (None counts as success). An OSError (disk full, permission
    denied, ...) or running out of memory becomes an IdseditError: one line, no traceback."""
    try:
        code = args.plugin_module.cli_main(args)
    except BrokenPipeError:
        raise
    except Exception as e:                           # noqa: BLE001  only resource errors are mapped
        if is_resource_error(e):
            raise IdseditError(resource_message(e)) from None
        raise
    return 0 if code is None else int(code)


def is_resource_error(e: BaseException) -> bool:
    """Out of (GPU) memory, or an OS error (disk full, permission denied): the user can fix these."""
    return isinstance(e, (MemoryError, OSError)) or type(e).__name__ == "OutOfMemoryError"


def resource_message(e: BaseException) -> str:
    """One line for a resource error: what happened, on which file, what to do."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return ("out of memory: use a smaller image, --dtype fp16 on a GPU, or another --device "
                f"({_one_line(e)[:120]})")
    if isinstance(e, OSError):
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        what = e.strerror or _one_line(e)
        return f"could not read or write{where}: {what}: free disk space, check permissions or choose another --out"
    return f"unexpected {type(e).__name__}: {_one_line(e)[:200]} (a bug: please report it)"


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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
