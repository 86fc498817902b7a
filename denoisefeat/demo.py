"""The whole study on the embedded toy model, end to end: what ``denoisefeat demo`` runs.

:func:`run_demo` generates DiffShapes images with the toy model while recording every top-level
UNet block, computes the per-step features and their frequency bands, the temporal profiles, linear
probes of the recorded blocks and an ablation scan over blocks × step windows, writes everything
into one store with an HTML report, and returns a :class:`DemoSummary` whose text says which blocks
and steps drive which feature, read from the stored attribution table (:func:`summarize`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["DEMO_FEATURES", "DemoSettings", "DemoSummary", "QUICK", "FULL", "run_demo", "summarize"]

def _headline_metrics() -> dict[str, str]:
    from denoisefeat.metrics import FEATURE_GROUPS

    return {family: names[0] for family, names in FEATURE_GROUPS.items()}


#: What the ablation scan measures: the first (selective) metric of each feature group,
#: :data:`denoisefeat.metrics.FEATURE_GROUPS`.
DEMO_FEATURES: dict[str, str] = _headline_metrics()
#: Feature families the known facts call fine (made late) and coarse (made early).
_FINE, _COARSE = ("texture", "edges"), ("shape", "color")
_BLOCKS = ("down_blocks.*", "mid_block", "up_blocks.*")
_KEPT_IMAGES = 2  # the ablated final images of the first samples, for the report's and the viewer's click-through


@dataclass(frozen=True)
class DemoSettings:
    """The size of a demo run.

    Attributes
    ----------
    samples : int
        Generated images (conditions cycle over shapes, colours and textures).
    steps : int
        DDIM steps.
    windows : int
        Step windows of the probes and the ablation scan (the same windows, :func:`denoisefeat.steps.step_windows`).
    ablation_samples : int
        The first samples, ablated.
    n_boot : int
        Bootstrap resamples of every CI.
    """

    samples: int
    steps: int
    windows: int
    ablation_samples: int
    n_boot: int


#: ``denoisefeat demo --quick``: about two minutes on two CPU cores (kept lean: the suite runs it).
QUICK = DemoSettings(samples=24, steps=16, windows=3, ablation_samples=6, n_boot=500)
#: ``denoisefeat demo``: about five minutes on two CPU cores.
FULL = DemoSettings(samples=48, steps=30, windows=5, ablation_samples=16, n_boot=1000)


def demo_labels(n: int) -> list[int]:
    """``n`` toy-model conditions that vary shape, colour and texture together (every value used)."""
    from denoisefeat.toy.diffshapes import COLORS, SHAPES, TEXTURES, condition_label

    return [condition_label(SHAPES[i % len(SHAPES)], COLORS[(i // len(SHAPES) + i) % len(COLORS)],
                            TEXTURES[(i // 2) % len(TEXTURES)]) for i in range(n)]


@dataclass
class DemoSummary:
    """What the demo found (see :func:`summarize`).

    Attributes
    ----------
    store : Path
        The run store (trajectory, activations, ``features/``, ``attribution/``).
    report : Path
        The HTML report.
    drivers : pandas.DataFrame
        Per feature family: the block and step window whose ablation moved its metric most
        (:func:`~denoisefeat.analyses.table.rank` by the standardised effect: significant rows
        first), with the effect, its standardised value, specificity, CI and adjusted p.
    specific : pandas.DataFrame
        Per feature family: the most *specific* block and step window (``rank(by="specificity")``):
        the cell that moves this feature most relative to how much it moves the whole image.
    windows : pandas.DataFrame
        Per feature family: the step window whose ablation moves its metric most across blocks
        (largest median over blocks of ``|effect_std|``): when the feature is made, whichever block.
    facts : pandas.DataFrame
        Per feature family: the median over blocks of ``|effect_std|`` in the last window over that
        in the first (``late_over_early``); the known fact is that texture and edges have larger
        ratios than shape and colour (``DemoSummary.fine_made_late``).
    bands : pandas.DataFrame
        Median emergence and stabilisation step of the low, mid and high frequency bands.
    probes : pandas.DataFrame
        Per probe target: the most selective block and window.
    seconds : dict of str to float
        Wall time of each stage.
    """

    store: Path
    report: Path
    drivers: pd.DataFrame
    specific: pd.DataFrame
    windows: pd.DataFrame
    facts: pd.DataFrame
    bands: pd.DataFrame
    probes: pd.DataFrame
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def fine_made_late(self) -> bool:
        """Whether late windows move texture and edges relatively more than shape and colour."""
        ratio = self.facts.set_index("family")["late_over_early"]
        fine = [ratio[f] for f in _FINE if f in ratio]
        coarse = [ratio[f] for f in _COARSE if f in ratio]
        return bool(fine and coarse and min(fine) > max(coarse))

    def text(self) -> str:
        """The summary as plain text: one line per finding, numbers included."""
        lines = ["Frequency bands of x̂0 (median step over samples; emergence → stabilisation):"]
        for row in self.bands.itertuples():
            lines.append(f"  {row.band:<5} emerges at step {row.emergence:g}, stabilises at step {row.stabilisation:g}")
        lines.append("Which block and steps move each feature most (ablation scan, mean change of the final image; "
                     "std: in between-sample units):")
        for row in self.drivers.itertuples():
            lines.append(_driver_line(row))
        lines.append("Which block and steps drive each feature most specifically (its std. change over the whole "
                     "image's):")
        for row in self.specific.itertuples():
            lines.append(_driver_line(row))
        lines.append("When each feature is made (the step window whose ablation matters most, median over blocks):")
        for row in self.windows.itertuples():
            lines.append(f"  {row.family:<7} {row.feature}: steps {row.step_start}-{row.step_stop} "
                         f"(median |std. change| {row.median_abs_effect:.3g} vs {row.other_windows:.3g} in the other "
                         "windows)")
        ratios = ", ".join(f"{row.family} {row.late_over_early:.2g}" for row in self.facts.itertuples())
        verdict = "yes" if self.fine_made_late else "no"
        lines.append(f"Known fact, late steps make texture and edges: {verdict} (last-window over first-window "
                     f"median |std. change|: {ratios})")
        if len(self.probes):
            lines.append("Where a linear probe reads each target best (selectivity over the x_t control):")
            for row in self.probes.itertuples():
                lines.append(f"  {row.feature}: {row.layer} at steps {row.step_start}-{row.step_stop}, "
                             f"selectivity {row.effect:+.3g} [{row.ci_low:+.3g}, {row.ci_high:+.3g}]")
        lines.append(f"Store: {self.store}")
        lines.append(f"Report: {self.report}")
        return "\n".join(lines)


def _driver_line(row) -> str:
    sig = "" if row.significant else " (not significant)"
    return (f"  {row.family:<7} {row.feature}: {row.layer} at steps {row.step_start}-{row.step_stop} "
            f"changes it by {row.effect:+.3g} [{row.ci_low:+.3g}, {row.ci_high:+.3g}] (std {row.effect_std:+.3g}, "
            f"specificity {row.specificity:.3g}), p_adj={row.p_adj:.2g}{sig}")


def summarize(store, *, report: Path | None = None) -> DemoSummary:
    """Read a demo store back into a :class:`DemoSummary` (the claims come from the stored tables).

    Parameters
    ----------
    store : str or path
        A store written by :func:`run_demo`.
    report : path, optional
        The report's path, to print.

    Returns
    -------
    DemoSummary
    """
    from denoisefeat.analyses.table import attribution_names, rank, read_attribution
    from denoisefeat.step_features import load_features
    from denoisefeat.temporal import profiles

    store = Path(store)
    ablation = read_attribution(store, "ablation")
    features = {family: feature for family, feature in DEMO_FEATURES.items()
                if feature in set(ablation["feature"])}

    def top(by):
        rows = []
        for family, feature in features.items():
            best = rank(ablation, feature=feature, by=by, top=1).iloc[0]
            rows.append({"family": family, "feature": feature, "layer": best["layer"],
                         "step_start": int(best["step_start"]), "step_stop": int(best["step_stop"]),
                         **{k: float(best[k]) for k in ("effect", "effect_std", "specificity", "disruption",
                                                         "ci_low", "ci_high", "p_adj")},
                         "significant": bool(best["significant"])})
        return pd.DataFrame(rows)

    timing, facts = [], []
    for family, feature in features.items():
        rows_ = ablation[ablation["feature"] == feature]
        per_window = rows_["effect_std"].abs().groupby([rows_["step_start"], rows_["step_stop"]]).median()
        (start, stop), best = per_window.idxmax(), float(per_window.max())
        timing.append({"family": family, "feature": feature, "step_start": int(start), "step_stop": int(stop),
                       "median_abs_effect": best,
                       "other_windows": float(per_window.drop((start, stop)).median()) if len(per_window) > 1
                       else float("nan")})
        first, last = float(per_window.iloc[0]), float(per_window.iloc[-1])  # windows sorted by step
        facts.append({"family": family, "feature": feature, "early": first, "late": last,
                      "late_over_early": last / first if first > 0 else float("inf")})
    windows = pd.DataFrame(timing)

    feats = load_features(store)
    prof = profiles(feats, variables="band_relative_error", n_boot=0)
    bands = pd.DataFrame([
        {"band": band, "emergence": float(np.nanmedian(prof["emergence"].sel(profile=f"band_relative_error[{band}]"))),
         "stabilisation": float(np.nanmedian(prof["stabilisation"].sel(profile=f"band_relative_error[{band}]")))}
        for band in feats["band"].values
    ])

    probe = read_attribution(store, "probe") if "probe" in attribution_names(store) else None
    probe_rows = []
    if probe is not None:
        for feature in sorted(probe["feature"].unique()):
            best = rank(probe, feature=feature, method="probe", top=1).iloc[0]
            probe_rows.append({"feature": feature, "layer": best["layer"], "step_start": int(best["step_start"]),
                               "step_stop": int(best["step_stop"]), "effect": float(best["effect"]),
                               "ci_low": float(best["ci_low"]), "ci_high": float(best["ci_high"]),
                               "significant": bool(best["significant"])})
    return DemoSummary(store=store, report=report if report is not None else store.parent / "report.html",
                       drivers=top("effect"), specific=top("specificity"), windows=windows,
                       facts=pd.DataFrame(facts), bands=bands, probes=pd.DataFrame(probe_rows))


def run_demo(out, *, quick: bool = False, overwrite: bool = False,
             on_stage: Callable[[str], None] | None = None, progress: bool = False) -> DemoSummary:
    """Run the whole study on the toy model into ``out``.

    Parameters
    ----------
    out : str or path
        Folder for ``demo.zarr`` and ``report.html`` (created).
    quick : bool
        :data:`QUICK` settings (about 2 minutes on 2 CPU cores) instead of :data:`FULL` (about 5).
    overwrite : bool
        Replace a previous demo store in ``out``.
    on_stage : callable, optional
        Called with the name of each stage as it starts (for a progress display).
    progress : bool
        Show the progress bars of the long stages.

    Returns
    -------
    DemoSummary

    Raises
    ------
    denoisefeat.store.StoreError
        ``out/demo.zarr`` exists and ``overwrite`` is false.
    """
    from denoisefeat.analyses.ablation import ablation_scan
    from denoisefeat.analyses.table import write_attribution
    from denoisefeat.hooks import list_layers
    from denoisefeat.models import load_pipeline
    from denoisefeat.probes import final_feature_targets, label_targets, probe_table
    from denoisefeat.step_features import features, load_features
    from denoisefeat.store import StoreError, open_run, replacement
    from denoisefeat.trajectory import trace
    from denoisefeat.viz.report import build_report

    settings = QUICK if quick else FULL
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    store, report = out / "demo.zarr", out / "report.html"
    if store.exists() and not overwrite:
        raise StoreError(f"{store} exists; pass overwrite=True (--overwrite) to replace it.")
    seconds: dict[str, float] = {}
    stage = on_stage or (lambda name: None)

    def timed(name, work):
        stage(name)
        start = time.perf_counter()
        result = work()
        seconds[name] = time.perf_counter() - start
        return result

    pipe = load_pipeline("toy")
    labels = demo_labels(settings.samples)
    record = {block: "channel_mean" for block in _BLOCKS}
    with replacement(store, overwrite=overwrite) as target:  # a previous demo stays until the new store is whole
        timed("trace", lambda: trace(pipe, class_labels=labels, steps=settings.steps, seed=0, store=target,
                                     record=record, overwrite=overwrite, batch_size=12, progress=progress))
        timed("features", lambda: features(str(target), progress=progress))
        run = open_run(target)

        def probes():
            targets = {**label_targets(run), **final_feature_targets(run, metrics=["edge_density"])}
            # the ablation scan's step windows; one fixed penalty on standardised activations (no inner
            # search): ~20x fewer fits, minutes -> seconds
            return probe_table(run, targets=targets, windows=settings.windows, cv=4, alphas=(100.0,),
                               n_boot=min(settings.n_boot, 200), seed=0)

        write_attribution(target, timed("probes", probes), name="probe", overwrite=True)
        n = settings.ablation_samples
        table = timed("ablation", lambda: ablation_scan(
            pipe, layers=list(_BLOCKS), windows=settings.windows, method="mean",
            features=list(DEMO_FEATURES.values()), class_labels=labels[:n], steps=settings.steps, seed=0,
            batch_size=n, keep_images=_KEPT_IMAGES, progress=progress))
        write_attribution(target, table, name="ablation", overwrite=True)
    feats = load_features(store)
    layers = list_layers(pipe)
    timed("report", lambda: build_report(store, report, title="denoisefeat demo: the DiffShapes toy model",
                                         layers=layers, features=feats))
    summary = summarize(store, report=report)
    summary.seconds = seconds
    return summary
