"""The report's "Known facts" section: one sentence per fact worded from its measured numbers, and its figure.

Nothing here is hard-coded about what a model shows: every sentence is built from
:meth:`denoisefeat.analyses.facts.KnownFacts.summary` and the analyses' own outputs, and says whether
this model shows the fact (its interval above 0), does not (the interval includes or lies below 0)
or cannot be measured (no UNet decoder; one block size).
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

from denoisefeat.viz.style import BAND_COLORS, apply_style, color_for, escape

__all__ = ["fact_figures", "fact_sentences", "facts_html"]


def _interval(row, fmt: str = "+.3g") -> str:
    return f"{row['estimate']:{fmt}} [{row['ci_low']:{fmt}}, {row['ci_high']:{fmt}}]"


def _verdict(row) -> str:
    if row["holds"] is None:
        return "It cannot be measured on this model."
    if row["holds"]:
        return f"This model shows it (p = {row['p']:.2g})."
    where = "includes 0" if row["ci_high"] >= 0 else "lies below 0"
    return f"This model does not show it: the interval {where} (p = {row['p']:.2g})."


def _step(value: float) -> str:
    return "after the last step" if math.isinf(value) else f"at step {value:.3g}"


def _coarse_to_fine(facts, row) -> str:
    ds = facts.band_snr
    first, last = ds.attrs["first_band"], ds.attrs["last_band"]
    crossing = ds["crossing"].sel(source="measured", stat="estimate")
    implied = ds["crossing"].sel(source="scheduler", stat="estimate")
    later = ("it is still below 1 at the last step's x_t" if math.isinf(row["estimate"])
             else f"{_interval(row)} steps later")
    return (f"Measured on x_t, the {escape(last)} band reaches SNR 1 {_step(float(crossing.sel(band=last)))} and "
            f"the {escape(first)} band {_step(float(crossing.sel(band=first)))}: {later}. The schedule with this "
            f"model's band power implies {_step(float(implied.sel(band=last)))} and "
            f"{_step(float(implied.sel(band=first)))}.")


def _skips(facts, row) -> str:
    ds = facts.skip_spectrum
    if ds is None:
        return "The denoiser has no UNet decoder, so there are no skip connections to compare."
    high = ds["share"].isel(band=-1).mean(("sample", "layer", "step"))
    return (f"The {escape(ds.attrs['high_band'])} band holds {float(high.sel(part='skip')):.1%} of the skip inputs' "
            f"energy and {float(high.sel(part='backbone')):.1%} of the backbone's, over "
            f"{ds.sizes['layer']} up-block resnets and {ds.sizes['step']} steps: skip minus backbone "
            f"{_interval(row)}.")


def _similarity(facts, row) -> str:
    ds = facts.step_similarity
    if not ds.attrs["deep"]:
        return "Every recorded block has the same resolution, so deep and high-resolution blocks cannot be compared."
    late = ds["late"].mean("sample")
    deep, high = ds.attrs["deep"], ds.attrs["high_resolution"]
    return (f"In the last half of the steps the cosine similarity of adjacent steps is "
            f"{float(late.sel(layer=deep).mean()):.4f} for the deep blocks ({escape(', '.join(deep))}) and "
            f"{float(late.sel(layer=high).mean()):.4f} for the high-resolution ones ({escape(', '.join(high))}): "
            f"deep minus high-resolution {_interval(row)}.")


def _timing(facts, row) -> str:
    summary = facts.perturbation_timing.attrs["summary"]
    factor = _interval({k: math.exp(row[k]) for k in ("estimate", "ci_low", "ci_high")}, ".3g")
    return (f"Noise injected into x_t at step {summary['first_step']} vs step {summary['last_step']}: the final "
            f"image's high-band over low-band relative error grows by a factor of {factor} (log ratio "
            f"{_interval(row)}).")


_WORDING = {"coarse_to_fine": _coarse_to_fine, "skip_high_frequency": _skips, "deep_blocks_settle": _similarity,
            "late_changes_detail": _timing}


def fact_sentences(facts) -> dict[str, str]:
    """Each fact's claim, what this model measured and the verdict, as escaped HTML-safe text.

    Parameters
    ----------
    facts : denoisefeat.analyses.facts.KnownFacts

    Returns
    -------
    dict of str to str
        ``{fact: sentence}`` in report order.
    """
    sentences = {}
    for row in facts.summary().to_dict("records"):
        measured = _WORDING[row["fact"]](facts, row)
        sentences[row["fact"]] = f"{escape(row['claim'])} {measured} {_verdict(row)}"
    return sentences


def facts_html(facts) -> str:
    """The section's list: one ``<li>`` per fact with its numbers in ``data-`` attributes (for tests and tools).

    Parameters
    ----------
    facts : denoisefeat.analyses.facts.KnownFacts

    Returns
    -------
    str
        ``<ul class="dft-facts">`` with ``data-fact``, ``data-holds``, ``data-estimate``,
        ``data-ci-low``, ``data-ci-high`` and ``data-p`` on each item (``repr`` of the floats).
    """
    summary = facts.summary().set_index("fact")
    items = []
    for key, sentence in fact_sentences(facts).items():
        row = summary.loc[key]
        data = " ".join(f'data-{name.replace("_", "-")}="{float(row[name])!r}"'
                        for name in ("estimate", "ci_low", "ci_high", "p"))
        items.append(f'<li data-fact="{escape(key)}" data-holds="{row["holds"]}" {data}>{sentence}</li>')
    return '<ul class="dft-facts">' + "".join(items) + "</ul>"


def _errors(center, low, high) -> dict:
    center, low, high = (np.asarray(v, dtype=float) for v in (center, low, high))
    return {"type": "data", "symmetric": False, "array": high - center, "arrayminus": center - low}


def _band_snr_figure(ds) -> go.Figure:
    fig = go.Figure()
    for band in ds["band"].values:
        color = BAND_COLORS.get(str(band))
        fig.add_trace(go.Scatter(x=ds["step"].values, y=ds["snr_pooled"].sel(band=band).values, name=f"{band} measured",
                                 mode="lines+markers", line={"color": color}))
        fig.add_trace(go.Scatter(x=ds["step"].values, y=ds["snr_scheduler"].sel(band=band).values,
                                 name=f"{band} schedule", mode="lines", line={"color": color, "dash": "dash"}))
    fig.add_hline(y=1.0, line={"color": "#777", "width": 1})
    apply_style(fig)
    fig.update_layout(title_text="Per-band SNR of x_t", xaxis_title="step", yaxis={"title": "SNR", "type": "log"})
    return fig


def _skip_figure(ds) -> go.Figure:
    share = ds["share"].isel(band=-1).mean("step")  # (sample, layer, part)
    fig = go.Figure()
    for i, part in enumerate(ds["part"].values):
        values = share.sel(part=part)
        mean = values.mean("sample").values
        sd = values.std("sample").values
        fig.add_trace(go.Bar(x=ds["layer"].values, y=mean, name=str(part), marker_color=color_for(i),
                             error_y={"type": "data", "array": sd}))
    apply_style(fig)
    fig.update_layout(title_text=f"{ds.attrs['high_band']}-band share of each up-block resnet's input", barmode="group",
                      xaxis_title="resnet", yaxis_title="share of the part's energy")
    return fig


def _similarity_figure(ds) -> go.Figure:
    fig = go.Figure()
    for i, layer in enumerate(ds["layer"].values):
        sim = ds["similarity"].sel(layer=layer)
        fig.add_trace(go.Scatter(
            x=ds["step"].values, y=sim.sel(stat="estimate").values,
            name=f"{layer} ({int(ds['size'].sel(layer=layer))} px)",
            mode="lines+markers", line={"color": color_for(i)},
            error_y=_errors(sim.sel(stat="estimate"), sim.sel(stat="ci_low"), sim.sel(stat="ci_high"))))
    apply_style(fig)
    fig.update_layout(title_text="Cosine similarity of each block's output with the step before",
                      xaxis_title="step", yaxis_title="cosine similarity")
    return fig


def _timing_figure(table) -> go.Figure:
    fig = go.Figure()
    bands = table[table["feature"].str.startswith("band_error:")]
    for i, (feature, rows) in enumerate(bands.groupby("feature", sort=False)):
        band = feature.split(":", 1)[1]
        fig.add_trace(go.Scatter(x=rows["step_start"], y=rows["effect"], name=band, mode="lines+markers",
                                 line={"color": BAND_COLORS.get(band, color_for(i))},
                                 error_y=_errors(rows["effect"], rows["ci_low"], rows["ci_high"])))
    apply_style(fig)
    fig.update_layout(title_text="Change of the final image per band, by the step of the perturbation",
                      xaxis_title="perturbed step k", yaxis={"title": "relative band error", "type": "log"})
    return fig


def fact_figures(facts) -> list[tuple[go.Figure, str, str]]:
    """The section's figures as ``(figure, name, caption)``, one per fact that could be measured.

    Parameters
    ----------
    facts : denoisefeat.analyses.facts.KnownFacts

    Returns
    -------
    list of (plotly.graph_objects.Figure, str, str)
    """
    out = [(_band_snr_figure(facts.band_snr), "facts_band_snr",
            ("Per-band SNR of x_t over the steps: measured on the run's x_t (solid, pooled over samples and "
            "channels) and implied by the schedule with the band power of the final samples (dashed); the grey line "
            "is SNR = 1."))]
    if facts.skip_spectrum is not None:
        out.append((_skip_figure(facts.skip_spectrum), "facts_skip_spectrum",
                    ("Share of the high band in the energy of the backbone and the skip part of each up-block resnet's "
                    "input (mean over steps; bars: mean over samples ± sd).")))
    out.append((_similarity_figure(facts.step_similarity), "facts_step_similarity",
                ("Cosine similarity of each recorded block's output at step s with step s − 1 (mean over samples, "
                f"{1 - facts.step_similarity.attrs['alpha']:.0%} bootstrap interval); the legend gives each block's "
                "positions.")))
    out.append((_timing_figure(facts.perturbation_timing), "facts_perturbation_timing",
                ("Relative error of each band of the final image when x_t is perturbed at step k (noise of "
                f"{facts.perturbation_timing['strength'].iloc[0]:g}× x_t's noise scale; mean over samples with the "
                "t-interval).")))
    return out
