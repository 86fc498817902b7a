"""The bounded report: frames downscaled as documented (checked against a reference resize), the size budget kept."""

from __future__ import annotations

import re

import numpy as np
import pytest
from photo_store import write_photo_store
from skimage.color import rgb2gray
from skimage.transform import downscale_local_mean

import denoisefeat as dft
from denoisefeat.frequency import band_pass
from denoisefeat.viz import band_pass_grid, build_report, step_image_grid
from denoisefeat.viz.frames import FramePolicy, decode_image_uri, downscale

SIZE, S, T = 128, 3, 6


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return dft.open_run(write_photo_store(tmp_path_factory.mktemp("photos") / "run.zarr", samples=S, steps=T,
                                          size=SIZE))


def _reference(images, factor: int) -> np.ndarray:
    """Independent reference: the mean of each factor × factor block (scikit-image), rounded to 8 bits, RGB last."""
    mean = downscale_local_mean(np.asarray(images, np.float64), (1,) * (images.ndim - 2) + (factor, factor))
    return np.round(np.clip(np.moveaxis(mean, -3, -1), 0, 1) * 255).astype(np.uint8)


def test_lossless_frames_are_the_block_means_of_the_stored_images(run):
    policy = FramePolicy(max_px=32, lossless_px=32)  # 128 → 32 px, PNG
    fig = step_image_grid(run, samples=range(S), frames=policy)
    stored = run["images"].values  # (S, T, 3, 128, 128)
    for k, frame in enumerate(fig.frames):
        for i in range(S):
            assert frame.data[i].source.startswith("data:image/png;base64,")
            shown, expected = decode_image_uri(frame.data[i].source), _reference(stored[i, k], 4)
            assert shown.shape == (32, 32, 3)
            diff = np.abs(shown.astype(int) - expected)
            assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # float32 vs float64 means at rounding ties


def test_webp_frames_are_close_to_the_reference(run):
    policy = FramePolicy(max_px=64, lossless_px=32, quality=80)
    fig = step_image_grid(run, samples=[1], frames=policy)
    stored = run["images"].values[1]
    errors = []
    for k, frame in enumerate(fig.frames):
        assert frame.data[0].source.startswith("data:image/webp;base64,")
        errors.append(np.abs(decode_image_uri(frame.data[0].source).astype(float) - _reference(stored[k], 2)).mean())
    # mean absolute error in 8-bit levels at WebP quality 80 (4:2:0 chroma): measured 1.8 (blurred early
    # steps) to 3.8 (the sharp, striped, noisy last step)
    assert max(errors) < 5.0 and np.mean(errors) < 3.5


def test_band_images_are_downscaled_band_passes_and_still_add_up(run):
    fig = band_pass_grid(run, sample=2, frames=FramePolicy(max_px=64))
    gray = rgb2gray(np.moveaxis(run["images"].values[2], -3, -1))  # (T, 128, 128)
    parts = band_pass(gray)  # at the stored size
    for k, frame in enumerate(fig.frames):
        for b in range(3):
            np.testing.assert_allclose(frame.data[1 + b].z, downscale_local_mean(parts[k, b], (2, 2)), atol=1e-5)
        total = sum(np.asarray(frame.data[1 + b].z, np.float64) for b in range(3))
        np.testing.assert_allclose(total, downscale_local_mean(gray[k], (2, 2)), atol=1e-5)


def test_policy_steps_ladder_and_errors():
    assert FramePolicy(max_steps=5).steps(4) == [0, 1, 2, 3]
    assert FramePolicy(max_steps=5).steps(50) == [0, 12, 24, 37, 49]
    rungs, policy = [], FramePolicy()
    while policy is not None:
        rungs.append((policy.max_px, policy.max_steps))
        policy = policy.smaller()
    assert rungs[:4] == [(128, 50), (128, 25), (128, 13), (96, 13)] and rungs[-1] == (32, 7)
    assert downscale(np.zeros((2, 100, 50)), max_px=40).shape == (2, 40, 20)
    with pytest.raises(ValueError, match="max_px"):
        FramePolicy(max_px=0)
    with pytest.raises(ValueError, match="quality"):
        FramePolicy(quality=101)
    with pytest.raises(ValueError, match="float arrays"):
        downscale(np.zeros((4, 4), np.uint8), max_px=2)


def _budget_lines(text: str) -> list[str]:
    return re.findall(r'<p class="dft-budget">([^<]*)</p>', text)


def test_report_keeps_its_budget_by_shrinking_and_says_so(run, tmp_path):
    from denoisefeat.viz.plotly_bundle import plotly_js

    frames = FramePolicy(max_px=128, lossless_px=0)
    roomy = build_report(run, tmp_path / "roomy.html", frames=frames)
    lines = _budget_lines(roomy.read_text())
    assert lines == ["Frames shown at their stored 128 × 128 px as WebP at quality 80."]
    library = len(plotly_js(["scatter", "heatmap", "image"]).encode())  # what the page embeds
    assert plotly_js(["scatter", "heatmap", "image"]) in roomy.read_text()
    pictures = roomy.stat().st_size - library
    max_mb = (library + pictures * 0.5) / 2**20  # room for about half the pictures
    tight = build_report(run, tmp_path / "tight.html", frames=frames, max_mb=max_mb)
    assert tight.stat().st_size <= max_mb * 2**20
    text = tight.read_text()
    shrunk = [line for line in _budget_lines(text) if line.startswith("To fit")]
    assert shrunk, _budget_lines(text)
    assert text.count('<figure class="dft-figure"') >= 4


