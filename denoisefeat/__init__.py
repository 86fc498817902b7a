"""denoisefeat: how and where a diffusion model builds an image.

The data flow runs one way::

    models -> trajectory / hooks -> store -> frequency / metrics -> temporal / probes / analyses -> viz

The top-level names are imported lazily, so ``import denoisefeat`` stays cheap and subpackages
(``denoisefeat.frequency``) can be used without loading torch or diffusers.
"""

import importlib

from denoisefeat._version import __version__

_LAZY = {
    "load_pipeline": "denoisefeat.models",
    "trace": "denoisefeat.trajectory",
    "open_run": "denoisefeat.store",
    "Run": "denoisefeat.store",
}
_SUBMODULES = (
    "steps", "models", "pipelines", "trajectory", "store", "schedulers", "frequency", "metrics", "features", "temporal",
    "hooks", "probes", "analyses", "viz", "jobs", "tiny", "toy",
)

__all__ = ["__version__", *_LAZY, *_SUBMODULES]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"denoisefeat.{name}")
    raise AttributeError(f"module 'denoisefeat' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
