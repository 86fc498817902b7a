"""denoisefeat: how and where a diffusion model builds an image.

The data flow runs one way::

    models -> trajectory / hooks -> store -> frequency / metrics -> temporal / probes / analyses -> viz
"""

from denoisefeat._version import __version__

__all__ = ["__version__"]
