"""The field's known facts as analyses: each against a constructed case with a known answer, and its bad inputs."""

import numpy as np
import pytest
import torch

from denoisefeat import analyses, trace
from denoisefeat.analyses.facts import FACTS
from denoisefeat.frequency import band_masks
from denoisefeat.models import load_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def toy():
    return load_pipeline("toy")


# -- band_snr -------------------------------------------------------------------------------------

def _images_with_band_power(power: np.ndarray, shape, rng) -> np.ndarray:
    """Real images whose unitary FFT has exactly ``power[band]`` in every bin of each band."""
    masks = band_masks(shape[-2:])
    per_bin = np.tensordot(power, masks.astype(float), axes=1)  # (H, W)
    F = np.fft.fft2(rng.normal(size=shape), norm="ortho")
    return np.fft.ifft2(F / np.abs(F) * np.sqrt(per_bin), norm="ortho").real


@pytest.fixture(scope="module")
def planted_snr_run(toy):
    """A run whose x̂0 has a known power per band and whose x_t is x̂0 noised by the schedule exactly."""
    run = trace(toy, class_labels=list(range(8)), steps=10, keep=("xt", "x0"))
    alpha_bar = run["alpha_bar"].values
    crossings = np.array([3, 5, 7])  # SNR_b = 1 exactly at these steps: C_b = (1 − ᾱ_k) / ᾱ_k
    power = (1 - alpha_bar[crossings]) / alpha_bar[crossings]
    rng = np.random.default_rng(0)
    x0 = _images_with_band_power(power, (8, 3, 32, 32), rng)
    xt = (np.sqrt(alpha_bar)[None, :, None, None, None] * x0[:, None]
          + np.sqrt(1 - alpha_bar)[None, :, None, None, None] * rng.normal(size=(8, 10, 3, 32, 32)))
    group = run.store.group
    group["x0"][...] = np.broadcast_to(x0[:, None], group["x0"].shape).astype(np.float32)
    group["xt"][...] = xt.astype(np.float32)
    return run, power, crossings


def test_band_snr_matches_the_planted_band_power(planted_snr_run):
    run, power, crossings = planted_snr_run
    ds = analyses.band_snr(run, n_boot=200)
    alpha_bar = run["alpha_bar"].values
    expected = alpha_bar[:, None] * power[None, :] / (1 - alpha_bar[:, None])
    np.testing.assert_allclose(ds["snr_scheduler"].values, expected, rtol=1e-5)
    np.testing.assert_allclose(ds["crossing"].sel(source="scheduler", stat="estimate").values, crossings, atol=1e-3)
    measured = ds["crossing"].sel(source="measured")
    assert np.all(np.abs(measured.sel(stat="estimate").values - crossings) < 0.5)
    assert np.all(measured.sel(stat="ci_low").values <= measured.sel(stat="estimate").values)
    # the pooled measured SNR estimates the schedule's: its noise energy is chi-square with k = 216 degrees of
    # freedom in the low band (9 bins x 3 channels x 8 samples), a relative sd of sqrt(2/k) ~ 0.1 per step
    log_ratio = np.log(ds["snr_pooled"].values / expected)
    assert np.all(np.abs(log_ratio) < 0.3) and np.all(np.abs(log_ratio.mean(axis=0)) < 0.06)
    gap = ds["summary"]
    assert abs(float(gap.sel(stat="estimate")) - (crossings[-1] - crossings[0])) < 0.5
    assert float(gap.sel(stat="ci_low")) > 0 and float(gap.sel(stat="p")) < 0.05


def test_band_snr_reference_set_and_bad_input(planted_snr_run, toy):
    run, _, crossings = planted_snr_run
    reference = run["x0"].values[:, -1]
    ds = analyses.band_snr(run, reference=reference[:4], n_boot=200)
    np.testing.assert_allclose(ds["crossing"].sel(source="scheduler", stat="estimate").values, crossings, atol=1e-3)
    with pytest.raises(ValueError, match="reference must be"):
        analyses.band_snr(run, reference=reference[:, :2], n_boot=200)
    images_only = trace(toy, class_labels=[0, 1], steps=3, keep=("images",))
    with pytest.raises(ValueError, match="keep including 'xt' and 'x0'"):
        analyses.band_snr(images_only)


