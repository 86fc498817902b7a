"""Per-step features of a run: every metric and frequency feature of x̂0 at every (sample, step).

:func:`features` reads a run store one sample chunk at a time, computes for every sample and step

* every metric of :func:`denoisefeat.metrics.compute_metrics` (or a chosen subset) of the
  decoded x̂0 against the run's final image, and
* frequency features of the luminance of x̂0 (:mod:`denoisefeat.frequency`): ``band_energy``,
  ``band_relative_error`` and ``band_correlation`` against the final image (dims
  ``sample, step, band``), the radial power spectrum ``rapsd`` (``sample, step, freq``) and the
  ``wavelet_energy`` of each subband (``sample, step, level, orientation``),
* the per-band signal-to-noise ratio of x_t in model space (latents for latent models):
  ``band_snr_scheduler``, implied by the noise schedule, and ``band_snr_measured``, measured on
  the stored x_t (``sample, step, band``),

and writes them into the store's ``features/`` group, where :func:`load_features` reads them.

Store layout (beside the run's own arrays)::

    run.zarr/features/
      attrs["config"]      what was computed: metrics, bands, wavelet, source, reference, variables
      <variable>           float32, dims in zarr ``dimension_names``, attrs: description, range,
                           direction, kind (metrics: from their MetricSpec)
      freq (freq)          radial frequency of the rapsd bins, cycles/pixel
      complete (sample)    True once every variable of a sample is written

Conventions
-----------
* **Images.**  x̂0 is the stored ``images`` array (decoded, RGB in [0, 1]).  A run traced without
  ``images`` falls back to ``x0`` mapped to [0, 1] as diffusers' pixel pipelines decode it,
  ``clip(x0 / 2 + 0.5, 0, 1)`` (model space [-1, 1]); this needs a pixel-space model (x0 with 1 or
  3 channels and the final image's size) and is refused for latent models.
* **Reference.**  Every comparison is against ``final``, the pipeline's output (for DDIM with
  ᾱ_prev = 1 it equals x̂0 at the last step, so the last step has SSIM 1, PSNR +inf and a
  relative band error of 0).
* **Frequency features** are computed on the luminance (``skimage.color.rgb2gray``, BT.709) of
  x̂0 and of the final image, with the bands of ``bands`` (default
  :data:`~denoisefeat.frequency.DEFAULT_BANDS`) and the default RAPSD binning
  (``min(H, W) // 2 + 1`` bins from 0 to 0.5 cycles/pixel).
* **Wavelet energy**: ``level`` 1 is the finest; ``orientation`` is ``horizontal``,
  ``vertical``, ``diagonal`` (details) and ``approximation``, which exists at the coarsest level
  only and is NaN at the others.
* **SNR.**  ``band_snr_scheduler[i] = ᾱ_t C_i / (1 − ᾱ_t)`` with ``C_i`` the mean power per FFT bin
  of the final sample (x̂0 of the last step, model space) in band ``i``, averaged over channels
  (:func:`~denoisefeat.frequency.scheduler_band_snr`; needs the ``alpha_bar`` coordinate).
  ``band_snr_measured[i] = Σ_c E_i(a_t x̂0) / Σ_c E_i(x_t − a_t x̂0)``, with ``E_i`` the
  :func:`~denoisefeat.frequency.band_energy`, x̂0 the final sample and ``a_t`` the signal scale
  of x_t in the scheduler's own convention (:func:`denoisefeat.schedulers.noise_level`, from
  the scheduler rebuilt from the run's attributes); channels are pooled.  Both need ``x0`` in
  the store, the measured one also ``xt``; without them these variables are left out.
* **Ground truth.**  Metrics against ground-truth masks or edges (``*_gt``) are not computed: a
  run holds generated images, which have no ground truth (for the toy model a label only says
  which shape, colour and texture were asked for, not where they are).  Asking for them raises.

Resuming and cluster tasks
--------------------------
A sample is marked complete only after all its variables are written, so a rerun skips finished
samples and recomputes the others.  ``samples=slice(a, b)`` computes only those samples: a task
owns whole sample chunks of the store (``a`` and ``b`` on chunk boundaries) and writes only their
chunks; misaligned ranges are refused.  Memory is bounded by one sample chunk of the run's
per-step arrays, processed ``batch_size`` images at a time.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from denoisefeat.frequency import DEFAULT_BANDS
from denoisefeat.progress import progress_bar

__all__ = ["FREQUENCY_VARIABLES", "SNR_VARIABLES", "features", "load_features"]

#: Frequency features of x̂0 (luminance), always computed.
FREQUENCY_VARIABLES: tuple[str, ...] = (
    "band_energy", "band_relative_error", "band_correlation", "rapsd", "wavelet_energy",
)
#: Per-band SNR of x_t in model space, computed when the store holds ``x0`` (and ``xt``).
SNR_VARIABLES: tuple[str, ...] = ("band_snr_scheduler", "band_snr_measured")

_CONFIG_VERSION = 1
_ORIENTATIONS = ("horizontal", "vertical", "diagonal", "approximation")
_STEP_COORDS = ("timestep", "sigma", "alpha_bar")
_SAMPLE_COORDS = ("seed", "class_label")

_FREQUENCY_ATTRS = {
    "band_energy": dict(
        description="Energy of the luminance of x̂0 in each radial frequency band (sum of the unitary "
                    "power spectrum over the band's FFT bins).",
        range=(0.0, None), direction=None, kind="frequency"),
    "band_relative_error": dict(
        description="||b_i(x̂0) − b_i(final)||² / ||b_i(final)||², b_i the band-pass luminance of band i: "
                    "0 once the band has converged to the final image.",
        range=(0.0, None), direction=False, kind="frequency"),
    "band_correlation": dict(
        description="Pearson correlation of the band-pass luminance of x̂0 with that of the final image "
                    "(0 where either is constant).",
        range=(-1.0, 1.0), direction=True, kind="frequency"),
    "rapsd": dict(
        description="Radially averaged power spectrum of the luminance of x̂0: mean power per FFT bin in "
                    "each annulus; freq in cycles/pixel.",
        range=(0.0, None), direction=None, kind="frequency"),
    "wavelet_energy": dict(
        description="Energy of each wavelet subband of the luminance of x̂0 (level 1 = finest); the "
                    "approximation exists at the coarsest level only (NaN elsewhere).",
        range=(0.0, None), direction=None, kind="frequency"),
    "band_snr_scheduler": dict(
        description="SNR of x_t per band implied by the schedule: ᾱ_t C_i / (1 − ᾱ_t), C_i the mean power "
                    "per FFT bin of the final sample in model space (mean over channels).",
        range=(0.0, None), direction=None, kind="snr"),
    "band_snr_measured": dict(
        description="SNR of x_t per band measured on the stored x_t: Σ_c E_i(a_t x̂0) / Σ_c E_i(x_t − a_t x̂0), "
                    "x̂0 the final sample in model space, a_t the signal scale of the scheduler.",
        range=(0.0, None), direction=None, kind="snr"),
}


# ---------------------------------------------------------------------------------------------
# Opening the store
# ---------------------------------------------------------------------------------------------


def _store_of(run, *, mode: str):
    """The run's RunStore, reopened without consolidated metadata (so that new arrays show)."""
    from denoisefeat.store import Run, RunStore

    if isinstance(run, (str, Path)):
        store = RunStore.open(run, mode="r")  # the store's own checks and messages
    elif isinstance(run, Run):
        store = run.store
    else:
        raise TypeError(f"run must be a Run (from trace or open_run) or a store path, got {type(run).__name__}.")
    return store.reopened(mode=mode)


