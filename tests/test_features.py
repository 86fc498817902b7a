"""Per-step features of a run: values against direct calls and planted truth, resume, ownership, CLI."""

import math
import shutil

import numpy as np
import pytest
import zarr
from skimage.color import rgb2gray
from typer.testing import CliRunner

import denoisefeat as dft
from denoisefeat import frequency, metrics
from denoisefeat.step_features import FREQUENCY_VARIABLES, features, load_features
from denoisefeat.store import IncompleteRunError, RunMismatchError, open_run

S, T, CHUNK = 6, 5, 2
LABELS = [0, 1, 2, 3, 0, 1]


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """A tiny class-conditional run: 6 samples in chunks of 2, 5 DDIM steps (16x16 RGB)."""
    path = tmp_path_factory.mktemp("runs") / "run.zarr"
    dft.trace(dft.load_pipeline("tiny-class-unet"), class_labels=LABELS, seed=0, steps=T, batch_size=CHUNK,
              store=path)
    return path


@pytest.fixture(scope="module")
def computed(traced, tmp_path_factory):
    """The run with every feature computed (read-only for the tests that use it)."""
    path = tmp_path_factory.mktemp("computed") / "run.zarr"
    shutil.copytree(traced, path)
    return path, features(open_run(path))


@pytest.fixture
def fresh(traced, tmp_path):
    """A private copy of the run without features."""
    path = tmp_path / "run.zarr"
    shutil.copytree(traced, path)
    return path


def _group(path):
    return zarr.open_group(str(path), mode="r+", use_consolidated=False)


