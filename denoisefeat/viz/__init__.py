"""Plotly figures of runs, feature profiles and attribution results, and a self-contained HTML report.

Every builder returns a :class:`plotly.graph_objects.Figure` (it never shows it) and takes its
options as keywords, among them ``size`` (``"screen"``, or ``"column"``/``"page"`` for a paper; see
:mod:`denoisefeat.viz.style`)::

    import denoisefeat as dft
    run = dft.open_run("runs/toy.zarr")
    dft.viz.step_image_grid(run).write_html("x0.html")
    dft.viz.build_report(run, "report.html")

Modules: :mod:`~denoisefeat.viz.trajectory` (x̂0 over steps, band-pass images, spectra),
:mod:`~denoisefeat.viz.profiles` (feature emergence, runs compared), :mod:`~denoisefeat.viz.attribution`
(layer × step heatmaps, probe selectivity, correlations), :mod:`~denoisefeat.viz.selectivity`
(the metric × factor selectivity matrix), :mod:`~denoisefeat.viz.activations`,
:mod:`~denoisefeat.viz.report`, :mod:`~denoisefeat.viz.export` (PNG/SVG/PDF via kaleido) and
:mod:`~denoisefeat.viz.style`.
"""

from denoisefeat.viz.activations import activation_change, activation_change_heatmap
from denoisefeat.viz.attribution import attribution_heatmap, correlation_heatmap, selectivity_map
from denoisefeat.viz.export import StaticExportError, write_static
from denoisefeat.viz.profiles import compare_runs, emergence_curves
from denoisefeat.viz.report import build_report
from denoisefeat.viz.selectivity import selectivity_heatmap
from denoisefeat.viz.style import apply_style
from denoisefeat.viz.trajectory import band_pass_grid, rapsd_curves, rapsd_heatmap, step_image_grid, wavelet_heatmap

__all__ = [
    "StaticExportError",
    "activation_change",
    "activation_change_heatmap",
    "apply_style",
    "attribution_heatmap",
    "band_pass_grid",
    "build_report",
    "compare_runs",
    "correlation_heatmap",
    "emergence_curves",
    "rapsd_curves",
    "rapsd_heatmap",
    "selectivity_heatmap",
    "selectivity_map",
    "step_image_grid",
    "wavelet_heatmap",
    "write_static",
]
