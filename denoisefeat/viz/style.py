"""One look for every figure: a colour-blind-safe palette, axis titles with units, and sizes.

Colours
-------
Categorical colours are the Okabe–Ito palette [1]_, distinguishable under the common forms of
colour blindness and in greyscale print.  Frequency bands always get the same colours
(:data:`BAND_COLORS`).  Continuous data uses ``"Viridis"`` (perceptually uniform, colour-blind
safe); signed data (effects, band-pass images) uses a diverging scale centred on zero.

Sizes
-----
:data:`FIGURE_SIZES` holds a paper column (3.5 in), a full page width (7 in) and a screen size;
sizes are in CSS pixels at :data:`PX_PER_INCH` (96, as browsers and kaleido count them), so a
static export at ``scale=dpi / 96`` gives a figure of the stated width in inches at ``dpi``.

References
----------
.. [1] M. Okabe and K. Ito, "Color Universal Design (CUD): how to make figures and
   presentations that are friendly to colorblind people", 2008.
"""

from __future__ import annotations

import html
from types import MappingProxyType

import plotly.graph_objects as go

__all__ = [
    "AXIS_TITLES",
    "BAND_COLORS",
    "DIVERGING",
    "FIGURE_SIZES",
    "OKABE_ITO",
    "PX_PER_INCH",
    "SEQUENTIAL",
    "apply_style",
    "axis_title",
    "color_for",
    "escape",
    "template",
]

#: The Okabe–Ito palette, in its usual order (black last: it is kept for references).
OKABE_ITO: tuple[str, ...] = (
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#009E73",  # bluish green
    "#F0E442",  # yellow
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#000000",  # black
)

#: Fixed colours of the default frequency bands (coarse = blue, fine = vermillion).
BAND_COLORS = MappingProxyType({"low": "#0072B2", "mid": "#009E73", "high": "#D55E00"})

#: Continuous colour scale for magnitudes (power, energy, change).
SEQUENTIAL = "Viridis"

#: Diverging colour scale for signed values (effects, band-pass images); use with ``zmid=0``.
DIVERGING = "RdBu_r"

#: CSS pixels per inch (browsers and kaleido).
PX_PER_INCH = 96

#: Figure sizes: width and height in CSS pixels (``None``: follow the page) and font size in pt.
FIGURE_SIZES = MappingProxyType({
    "column": MappingProxyType({"width": round(3.5 * PX_PER_INCH), "height": round(2.6 * PX_PER_INCH), "font": 9}),
    "page": MappingProxyType({"width": round(7.0 * PX_PER_INCH), "height": round(3.5 * PX_PER_INCH), "font": 10}),
    "screen": MappingProxyType({"width": None, "height": 460, "font": 13}),
})

#: Axis titles with units, by quantity.
AXIS_TITLES = MappingProxyType({
    "step": "denoising step",
    "t/T": "normalised time t/T",
    "timestep": "scheduler timestep",
    "freq": "frequency (cycles/pixel)",
    "power": "power (mean per FFT bin)",
    "log_power": "log10 power",
    "progress": "normalised progress (0 = first step, 1 = final)",
    "layer": "layer (network order)",
    "window": "step window [start, stop)",
    "subband": "wavelet subband (level, orientation)",
    "effect": "effect",
    "selectivity": "probe selectivity (score − control)",
    "relative_change": "relative change ‖aₛ − aₛ₋₁‖ / ‖aₛ₋₁‖",
    "correlation": "correlation",
})


def axis_title(quantity: str) -> str:
    """The axis title (with unit) of ``quantity``.

    Parameters
    ----------
    quantity : str
        A key of :data:`AXIS_TITLES`.

    Returns
    -------
    str
    """
    try:
        return AXIS_TITLES[quantity]
    except KeyError:
        raise ValueError(f"unknown quantity {quantity!r}; known: {', '.join(AXIS_TITLES)}") from None


def color_for(index: int) -> str:
    """The ``index``-th categorical colour (cycling through :data:`OKABE_ITO`).

    Parameters
    ----------
    index : int

    Returns
    -------
    str
        A ``#rrggbb`` colour.
    """
    return OKABE_ITO[int(index) % len(OKABE_ITO)]


def escape(text) -> str:
    """``str(text)`` with ``&``, ``<``, ``>`` and quotes escaped, for HTML and plotly's text.

    Plotly renders a subset of HTML in titles, labels and hover text; escaping makes a user's
    string (a prompt, a label, a model id) show as typed instead of being interpreted.

    Parameters
    ----------
    text : object

    Returns
    -------
    str
    """
    return html.escape(str(text), quote=True)


def template() -> go.layout.Template:
    """The plotly template of denoisefeat's figures (white background, Okabe–Ito colourway).

    Returns
    -------
    plotly.graph_objects.layout.Template
    """
    axis = dict(showline=True, linecolor="#444", ticks="outside", tickcolor="#444", mirror=False,
                showgrid=True, gridcolor="#e5e5e5", zeroline=False, automargin=True)
    return go.layout.Template(layout=dict(
        colorway=list(OKABE_ITO),
        font=dict(family="Arial, Helvetica, sans-serif", color="#222"),
        paper_bgcolor="white",
        plot_bgcolor="white",
        xaxis=axis,
        yaxis=axis,
        legend=dict(bgcolor="rgba(255,255,255,0.8)"),
        hoverlabel=dict(font=dict(family="Arial, Helvetica, sans-serif")),
        margin=dict(l=60, r=20, t=50, b=50),
        colorscale=dict(sequential=SEQUENTIAL, diverging=DIVERGING),
    ))


def apply_style(fig: go.Figure, *, size: str = "screen") -> go.Figure:
    """Give ``fig`` denoisefeat's template and one of :data:`FIGURE_SIZES` (in place).

    Parameters
    ----------
    fig : plotly.graph_objects.Figure
    size : {"screen", "column", "page"}
        ``"column"`` is a 3.5 in paper column, ``"page"`` a 7 in text width, ``"screen"`` follows the
        width of the page it is shown in.

    Returns
    -------
    plotly.graph_objects.Figure
        ``fig`` itself.
    """
    if size not in FIGURE_SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(FIGURE_SIZES)}")
    spec = FIGURE_SIZES[size]
    fig.update_layout(template=template(), height=spec["height"], width=spec["width"],
                      font=dict(size=spec["font"]), autosize=spec["width"] is None)
    return fig
