"""idsedit: identity-preserving, text-driven editing by score distillation.

Python API (the CLI and UI are thin layers over it)::

    from idsedit import load_prior, edit_image, EditConfig
    prior = load_prior()                       # bundled mini prior, or load_prior("path/or/hub-id")
    result = edit_image(prior, image, "a red cube", "a blue cube", EditConfig(method="ids"))
    result.image.save("edited.png")
"""

__version__ = "0.1.0"

__all__ = ["load_prior", "edit_image", "invert_image", "EditConfig", "DistillConfig", "IdseditError"]


def __getattr__(name):  # lazy: `import idsedit` must not import torch/diffusers
    if name == "load_prior":
        from .prior import load_prior

        return load_prior
    if name in ("edit_image", "invert_image", "EditConfig"):
        from . import edit2d

        return getattr(edit2d, name)
    if name == "DistillConfig":
        from .distill import DistillConfig

        return DistillConfig
    if name == "IdseditError":
        from .errors import IdseditError

        return IdseditError
    raise AttributeError(f"module 'idsedit' has no attribute {name!r}")
