"""Static export of figures (PNG, SVG, PDF …) through kaleido, the optional ``static`` extra."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import plotly.graph_objects as go

from denoisefeat.viz.style import FIGURE_SIZES, PX_PER_INCH

__all__ = ["FORMATS", "StaticExportError", "write_static"]

#: Formats kaleido writes.
FORMATS = ("png", "svg", "pdf", "jpg", "webp")


class StaticExportError(RuntimeError):
    """Static export is impossible here: kaleido or a Chrome/Chromium browser is missing."""


def check_formats(formats) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = (formats,)
    formats = tuple(str(f).lower().lstrip(".") for f in formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"unknown static formats {unknown or list(formats)}; choose from {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(formats))


def write_static(figures: Sequence[go.Figure], directory, names: Sequence[str], *, formats=("png",),
                 size: str = "page", dpi: int = 300) -> list[Path]:
    """Write each figure to ``directory/<name>.<format>`` for every format, in one browser session.

    Parameters
    ----------
    figures : sequence of plotly.graph_objects.Figure
    directory : str or path
        Created if missing.
    names : sequence of str
        File stem of each figure.
    formats : str or sequence of {"png", "svg", "pdf", "jpg", "webp"}
    size : {"column", "page", "screen"}
        Width and font size given to figures whose width follows the page (their height is kept);
        see :data:`denoisefeat.viz.style.FIGURE_SIZES` (``"screen"``: 960 px).
    dpi : int
        Resolution of raster formats: the scale is ``dpi / 96``.

    Returns
    -------
    list of pathlib.Path
        The files written, figure by figure, format by format.

    Raises
    ------
    StaticExportError
        kaleido is not installed (``pip install 'denoisefeat[static]'``) or finds no Chrome/Chromium.

    Notes
    -----
    A still image shows a figure as it first appears (the last step of a step slider, the first
    entry of each dropdown); sliders, buttons and menus are left out.
    """
    formats = check_formats(formats)
    if len(figures) != len(names):
        raise ValueError(f"{len(figures)} figures but {len(names)} names")
    if size not in FIGURE_SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(FIGURE_SIZES)}")
    if importlib.util.find_spec("kaleido") is None:
        raise StaticExportError(
            "static export needs kaleido (>= 1) and a Chrome or Chromium browser: "
            "pip install 'denoisefeat[static]' (and e.g. apt-get install chromium)"
        )
    import plotly.io as pio

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    default_width = FIGURE_SIZES[size]["width"] or 960
    batch_figs, batch_files, batch_formats, widths, heights, scales = [], [], [], [], [], []
    for original, name in zip(figures, names, strict=True):
        fig = go.Figure(original)  # a copy: a still image has no use for sliders, buttons and menus
        fig.layout.sliders, fig.layout.updatemenus = (), ()
        if fig.layout.width is None:
            fig.update_layout(font_size=FIGURE_SIZES[size]["font"])
        width = fig.layout.width or default_width
        height = fig.layout.height or FIGURE_SIZES["screen"]["height"]
        for fmt in formats:
            batch_figs.append(fig)
            batch_files.append(directory / f"{name}.{fmt}")
            batch_formats.append(fmt)
            widths.append(int(width))
            heights.append(int(height))
            scales.append(dpi / PX_PER_INCH if fmt in ("png", "jpg", "webp") else 1)
    try:
        pio.write_images(batch_figs, batch_files, format=batch_formats, width=widths, height=heights, scale=scales)
    except RuntimeError as error:
        if "chrome" in str(error).lower():
            raise StaticExportError(
                "kaleido found no Chrome/Chromium browser for static export: install one (Debian: "
                "apt-get install chromium; or run `plotly_get_chrome`), or set BROWSER_PATH to its executable"
            ) from error
        raise
    return batch_files
