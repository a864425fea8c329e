"""User-facing errors: one line that names the problem and the fix.

Every error a user can cause (bad file, bad prompt, bad model folder, bad flag)
is raised as :class:`IdseditError`; the CLI prints ``error: <message>`` and
exits non-zero without a traceback. Anything else is a bug and keeps its
traceback.
"""


class IdseditError(Exception):
    """An error caused by the user's input, shown as one line without a traceback."""


class ModelLoadError(IdseditError):
    """A model name or folder that cannot be loaded (missing, incomplete, pickle-only, offline)."""


class InputImageError(IdseditError):
    """An input image that cannot be read or used."""