@pytest.mark.filterwarnings("ignore:EulerDiscreteScheduler cannot clip")
@pytest.mark.parametrize("scheduler", ["euler", "dpm++"])
def test_band_snr_brings_every_sample_convention_to_variance_preserving(toy, scheduler):
    """Euler holds x_t = x0 + σ·ε (rescaled by 1/√(1 + σ²); the test fails without it), DPM-Solver a VP sample
    whose noise level comes from its sigmas: on real trajectories the measured SNR agrees with the schedule's in
    the mid and high bands.  (The low band does not on Euler: the toy model needs x̂0 clipping, which Euler lacks.)"""
    run = trace(toy, class_labels=[0, 1, 2, 3], steps=6, keep=("xt", "x0"), scheduler=scheduler)
    ds = analyses.band_snr(run, n_boot=50)
    log_ratio = np.log(ds["snr_pooled"] / ds["snr_scheduler"]).sel(band=["mid", "high"])
    assert float(np.abs(log_ratio).max()) < 0.3


def test_crossing_step_interpolates_in_log_snr():
    from denoisefeat.analyses.coarse_to_fine import crossing_step

    snr = np.array([[0.01, 0.1, 10.0, 100.0], [2.0, 3.0, 4.0, 5.0], [0.1, 0.2, 0.3, 0.4]])
    np.testing.assert_allclose(crossing_step(snr), [1.5, 0.0, np.inf])


# -- step_similarity ------------------------------------------------------------------------------

def _rotating(n, steps, channels, size, rates, rng) -> np.ndarray:
    """Per sample, a unit map turning from u to v by ``rates[i]·s²`` radians at step s: known adjacent cosines."""
    out = np.empty((n, steps, channels, size, size))
    angles = np.arange(steps) ** 2
    for i in range(n):
        u, v = np.linalg.qr(rng.normal(size=(channels * size * size, 2)))[0].T
        for s in range(steps):
            theta = rates[i] * angles[s]
            out[i, s] = (np.cos(theta) * u + np.sin(theta) * v).reshape(channels, size, size)
    return out


def test_step_similarity_recovers_planted_cosines(toy):
    n, steps = 4, 6
    run = trace(toy, class_labels=list(range(n)), steps=steps, keep=(),
                record={"mid_block": "full", "up_blocks.2": "full", "up_blocks.1": "channel_mean"})
    rng = np.random.default_rng(1)
    deep_rates, high_rates = np.array([0.01, 0.02, 0.015, 0.005]), np.array([0.05, 0.08, 0.06, 0.07])
    acts = run.store.group["acts"]
    for layer, planted in (("mid_block", _rotating(n, steps, 96, 8, deep_rates, rng)),
                           ("up_blocks.2", _rotating(n, steps, 32, 32, high_rates, rng))):
        array = acts[layer]["full"]  # (sample, branch, step, ...): the toy model samples with guidance
        array[...] = np.broadcast_to(planted[:, None], array.shape).astype(np.float32)
    ds = analyses.step_similarity(run, ["mid_block", "up_blocks.2"], n_boot=200)

    s = np.arange(1, steps)
    delta = s**2 - (s - 1) ** 2  # angle between steps s and s − 1, per unit rate
    expected_deep = np.cos(deep_rates[:, None] * delta[None])
    np.testing.assert_allclose(ds["cosine"].sel(layer="mid_block").values, expected_deep, atol=1e-5)
    mean = ds["similarity"].sel(layer="mid_block", stat="estimate").values
    np.testing.assert_allclose(mean, expected_deep.mean(0), atol=1e-5)
    late = s >= steps / 2
    difference = (expected_deep[:, late].mean(1) - np.cos(high_rates[:, None] * delta[None])[:, late].mean(1))
    summary = ds["summary"]
    np.testing.assert_allclose(float(summary.sel(stat="estimate")), difference.mean(), atol=1e-5)
    assert float(summary.sel(stat="ci_low")) < difference.mean() < float(summary.sel(stat="ci_high"))
    assert ds.attrs["deep"] == ["mid_block"] and ds.attrs["high_resolution"] == ["up_blocks.2"]

    with pytest.raises(ValueError, match="averages the spatial layout away"):
        analyses.step_similarity(run, ["mid_block", "up_blocks.1"])
    with pytest.raises(KeyError, match="No activations recorded"):
        analyses.step_similarity(run, ["down_blocks.0"])


# -- skip_spectrum --------------------------------------------------------------------------------