def test_features_equal_direct_calls(computed):
    path, ds = computed
    run = open_run(path)
    images = run["images"].values.astype(np.float64)
    final = run["final"].values.astype(np.float64)[:, None]
    assert dict(ds.sizes) == {"sample": S, "step": T, "band": 3, "freq": 9, "level": 4, "orientation": 4}
    np.testing.assert_allclose(ds["ssim"].values, metrics.ssim(images, final, data_range=1), atol=1e-6)
    np.testing.assert_allclose(ds["ssim"].isel(step=-1).values, 1.0, atol=1e-6)  # DDIM: last x̂0 is the output
    assert np.isposinf(ds["psnr"].isel(step=-1).values).all()
    expected = metrics.compute_metrics(images, final, names=["edge_f1", "delta_e2000", "glcm_contrast"])
    for name, values in expected.items():
        np.testing.assert_allclose(ds[name].values, values, rtol=1e-5, atol=1e-5)
    gray, gray_ref = rgb2gray(np.moveaxis(images, 2, -1)), rgb2gray(np.moveaxis(final, 2, -1))
    np.testing.assert_allclose(ds["band_relative_error"].values,
                               frequency.band_relative_error(gray, gray_ref), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(ds["band_relative_error"].isel(step=-1).values, 0.0)
    # (low is DC only at 16 px)
    np.testing.assert_allclose(ds["band_correlation"].sel(band=["mid", "high"]).isel(step=-1).values, 1.0, atol=1e-5)
    np.testing.assert_allclose(ds["rapsd"].values, frequency.radial_power_spectrum(gray).power, rtol=1e-5)
    np.testing.assert_allclose(ds["freq"].values, np.arange(9) / 16)
    # haar with periodization on 16x16 is orthogonal: the subband energies add up to the image energy
    total = ds["wavelet_energy"].sum(("level", "orientation"), skipna=True).values
    np.testing.assert_allclose(total, (gray**2).sum((-2, -1)), rtol=1e-5)
    assert np.isnan(ds["wavelet_energy"].sel(orientation="approximation", level=[1, 2, 3])).all()
    np.testing.assert_allclose(ds["band_energy"].sum("band").values, (gray**2).sum((-2, -1)), rtol=1e-5)
    # labelled coordinates from the run
    assert list(ds["band"].values) == ["low", "mid", "high"]
    np.testing.assert_array_equal(ds["timestep"].values, run.dataset["timestep"].values)
    np.testing.assert_array_equal(ds["class_label"].values, LABELS)
    assert ds.attrs["config"]["source"] == "images"


def test_store_layout_and_attrs(computed):
    path, ds = computed
    group = zarr.open_group(str(path), mode="r", use_consolidated=False)["features"]
    assert group["ssim"].dtype == np.float32
    assert tuple(group["rapsd"].metadata.dimension_names) == ("sample", "step", "freq")
    assert tuple(group["wavelet_energy"].metadata.dimension_names) == ("sample", "step", "level", "orientation")
    assert group["ssim"].chunks[0] == CHUNK  # sample chunks aligned with the run's writers
    spec = metrics.METRICS["delta_e2000"]
    attrs = dict(group["delta_e2000"].attrs)
    assert attrs["range"] == [0.0, None] and spec.range == (0.0, math.inf)
    assert attrs["direction"].startswith("lower") and attrs["kind"] == "color" and attrs["description"]
    assert dict(group["ssim"].attrs)["range"] == [-1.0, 1.0]
    assert set(ds.data_vars) >= {*FREQUENCY_VARIABLES, "band_snr_scheduler", "band_snr_measured"}
    assert not any(name.endswith("_gt") for name in ds.data_vars)


def test_band_snr_against_schedule_and_planted_noise(fresh):
    """x_t planted as sqrt(ᾱ) x̂0 + sqrt(1 − ᾱ) ε: the measured SNR must match the schedule's."""
    run = open_run(fresh)
    x0 = run["x0"].values.astype(np.float64)
    alpha_bar = run.dataset["alpha_bar"].values
    final = x0[:, -1]
    eps = np.random.default_rng(0).standard_normal(x0.shape)
    planted = np.sqrt(alpha_bar)[None, :, None, None, None] * final[:, None] \
        + np.sqrt(1 - alpha_bar)[None, :, None, None, None] * eps
    _group(fresh)["xt"][...] = planted.astype(np.float32)
    ds = features(fresh, metrics=[])
    schedule = frequency.scheduler_band_snr(final, alphas_cumprod=alpha_bar).mean(axis=1)
    np.testing.assert_allclose(ds["band_snr_scheduler"].values, schedule, rtol=1e-5)
    ratio = ds["band_snr_measured"].sel(band="high").values / schedule[..., 2]
    assert np.all(np.abs(np.log(ratio)) < 0.3), ratio  # ~600 FFT bins × channels: a close estimate
    assert set(ds.data_vars) == {*FREQUENCY_VARIABLES, "band_snr_scheduler", "band_snr_measured"}


def _chunk_files(path, name):
    return sorted(p.relative_to(path / "features" / name).as_posix()
                  for p in (path / "features" / name).rglob("*") if p.is_file() and p.name != "zarr.json")


def test_samples_ownership_writes_only_own_chunks(fresh):
    part = features(fresh, samples=slice(2, 4))
    assert list(part["sample"].values) == [2, 3] and np.isfinite(part["ssim"].values).all()
    assert _chunk_files(fresh, "ssim") == ["c/1/0"]  # sample chunk 1 alone
    done = zarr.open_group(str(fresh), mode="r", use_consolidated=False)["features/complete"][:]
    np.testing.assert_array_equal(done, [False, False, True, True, False, False])
    with pytest.raises(IncompleteRunError, match="0–1, 4–5"):
        load_features(fresh)
    assert np.isnan(load_features(fresh, allow_incomplete=True)["ssim"].sel(sample=[0, 5])).all()
    with pytest.raises(ValueError, match="not aligned.*e.g. samples=0:4"):
        features(fresh, samples=slice(1, 3))
    features(fresh, samples=slice(4, 6))  # the last chunk
    whole = features(fresh)  # finishes chunk 0 only
    assert np.isfinite(whole["ssim"].values).all()


def test_resume_recomputes_only_unmarked_samples(fresh):
    reference = features(fresh)["ssim"].values
    group = _group(fresh)
    group["features/ssim"][1] = -5.0  # planted: recomputed only if sample 1 is redone
    group["features/ssim"][4] = -5.0
    group["features/complete"][4] = False
    again = features(fresh)
    np.testing.assert_allclose(again["ssim"].values[4], reference[4])  # unmarked: recomputed
    np.testing.assert_array_equal(again["ssim"].values[1], -5.0)  # marked: left alone
    mtimes = {p: p.stat().st_mtime_ns for p in (fresh / "features").rglob("c/*/*")}
    features(fresh)  # everything done: only reads
    assert mtimes == {p: p.stat().st_mtime_ns for p in (fresh / "features").rglob("c/*/*")}


def test_overwrite_and_changed_settings(fresh):
    features(fresh, metrics=["ssim", "psnr"])
    with pytest.raises(RunMismatchError, match="overwrite=True"):
        features(fresh, metrics=["ssim"])
    ds = features(fresh, metrics=["ssim"], overwrite=True)
    assert "psnr" not in ds and "ssim" in ds
    assert not (fresh / "features" / "psnr").exists()
    group = _group(fresh)
    group["features/ssim"][0] = -5.0
    group["features/ssim"][2] = -5.0
    ds = features(fresh, metrics=["ssim"], samples=slice(0, 2), overwrite=True)  # a task redoes its chunk
    assert (ds["ssim"].values != -5.0).all()
    assert (load_features(fresh)["ssim"].values[2] == -5.0).all()  # other chunks untouched


def test_a_failed_overwrite_keeps_the_old_features(fresh, monkeypatch):
    """features(overwrite=True) writes the new group beside the old one: an error in the middle loses nothing."""
    from denoisefeat import step_features

    old = features(fresh, metrics=["ssim", "psnr"])
    files = sorted(str(p.relative_to(fresh)) for p in (fresh / "features").rglob("*"))
    real, calls = step_features._compute_samples, []

    def failing(store, todo, **kw):
        calls.append(todo)
        if len(calls) > 1:
            raise OSError(28, "No space left on device (injected)")
        return real(store, todo, **kw)

    monkeypatch.setattr(step_features, "_compute_samples", failing)
    with pytest.raises(OSError, match="injected"):
        features(fresh, metrics=["ssim"], overwrite=True)
    assert len(calls) == 2  # one chunk of the new features was written before the failure
    back = load_features(fresh)
    assert back.attrs == old.attrs and sorted(back.data_vars) == sorted(old.data_vars)
    np.testing.assert_array_equal(back["psnr"].values, old["psnr"].values)
    assert sorted(str(p.relative_to(fresh)) for p in (fresh / "features").rglob("*")) == files
    assert not (fresh / ".features.new").exists() and open_run(fresh).store.damage(decode=True) == []
    monkeypatch.undo()
    assert "psnr" not in features(fresh, metrics=["ssim"], overwrite=True) and not (fresh / ".features.new").exists()


def test_x0_fallback_equals_decoded_images(tmp_path, computed):
    _, with_images = computed
    path = tmp_path / "x0.zarr"
    dft.trace(dft.load_pipeline("tiny-class-unet"), class_labels=LABELS, seed=0, steps=T, batch_size=CHUNK,
              store=path, keep=("xt", "x0"))
    ds = features(path, metrics=["ssim", "edge_density"])
    assert ds.attrs["config"]["source"] == "x0"
    # the pixel pipeline decodes x̂0 as clip(x0 / 2 + 0.5, 0, 1): the same images
    for name in ("ssim", "edge_density", "band_relative_error", "rapsd"):
        np.testing.assert_allclose(ds[name].values, with_images[name].values, rtol=1e-5, atol=1e-6)


def test_errors(fresh, tmp_path):
    with pytest.raises(ValueError, match="No features computed.*denoisefeat analyze"):
        load_features(fresh)
    with pytest.raises(KeyError, match="did you mean ssim"):
        features(fresh, metrics=["sism"])
    with pytest.raises(ValueError, match="ground-truth"):
        features(fresh, metrics=["mask_iou_gt"])
    with pytest.raises(ValueError, match="unknown wavelet"):
        features(fresh, wavelet="haarr")
    with pytest.raises(TypeError, match="slice"):
        features(fresh, samples=[0, 1])
    _group(fresh)["complete"][4] = False  # a killed trace
    with pytest.raises(IncompleteRunError, match="4"):
        features(fresh)
    assert features(fresh, samples=slice(0, 2), metrics=["ssim"])["ssim"].shape == (2, T)


def test_latent_run_without_images_is_refused(tmp_path):
    path = tmp_path / "sd.zarr"
    dft.trace(dft.load_pipeline("tiny-sd"), prompts=["a cat"], seed=0, steps=2, store=path, keep=("x0",))
    with pytest.raises(ValueError, match="latent model"):
        features(path)


def test_callable_module_and_lazy_exports(computed):
    path, ds = computed
    assert dft.features(path)["ssim"].equals(ds["ssim"])  # dft.features(run), as in the design sketch
    assert dft.step_features.load_features is load_features and callable(dft.features)
    assert callable(dft.temporal.profiles)


runner = CliRunner()


def test_cli_analyze(fresh):
    from denoisefeat.cli import app

    result = runner.invoke(app, ["analyze", str(fresh), "--metrics", "ssim,edge_density"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "band_relative_error[low]" in result.output and "edge_density" in result.output
    assert "stabilisation" in result.output
    assert list(load_features(fresh).attrs["config"]["metrics"]) == ["ssim", "edge_density"]
    for args, message in ((["--samples", "1:3"], "not aligned"), (["--samples", "x"], "write A:B"),
                          (["--metrics", "sism"], "did you mean ssim")):
        result = runner.invoke(app, ["analyze", str(fresh), *args])
        assert result.exit_code == 2, result.output
        assert result.output.startswith("error:") and "Traceback" not in result.output
        assert message in result.output


def test_device_path_stores_the_same_features(computed, fresh):
    """features(run, device="cpu"): blocks streamed through torch store what the numpy path stores."""
    _, expected = computed
    got = features(open_run(fresh), device="cpu", batch_size=4)  # 4 images a block: several blocks per chunk
    assert list(got.data_vars) == list(expected.data_vars)
    for name in expected.data_vars:
        np.testing.assert_allclose(got[name].values, expected[name].values, rtol=2e-6, atol=1e-6, err_msg=name)
    with pytest.raises(ValueError, match="device="):
        features(open_run(fresh), device="no-such-device", overwrite=True)
    from denoisefeat.cli import app

    result = CliRunner().invoke(app, ["analyze", str(fresh), "--device", "no-such-device"])
    assert result.exit_code != 0 and "device=" in result.output and "Traceback" not in result.output