def _features_config(store) -> dict:
    config = store.features_config()
    if not config:
        where = str(store.path) if store.path is not None else "this in-memory run"
        raise ValueError(
            f"No features computed for {where}. Compute them with denoisefeat.features(run) "
            f"(CLI: `denoisefeat analyze {store.path or 'RUN.zarr'}`)."
        )
    return config


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


def _metric_names(metrics, channels: int) -> list[str]:
    from denoisefeat.metrics import METRICS

    usable = [s.name for s in METRICS.values() if s.needs_reference in (None, "image")]
    if metrics is None:
        return [n for n in usable if not (METRICS[n].kind == "color" and channels != 3)]
    if isinstance(metrics, str):
        metrics = [metrics]
    metrics = list(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        hints = {m: difflib.get_close_matches(m, list(METRICS), n=3) for m in unknown}
        hint = "; ".join(f"{m!r}: did you mean {', '.join(c)}?" if c else repr(m) for m, c in hints.items())
        raise KeyError(f"Unknown metric(s) {hint}. Valid metrics: {', '.join(usable)}.")
    ground_truth = [m for m in metrics if m not in usable]
    if ground_truth:
        raise ValueError(
            f"Metrics {ground_truth} compare against ground-truth masks or edges, which a run does not hold "
            f"(generated images have no ground truth). Valid metrics: {', '.join(usable)}."
        )
    return [n for n in usable if n in set(metrics)]  # registry order, no duplicates


def _bands_json(bands: Mapping, shape: tuple[int, int]) -> dict:
    from denoisefeat.frequency import band_masks

    band_masks(shape, bands=bands)  # a clear error for a bad band mapping, before any work
    return {str(k): [float(lo), None if math.isinf(hi) else float(hi)] for k, (lo, hi) in bands.items()}


def _bands_from_json(config: dict) -> dict:
    return {k: (lo, math.inf if hi is None else hi) for k, (lo, hi) in config["bands"].items()}


def _range_json(bounds) -> list:
    return [None if (b is None or math.isinf(b)) else float(b) for b in bounds]


def _source(store) -> str:
    if store.holds("images"):
        return "images"
    if store.holds("x0"):
        return "x0"
    raise ValueError("The run holds neither 'images' nor 'x0' per step: trace it with keep=('images', ...).")


def _check_x0_source(store) -> None:
    x0, final = store.array("x0"), store.array("final")
    if x0.shape[2] not in (1, 3) or tuple(x0.shape[-2:]) != tuple(final.shape[-2:]):
        raise ValueError(
            f"The run has no decoded 'images' and its x0 {tuple(x0.shape[2:])} is not a pixel image like the "
            f"final image {tuple(final.shape[1:])} (a latent model): trace it again with keep including 'images'."
        )


def _config(store, *, metrics, bands, wavelet) -> dict:
    from denoisefeat.frequency import wavelet_energy

    source = _source(store)
    if source == "x0":
        _check_x0_source(store)
    shape = tuple(store.array(source).shape)
    channels, H, W = shape[2], shape[-2], shape[-1]
    probe = wavelet_energy(np.zeros((H, W)), wavelet=wavelet)  # validates; the maximum number of levels
    variables = [*_metric_names(metrics, channels), *FREQUENCY_VARIABLES]
    if store.holds("x0") and store.holds("alpha_bar"):
        variables.append("band_snr_scheduler")
    if store.holds("x0") and store.holds("xt") and store.holds("alpha_bar"):
        variables.append("band_snr_measured")
    return {
        "version": _CONFIG_VERSION,
        "metrics": [v for v in variables if v not in FREQUENCY_VARIABLES and v not in SNR_VARIABLES],
        "variables": variables,
        "bands": _bands_json(bands, (H, W)),
        "wavelet": probe.wavelet,
        "wavelet_level": int(probe.level),
        "source": source,
        "reference": "final",
    }


def _attrs_of(name: str) -> dict:
    if name in _FREQUENCY_ATTRS:
        a = dict(_FREQUENCY_ATTRS[name])
    else:
        from denoisefeat.metrics import METRICS

        spec = METRICS[name]
        against = "x̂0 against the final image" if spec.needs_reference == "image" else "x̂0 itself"
        a = dict(description=f"{name}: {spec.kind} metric of {against} (denoisefeat.metrics).",
                 range=spec.range, direction=spec.direction, kind=spec.kind)
    a["range"] = _range_json(a["range"])
    a["direction"] = {True: "higher is closer to the final image", False: "lower is closer to the final image",
                      None: "none"}[a["direction"]]
    return a


# ---------------------------------------------------------------------------------------------
# Computation
# ---------------------------------------------------------------------------------------------


def _gray(images):
    """(..., C, H, W) in [0, 1] → (..., H, W): :func:`denoisefeat.metrics.luminance`, or its device twin."""
    if images.shape[-3] == 1:
        return images[..., 0, :, :]
    if not isinstance(images, np.ndarray):  # a tensor: its device's twin of rgb2gray
        from denoisefeat.metrics.device import luminance

        return luminance(images)
    from denoisefeat.metrics import luminance

    return luminance(images)


def _host(values) -> np.ndarray:
    return values if isinstance(values, np.ndarray) else values.detach().cpu().numpy()


def _image_features(images, reference, *, config, bands) -> dict[str, np.ndarray]:
    """Metrics and frequency features of a block: images (n, t, C, H, W), reference (n, 1, C, H, W).

    numpy arrays are computed on the host (:func:`~denoisefeat.metrics.compute_metrics`),
    tensors on their device (:func:`~denoisefeat.metrics.device.device_metrics`, the torch
    paths of :mod:`denoisefeat.frequency`); the values come back as numpy arrays.
    """
    from denoisefeat.frequency import (
        band_correlation,
        band_energy,
        band_relative_error,
        radial_power_spectrum,
        wavelet_energy,
    )

    out = {}
    if config["metrics"]:
        if isinstance(images, np.ndarray):
            from denoisefeat.metrics import compute_metrics as metrics_of
        else:
            from denoisefeat.metrics.device import device_metrics as metrics_of
        out.update(metrics_of(images, reference, names=config["metrics"]))
    gray, gray_ref = _gray(images), _gray(reference)
    out["band_energy"] = band_energy(gray, bands=bands)
    out["band_relative_error"] = band_relative_error(gray, gray_ref, bands=bands)
    out["band_correlation"] = band_correlation(gray, gray_ref, bands=bands)
    out["rapsd"] = radial_power_spectrum(gray).power
    energy = wavelet_energy(gray, wavelet=config["wavelet"], level=config["wavelet_level"])
    details = _host(energy.details)
    wav = np.full((*details.shape[:-1], len(_ORIENTATIONS)), np.nan)
    wav[..., :3] = details
    wav[..., -1, 3] = _host(energy.approximation)
    out["wavelet_energy"] = wav
    return {name: _host(values) for name, values in out.items()}


def _scheduler_snr(x0_final, alpha_bar, *, bands) -> np.ndarray:
    """(n, C, h, w), (t,) → (n, t, bands): mean over channels of the schedule's band SNR."""
    from denoisefeat.frequency import scheduler_band_snr

    try:
        snr = scheduler_band_snr(x0_final, alphas_cumprod=alpha_bar, bands=bands)  # (n, C, t, B)
    except ValueError as error:  # a band with no FFT bin at this (latent) size
        warnings.warn(f"band_snr_scheduler left NaN: {error}", stacklevel=3)
        return np.full((x0_final.shape[0], len(alpha_bar), len(bands)), np.nan)
    return snr.mean(axis=1)


def _measured_snr(xt, x0_final, signal, *, bands) -> np.ndarray:
    """xt (n, t, C, h, w), x0_final (n, C, h, w), signal scale a_t (t,) → (n, t, bands), channels pooled."""
    from denoisefeat.frequency import band_energy

    s = signal[None, :, None, None, None] * x0_final[:, None]  # a_t x̂0: the signal part of x_t
    Es = band_energy(s, bands=bands).sum(axis=-2)
    En = band_energy(xt - s, bands=bands).sum(axis=-2)
    tiny = np.finfo(np.float64).eps * (Es.sum(-1, keepdims=True) + En.sum(-1, keepdims=True))
    zero_s, zero_n = Es <= tiny, En <= tiny
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(zero_n, np.where(zero_s, np.nan, np.inf), Es / np.where(zero_n, 1.0, En))


def _signal_scales(store) -> np.ndarray | None:
    """a_t of each loop step in the scheduler's own convention, or None (with a warning) if unknown."""
    from denoisefeat import schedulers

    attrs = store.run_attrs
    try:
        levels = schedulers.loop_noise_levels(attrs["scheduler_class"], attrs["scheduler_config"], attrs["steps"],
                                              timestep_options=attrs.get("timestep_options"))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        warnings.warn(f"band_snr_measured left NaN: cannot rebuild the run's scheduler ({error}).", stacklevel=3)
        return None
    stored = np.asarray(store.array("alpha_bar")[...], dtype=np.float64)
    alpha_bar = np.array([lv.alpha_bar for lv in levels])
    if alpha_bar.shape != stored.shape or not np.allclose(alpha_bar, stored, rtol=1e-5, atol=1e-7):
        warnings.warn("band_snr_measured left NaN: the rebuilt scheduler does not reproduce the stored alpha_bar.",
                      stacklevel=3)
        return None
    return np.array([lv.signal for lv in levels])


def _read(array, samples: np.ndarray, steps=slice(None)) -> np.ndarray:
    return np.asarray(array.oindex[samples, steps], dtype=np.float64)


def _to_unit(x0: np.ndarray) -> np.ndarray:
    """Pixel-space x0 in diffusers' [-1, 1] convention → [0, 1], as the pipelines decode it."""
    return np.clip(x0 / 2.0 + 0.5, 0.0, 1.0)


def _compute_samples(store, todo: np.ndarray, *, config, bands, batch_size, signal,
                     device=None) -> dict[str, np.ndarray]:
    """Every variable for samples ``todo`` (absolute indices), all steps.

    With a ``device``, each block of images (and its final images) is copied there, its image
    features are computed there and the values are copied back, block by block.
    """
    T = store.n_steps
    source = store.array(config["source"])
    final = np.asarray(store.array("final").oindex[todo], dtype=np.float64)
    if device is None:
        def to_device(a):
            return a
    else:
        import torch

        def to_device(a):
            return torch.from_numpy(a).to(device)
    want_sched = "band_snr_scheduler" in config["variables"]
    want_meas = "band_snr_measured" in config["variables"]
    x0_final = _read(store.array("x0"), todo, T - 1) if (want_sched or want_meas) else None
    alpha_bar = np.asarray(store.array("alpha_bar")[...], dtype=np.float64) if want_sched else None
    n_block = min(len(todo), batch_size)
    t_block = max(1, batch_size // n_block)
    parts: dict[str, list[list[np.ndarray]]] = {}
    for i0 in range(0, len(todo), n_block):
        rows = slice(i0, i0 + n_block)
        row_parts: dict[str, list[np.ndarray]] = {}
        for t0 in range(0, T, t_block):
            steps = slice(t0, min(t0 + t_block, T))
            images = _read(source, todo[rows], steps)
            if config["source"] == "x0":
                images = _to_unit(images)
            block = _image_features(to_device(images), to_device(final[rows, None]), config=config, bands=bands)
            if want_sched:
                block["band_snr_scheduler"] = _scheduler_snr(x0_final[rows], alpha_bar[steps], bands=bands)
            if want_meas:
                if signal is None:
                    n, t = images.shape[:2]
                    block["band_snr_measured"] = np.full((n, t, len(bands)), np.nan)
                else:
                    xt = _read(store.array("xt"), todo[rows], steps)
                    block["band_snr_measured"] = _measured_snr(xt, x0_final[rows], signal[steps], bands=bands)
            for name, values in block.items():
                row_parts.setdefault(name, []).append(np.asarray(values))
        for name, values in row_parts.items():
            parts.setdefault(name, []).append(np.concatenate(values, axis=1))
    return {name: np.concatenate(values, axis=0) for name, values in parts.items()}


_DIMS = {
    "band_energy": ("band",),
    "band_relative_error": ("band",),
    "band_correlation": ("band",),
    "band_snr_scheduler": ("band",),
    "band_snr_measured": ("band",),
    "rapsd": ("freq",),
    "wavelet_energy": ("level", "orientation"),
}


def _rapsd_freq(H: int, W: int) -> np.ndarray:
    from denoisefeat.frequency import radial_power_spectrum

    return np.asarray(radial_power_spectrum(np.zeros((H, W))).freq, dtype=np.float64)


def _tail_shape(name: str, config: dict, H: int, W: int) -> tuple[int, ...]:
    sizes = {
        "band": len(config["bands"]),
        "freq": len(_rapsd_freq(H, W)),
        "level": config["wavelet_level"],
        "orientation": len(_ORIENTATIONS),
    }
    return tuple(sizes[d] for d in _DIMS.get(name, ()))


def _check_stored_config(store, config: dict, *, overwrite: bool, owns_everything: bool) -> None:
    """Refuse settings that differ from the stored features', unless the whole group is to be replaced."""
    from denoisefeat.store import FEATURES, RunMismatchError

    old = store.features_config()
    if store.holds(FEATURES) and old != config and not (overwrite and owns_everything):
        changed = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
        fix = ("pass overwrite=True (CLI: --overwrite) to recompute everything" if not overwrite else
               "recompute the whole run first (without samples=), then the tasks can resume")
        raise RunMismatchError(
            f"The store's features were computed with other settings ({', '.join(changed)}; stored metrics: "
            f"{', '.join(old.get('metrics', [])) or 'none'}). Ask for the same settings, or {fix}."
        )


def _prepare_group(store, config: dict, *, group: str) -> None:
    """Create (or check) the features group ``group`` for ``config``: its marker and arrays."""
    from denoisefeat.store import features_path

    store.declare_features(config, group=group)
    n, T = store.n_samples, store.n_steps
    H, W = store.array("final").shape[-2:]
    store.write_coordinate(features_path("freq", group=group), _rapsd_freq(int(H), int(W)), dim="freq")
    for name in config["variables"]:
        tail = _DIMS.get(name, ())
        store.ensure_array(features_path(name, group=group),
                           shape=(n, T, *_tail_shape(name, config, int(H), int(W))),
                           dims=("sample", "step", *tail), dtype="float32", attrs=_attrs_of(name))


def _compute_into(store, work, *, config: dict, group: str, batch_size: int, device, progress: bool) -> None:
    """Compute the features of each sample array of ``work`` and write them into ``group``, marking them done."""
    from denoisefeat.store import features_path

    bands = _bands_from_json(config)
    signal = _signal_scales(store) if "band_snr_measured" in config["variables"] else None
    with progress_bar(progress, total=int(sum(todo.size for todo in work)), label="features") as advance:
        for todo in work:
            values = _compute_samples(store, todo, config=config, bands=bands, batch_size=batch_size,
                                      signal=signal, device=device)
            for name in config["variables"]:
                store.array(features_path(name, group=group)).oindex[todo] = values[name].astype(np.float32)
            store.mark_features_complete(todo, group=group)  # last: a sample is complete only with all its variables
            advance(todo.size)


def _check_device(device):
    """None, or a usable torch.device (a clear error for a bad name or an absent accelerator)."""
    if device is None:
        return None
    import torch

    try:
        device = torch.device(device)
        torch.zeros(1, device=device)
    except (RuntimeError, TypeError, AssertionError) as error:
        raise ValueError(f"device={device!r} is not usable here ({str(error).splitlines()[0]}); "
                         "pass e.g. device='cpu', device='cuda' on a GPU machine, or None for numpy.") from None
    return device


def features(
    run,
    *,
    metrics: Sequence[str] | None = None,
    bands: Mapping[str, tuple[float, float]] = DEFAULT_BANDS,
    wavelet: str = "haar",
    samples: slice | None = None,
    overwrite: bool = False,
    batch_size: int = 128,
    progress: bool = False,
    device=None,
):
    """Compute (or read) the per-step features of a run and store them in its ``features/`` group.

    Parameters
    ----------
    run : Run, str or path
        A run from :func:`denoisefeat.trace` / :func:`denoisefeat.open_run`, or a store path.
    metrics : sequence of str, optional
        Metrics of :data:`denoisefeat.metrics.METRICS` to compute; default every metric that needs
        no ground truth (colour metrics only for RGB images).  ``[]``: frequency features only.
    bands : mapping of str to (float, float)
        Frequency bands ``{name: (lo, hi)}`` in cycles/pixel, contiguous from 0 to ``inf``;
        default :data:`~denoisefeat.frequency.DEFAULT_BANDS`.
    wavelet : str
        Discrete wavelet of ``wavelet_energy`` (``pywt.wavelist(kind="discrete")``), at the
        maximum number of levels for the image size.
    samples : slice, optional
        Compute only these samples (a cluster task's range: whole sample chunks of the store).
        Default: every sample.
    overwrite : bool
        Recompute even samples that are done.  Without ``samples`` the ``features/`` group is
        replaced (also when the settings changed); with ``samples``, only that range is
        recomputed, with the stored settings.
    batch_size : int
        Images (sample × step) processed at once; bounds memory together with the store's sample
        chunk.
    progress : bool
        Show a progress bar (samples).
    device : str or torch.device, optional
        Compute the metrics and frequency features in torch on this device (``"cuda"``,
        ``"cpu"``, ...): blocks of ``batch_size`` images stream from the store to the device and
        their values back (:func:`denoisefeat.metrics.device.device_metrics`).  The stored
        values equal those of the default numpy path (float64 on both; stored as float32).
        Default ``None``: numpy on the host.

    Returns
    -------
    xarray.Dataset
        The features of the requested samples (:func:`load_features`): one variable per metric
        with dims ``(sample, step)``; ``band_energy``, ``band_relative_error``,
        ``band_correlation``, ``band_snr_scheduler``, ``band_snr_measured`` ``(sample, step, band)``;
        ``rapsd`` ``(sample, step, freq)``; ``wavelet_energy`` ``(sample, step, level,
        orientation)``; coordinates ``sample``, ``step``, ``timestep``, ``alpha_bar``, ``band``,
        ``freq``, ``level``, ``orientation`` (and ``seed``, ``class_label``, ``sigma`` when the run
        has them).

    Raises
    ------
    KeyError
        Unknown metric names (the message lists the valid ones).
    ValueError
        Ground-truth metrics, bad bands or wavelet, misaligned ``samples``, a run without per-step
        images, or settings that differ from the stored features (``RunMismatchError``).
    denoisefeat.store.IncompleteRunError
        Some of the samples to compute are not complete in the run.

    Notes
    -----
    See the module docstring for the conventions (reference image, luminance, SNR, ground truth)
    and for resuming.  A call that finds everything done only reads.
    """
    from denoisefeat.store import FEATURES, IncompleteRunError, Run, index_ranges

    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    device = _check_device(device)
    store = _store_of(run, mode="r+")
    config = _config(store, metrics=metrics, bands=bands, wavelet=wavelet)
    chunks = store.owned_chunks(samples)
    owned = np.zeros(store.n_samples, dtype=bool)
    for chunk in chunks:
        owned[chunk] = True
    traced = store.completed()
    if not traced[owned].all():
        missing = owned & ~traced
        raise IncompleteRunError(
            f"Samples {index_ranges(missing)} of {str(store.path or 'the run')!r} are not complete in the run, so "
            "their features cannot be computed yet: finish the trace first (resume=True, CLI --resume)"
            + (", or pass samples= for complete chunks." if samples is None else ".")
        )
    _check_stored_config(store, config, overwrite=overwrite, owns_everything=samples is None)
    # replacing every feature: the new group is written beside the old one, which stays until it is whole
    replacing = overwrite and samples is None and store.holds(FEATURES)
    with store.replacing_group(FEATURES) if replacing else contextlib.nullcontext(FEATURES) as group:
        _prepare_group(store, config, group=group)
        if overwrite and samples is not None:  # the same settings (checked): those samples are computed again
            for chunk in chunks:
                store.mark_features_complete(chunk, complete=False)
        done = store.features_completed(group=group)
        work = [(chunk, np.arange(chunk.start, chunk.stop)[~done[chunk]]) for chunk in chunks]
        work = [todo for _chunk, todo in work if todo.size]
        if work:
            _compute_into(store, work, config=config, group=group, batch_size=int(batch_size), device=device,
                          progress=progress)
    if work:
        store.finalize()
    ds = load_features(Run(store), allow_incomplete=samples is not None)
    return ds if samples is None else ds.isel(sample=owned)


def load_features(run, *, allow_incomplete: bool = False):
    """Read the features stored in a run's ``features/`` group.

    Parameters
    ----------
    run : Run, str or path
        The run (or its store path).
    allow_incomplete : bool
        Return features some of whose samples are not computed yet (their values are NaN).

    Returns
    -------
    xarray.Dataset
        As described in :func:`features`, with the stored ``config`` in ``attrs``.

    Raises
    ------
    ValueError
        No features were computed for this run (the message says how to compute them).
    denoisefeat.store.IncompleteRunError
        Some samples are not computed and ``allow_incomplete`` is false.
    """
    import xarray as xr

    from denoisefeat.store import IncompleteRunError, features_path, index_ranges

    store = _store_of(run, mode="r")
    config = _features_config(store)
    done = store.features_completed()
    if not allow_incomplete and not done.all():
        raise IncompleteRunError(
            f"Features of samples {index_ranges(~done)} of {str(store.path or 'the run')!r} are not computed yet: run "
            "features(run) (CLI: `denoisefeat analyze`) to finish them, or load_features(..., allow_incomplete=True)."
        )
    coords = {"sample": np.asarray(store.array("sample")[...]), "step": np.arange(store.n_steps)}
    if store.holds("step"):
        coords["step"] = np.asarray(store.array("step")[...])
    for name in _STEP_COORDS:
        if store.holds(name):
            coords[name] = ("step", np.asarray(store.array(name)[...]))
    for name in _SAMPLE_COORDS:
        if store.holds(name):
            coords[name] = ("sample", np.asarray(store.array(name)[...]))
    bands = config["bands"]
    coords["band"] = list(bands)
    coords["band_low"] = ("band", [lo for lo, _ in bands.values()])
    coords["band_high"] = ("band", [math.inf if hi is None else hi for _, hi in bands.values()])
    coords["freq"] = ("freq", np.asarray(store.array(features_path("freq"))[...]), {"units": "cycles/pixel"})
    coords["level"] = np.arange(1, config["wavelet_level"] + 1)
    coords["orientation"] = list(_ORIENTATIONS)
    data = {}
    for name in config["variables"]:
        array = store.array(features_path(name))
        data[name] = xr.DataArray(np.asarray(array[...]), dims=tuple(array.metadata.dimension_names),
                                  attrs=dict(array.attrs))
    ds = xr.Dataset(data, coords=coords, attrs={"config": config, "run": str(store.path or "in memory")})
    return ds.assign_coords(computed=("sample", done))