def test_skip_spectrum_splits_a_known_backbone_and_skip(toy):
    """The mid block's output (the backbone of up_blocks.0.resnets.0) is made constant and the last skip
    (down_blocks.2's attention output) a checkerboard: all low band vs all high band."""
    unet = toy.unet

    def constant(module, args, output):
        return torch.ones_like(output)

    def checkerboard(module, args, output):
        y, x = torch.meshgrid(torch.arange(output.shape[-2]), torch.arange(output.shape[-1]), indexing="ij")
        return torch.ones_like(output) * (-1.0) ** (y + x).to(output.dtype)

    handles = [unet.mid_block.register_forward_hook(constant),
               unet.down_blocks[2].attentions[0].register_forward_hook(checkerboard)]
    try:
        ds = analyses.skip_spectrum(toy, layers="up_blocks.0", class_labels=[0, 1], steps=2)
    finally:
        for handle in handles:
            handle.remove()
    share = ds["share"].sel(layer="up_blocks.0.resnets.0")
    np.testing.assert_allclose(share.sel(part="backbone", band="low").values, 1.0, atol=1e-12)
    np.testing.assert_allclose(share.sel(part="skip", band="high").values, 1.0, atol=1e-12)
    energy = ds["energy"].sel(layer="up_blocks.0.resnets.0").sum("band")
    np.testing.assert_allclose(energy.sel(part="backbone").values, 96 * 8 * 8)  # ones: energy = elements
    np.testing.assert_allclose(energy.sel(part="skip").values, 96 * 8 * 8)
    assert list(ds["layer"].values) == ["up_blocks.0.resnets.0", "up_blocks.0.resnets.1"]
    assert ds["channels"].sel(layer="up_blocks.0.resnets.0").values.tolist() == [96, 96]
    np.testing.assert_allclose(ds["high_gap"].sel(layer="up_blocks.0.resnets.0", stat="estimate"), 1.0, atol=1e-12)


def test_skip_spectrum_on_a_text_to_image_unet_and_bad_layers(tiny_pipes):
    sd = tiny_pipes["tiny-sd"]
    ds = analyses.skip_spectrum(sd, prompts=["a red square", "a blue circle"], steps=2)
    unet = sd.unet
    for layer in ds["layer"].values:
        in_channels = dict(unet.named_modules())[layer].in_channels
        assert int(ds["channels"].sel(layer=layer).sum()) == in_channels
    np.testing.assert_allclose(ds["share"].sum("band").values, 1.0)
    assert np.isfinite(ds["summary"].values[:3]).all()
    for bad in ("mid_block", "down_blocks.0", "up_blocks.0.resnets.0"):
        with pytest.raises(ValueError, match="is not an up block"):
            analyses.skip_spectrum(sd, layers=bad, prompts=["a", "b"], steps=2)
    with pytest.raises(ValueError, match="no up_blocks"):
        analyses.skip_spectrum(tiny_pipes["tiny-dit"], class_labels=[0, 1], steps=2)


# -- perturbation_timing --------------------------------------------------------------------------

def test_noise_kick_draws_one_unit_noise_per_sample_seed():
    from denoisefeat.analyses.perturbation import NoiseKick

    kick = NoiseKick(strength=0.5, noise_scale=2.0, seeds=(3, 4, 5))
    x = torch.zeros(3, 3, 32, 32)
    added = kick(slice(0, 3), x)
    np.testing.assert_array_equal(kick(slice(1, 3), x[1:]), added[1:])  # a sample's noise does not depend on its batch
    z = added.numpy() / (0.5 * 2.0)
    assert abs(z.std() - 1) < 0.03 and abs(z.mean()) < 0.03
    assert not np.allclose(z[0], z[1])
    other = NoiseKick(strength=0.5, noise_scale=2.0, seeds=(3, 4, 5), noise_seed=1)(slice(0, 3), x)
    assert not torch.equal(other, added)


def test_perturbation_timing_goes_on_from_the_clean_prefix(toy):
    """A run that goes on from the clean run's kept state (unperturbed) ends on the clean images; the
    perturbed runs cost only their remaining steps."""
    from denoisefeat.analyses.perturbation import _initial_state
    from denoisefeat.options import RunOptions
    from denoisefeat.trajectory import DenoisingLoop, PrefixCache

    request, scheduler = RunOptions(class_labels=[0, 1], steps=4).request(toy, decode=False)
    loop = DenoisingLoop(toy, request, scheduler)
    prefixes = PrefixCache([2])
    clean = loop.run(slice(0, 2), prefixes=prefixes)
    np.testing.assert_allclose(loop.run(slice(0, 2), start=prefixes.state(slice(0, 2), 2)), clean, atol=1e-6)
    np.testing.assert_allclose(loop.run(slice(0, 2), start=_initial_state(loop, slice(0, 2))), clean, atol=1e-6)
    table = analyses.perturbation_timing(toy, class_labels=[0, 1], steps=4, at_steps=[2], features=["bands"])
    assert table.attrs["denoiser_calls"] == 4 + 2  # the clean run, then steps 2 and 3 only


