"""The plotly.js a self-contained page embeds: the cartesian partial bundle when it can draw the page.

plotly.py embeds the whole of plotly.js (≈ 4.6 MB, every trace type: 3-D, maps, tables …).
denoisefeat's figures use cartesian traces only (``scatter``, ``heatmap``, ``image``), which
plotly.js's official *cartesian* partial bundle (``plotly.js-cartesian-dist-min``, ≈ 1.4 MB, MIT
licence: ``assets/LICENSE.plotly.js.txt``) draws with the same code.  A page embeds it when it is
the very version plotly.py ships (figures are serialised for that version) and every trace on the
page is one it draws; otherwise plotly.py's full bundle.  Upgrading plotly therefore falls back
to the full bundle until ``assets/`` is refreshed (``npm pack plotly.js-cartesian-dist-min@<version>``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

__all__ = ["CARTESIAN_TRACES", "VENDORED_VERSION", "plotly_js"]

#: The plotly.js version of the vendored cartesian bundle.
VENDORED_VERSION = "4.1.1"

#: The trace types the cartesian partial bundle registers (plotly.js's ``lib/index-cartesian.js``).
CARTESIAN_TRACES = frozenset({"bar", "box", "contour", "heatmap", "histogram", "histogram2d",
                              "histogram2dcontour", "image", "pie", "scatter", "scatterternary", "violin"})

_ASSET = Path(__file__).with_name("assets") / f"plotly-cartesian-{VENDORED_VERSION}.min.js"


@functools.cache
def _cartesian() -> str | None:
    from plotly.offline import get_plotlyjs_version

    if get_plotlyjs_version() != VENDORED_VERSION or not _ASSET.is_file():
        return None
    return _ASSET.read_text(encoding="utf-8")


def plotly_js(trace_types: Iterable[str]) -> str:
    """The plotly.js source to embed in a page that draws ``trace_types``.

    Parameters
    ----------
    trace_types : iterable of str
        The ``type`` of every trace on the page (``"scatter"``, ``"heatmap"`` …).

    Returns
    -------
    str
        The cartesian partial bundle when it draws them all and matches plotly.py's plotly.js
        version; plotly.py's full bundle otherwise.
    """
    from plotly.offline import get_plotlyjs

    cartesian = _cartesian()
    if cartesian is not None and set(trace_types) <= CARTESIAN_TRACES:
        return cartesian
    return get_plotlyjs()