def test_report_refuses_a_budget_below_its_plots(run, tmp_path):
    with pytest.raises(ValueError, match="max_mb=1 is below"):
        build_report(run, tmp_path / "r.html", max_mb=1)
    assert not (tmp_path / "r.html").exists()
    for bad in (0, -3, float("nan"), "25"):
        with pytest.raises(ValueError, match="max_mb must be a positive number"):
            build_report(run, tmp_path / "r.html", max_mb=bad)


def test_the_reports_spectra_equal_an_independent_float64_computation(run):
    """The report computes RAPSD and wavelet energies in float32 torch (fast at 512 px): equal, to float32
    rounding, to numpy's FFT binned by radius and PyWavelets' subbands on scikit-image's luminance."""
    import pywt

    from denoisefeat.viz.report import _run_spectra

    spectra, none = _run_spectra(run)
    assert none is None
    gray = rgb2gray(np.moveaxis(np.clip(np.asarray(run["images"].values, np.float64), 0, 1), -3, -1))
    power = np.abs(np.fft.fft2(gray, norm="ortho")) ** 2
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(SIZE), np.fft.fftfreq(SIZE), indexing="ij"))
    ring = np.floor(f * SIZE + 0.5).astype(int)  # default bins: one per integer radius, spacing 1 / SIZE
    rapsd = np.stack([power[..., ring == k].mean(-1) for k in range(SIZE // 2 + 1)], -1)
    np.testing.assert_allclose(spectra["rapsd"].values, rapsd, rtol=2e-4, atol=1e-9 * rapsd.max())
    coeffs = pywt.wavedec2(gray, "haar", mode="periodization", axes=(-2, -1))
    finest = np.stack([(c ** 2).sum((-2, -1)) for c in coeffs[-1]], -1)  # level 1: (H, V, D)
    np.testing.assert_allclose(spectra["wavelet_energy"].sel(level=1).values[..., :3], finest, rtol=2e-4)


def test_the_grid_frames_of_the_spectras_read_are_the_grids_own(run):
    """One read of x̂0 for the spectra and the x̂0 grid: the grid drawn from it is the grid that reads the store."""
    from denoisefeat.viz.report import _run_spectra

    policy = FramePolicy(max_px=32)
    spectra, data = _run_spectra(run, grid=(2, [0, 3, 5], policy))
    assert data.shape == (2, 3, 32, 32, 3) and data.dtype == np.uint8
    np.testing.assert_array_equal(spectra["rapsd"].values, _run_spectra(run)[0]["rapsd"].values)
    own = step_image_grid(run, samples=range(2), steps=[0, 3, 5], frames=policy)
    shared = step_image_grid(run, samples=range(2), steps=[0, 3, 5], frames=policy, data=data)
    assert shared.to_json() == own.to_json()
    with pytest.raises(ValueError, match=r"data must be \(2, 3, h, w, 3\) uint8"):
        step_image_grid(run, samples=range(2), steps=[0, 3, 5], frames=policy, data=data[:, :2])


def test_the_report_shows_the_images_a_scan_kept_downscaled_per_cell_and_method(run, tmp_path):
    """A table written with CellImages (a scan's keep_images): each cell's click-strip is its own method's
    ablated images, block-means at the report's frame size; the budget line holds them too."""
    import json
    import shutil

    import pandas as pd
    from photo_store import photo

    from denoisefeat.analyses.table import CellImages, write_attribution

    copy = tmp_path / "copy.zarr"
    shutil.copytree(run.path, copy)
    rng = np.random.default_rng(3)
    cells = [(layer, start, stop, method) for layer in ("mid_block", "up_blocks.0") for start, stop in ((0, 3), (3, 6))
             for method in ("ablation:zero", "ablation:mean")]
    rows = [dict(feature="edges", layer=layer, step_start=start, step_stop=stop, method=method, effect=0.1 * i,
                 ci_low=0.0, ci_high=0.2, p=0.01, p_adj=0.02, n=S, effect_std=0.1 * i, disruption=1.0,
                 specificity=0.1) for i, (layer, start, stop, method) in enumerate(cells)]
    table = pd.DataFrame(rows)
    kept = CellImages(cells=cells, clean=np.stack([photo(rng, SIZE) for _ in range(2)]),
                      edited=np.stack([np.stack([photo(rng, SIZE) for _ in range(2)]) for _ in cells]))
    table.attrs["images"] = kept
    write_attribution(copy, table, name="ablation")
    text = build_report(dft.open_run(copy), tmp_path / "r.html", frames=FramePolicy(max_px=32, lossless_px=64)
                        ).read_text()
    meta = json.loads(re.search(r'"denoisefeat":(\{"kind":"attribution".*?\})\}', text).group(1))
    assert meta["by_method"] is True and len(meta["cells"]) == len(cells)
    for i, (layer, start, stop, method) in enumerate(cells):
        shown = decode_image_uri(meta["cells"][f"{layer}|{start}|{stop}|{method}"])
        assert shown.shape == (32, 65, 3)  # two 32 px images, one white column between
        for s in range(2):
            diff = np.abs(shown[:, 33 * s:33 * s + 32].astype(int) - _reference(kept.edited[i, s], 4))
            assert diff.max() <= 1 and (diff == 0).mean() > 0.99
    assert "Click a cell to see the clean and intervened images." in text