def test_perturbation_timing_null_strength_is_exactly_zero_and_ranks(toy):
    table = analyses.perturbation_timing(toy, class_labels=[0, 1, 2], steps=3, at_steps=[0, 2], strength=1e-30,
                                         features=["bands", "edges"])
    analyses.validate(table)
    assert set(table["method"]) == {"perturbation:noise"} and set(table["layer"]) == {"x_t"}
    assert (table["effect"] == 0).all() and (table["p"] == 1).all()
    assert table[["step_start", "step_stop"]].drop_duplicates().values.tolist() == [[0, 1], [2, 3]]
    top = analyses.rank(table, feature="band_error:high", top=1)  # rank knows the method's direction
    assert len(top) == 1


def test_perturbation_timing_on_the_toy_model_and_bad_steps(toy):
    table = analyses.perturbation_timing(toy, class_labels=[0, 1, 2], steps=4, features=["bands"])
    assert sorted(set(table["step_start"])) == [0, 1, 2, 3]  # the default grid: min(5, T) even steps
    high = table[table["feature"] == "band_error:high"].set_index("step_start")
    assert (high["effect"] > 0).all() and (high["ci_low"] <= high["effect"]).all()
    summary = table.attrs["summary"]
    assert (summary["first_step"], summary["last_step"]) == (0, 3)
    assert summary["ci_low"] <= summary["estimate"] <= summary["ci_high"]
    for bad in ([4], [-1]):
        with pytest.raises(ValueError, match="outside the run's steps 0…3"):
            analyses.perturbation_timing(toy, class_labels=[0, 1], steps=4, at_steps=bad)
    with pytest.raises(ValueError, match="strength must be positive"):
        analyses.perturbation_timing(toy, class_labels=[0, 1], steps=4, strength=0)


# -- all four on one model: the report's "Known facts" section and `denoisefeat facts` -------------

def _facts_items(html: str) -> dict[str, dict]:
    import re

    items = {}
    for attrs, text in re.findall(r'<li (data-fact="[^>]*)>(.*?)</li>', html):
        fields = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', attrs))
        items[fields.pop("fact")] = {**fields, "text": text}
    return items


@pytest.mark.parametrize("model", ["toy", "tiny-sd"])
def test_known_facts_report_section_shows_the_analysis_numbers(model, toy, tiny_pipes, tmp_path):
    from denoisefeat.viz.report import build_report

    pipe = toy if model == "toy" else tiny_pipes["tiny-sd"]
    conditions = {"class_labels": [0, 1, 2]} if model == "toy" else {"prompts": ["a red square", "a blue disc", "a"]}
    facts = analyses.known_facts(pipe, steps=3, n_boot=50, **conditions)
    path = build_report(facts.run, tmp_path / "facts.html", facts=facts)
    items = _facts_items(path.read_text(encoding="utf-8"))
    outputs = {"coarse_to_fine": facts.band_snr["summary"], "skip_high_frequency": facts.skip_spectrum["summary"],
               "deep_blocks_settle": facts.step_similarity["summary"]}
    assert list(items) == list(FACTS)
    for key, item in items.items():
        for stat in ("estimate", "ci_low", "ci_high", "p"):
            expected = (float(outputs[key].sel(stat=stat)) if key in outputs
                        else float(facts.perturbation_timing.attrs["summary"][stat]))
            np.testing.assert_equal(float(item[stat.replace("_", "-")]), expected)
        estimate, ci_low = float(item["estimate"]), float(item["ci-low"])
        if np.isfinite(estimate):
            assert f"{estimate:+.3g}" in item["text"]  # the sentence is worded from the same number
        shows = "This model shows it" in item["text"]
        assert shows == (ci_low > 0) == (item["holds"] == "True")
    assert 'id="facts"' in path.read_text(encoding="utf-8")


def test_facts_command_writes_the_report(tmp_path):
    from typer.testing import CliRunner

    from denoisefeat.cli import app

    result = CliRunner().invoke(app, ["facts", "tiny-unet", "-n", "3", "--steps", "3", "--n-boot", "50",
                                      "--out", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert (tmp_path / "facts.html").is_file() and (tmp_path / "facts.zarr").is_dir()
    for key in FACTS:
        assert f"{key}: " in result.output
    result = CliRunner().invoke(app, ["facts", "tiny-unet", "-n", "3", "--steps", "3", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "exists" in result.output  # the store is not replaced without --overwrite
