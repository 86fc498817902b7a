"""``denoisefeat view STORE``: a local web app that browses a whole run store (Dash, the ``viewer`` extra).

Pick any sample, step, band, feature, layer; scrub the trajectory; read profile curves with their
confidence bands and the attribution heatmaps, with click-through from a cell to the chosen sample's
clean and ablated (or patched) final images, which a scan keeps with ``keep_images``
(:class:`denoisefeat.analyses.table.CellImages`; the page says so when a table keeps none).  The
store is read lazily (only the slices shown) and never written; the app binds to 127.0.0.1 unless
told otherwise and serves nothing but its own page.

Two ways to look at a run: the static report (:func:`denoisefeat.viz.build_report`, one bounded
HTML file to share) and this viewer (every sample, on your machine).
"""

from __future__ import annotations

import ipaddress

from denoisefeat.viewer.app import VIEWER_FRAMES, create_app

__all__ = ["VIEWER_FRAMES", "create_app", "serve"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost``, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(store, *, host: str = "127.0.0.1", port: int = 8050) -> None:
    """Open ``store`` and serve its viewer until interrupted (Ctrl-C).

    Parameters
    ----------
    store : str or path
        A denoisefeat run store (refused with the CLI's message when it is not one or is damaged).
    host : str
        Interface to bind; the default is loopback only.  Anything else exposes the store to the network.
    port : int
        TCP port (0: any free one).
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer in 0–65535, got {port!r}")
    app = create_app(store)
    app.run(host=host, port=port, debug=False)
