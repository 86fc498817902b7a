"""The planted-ground-truth model: its modules compute the exact posterior mean, split into bands."""

import copy

import numpy as np
import pytest
import torch

from denoisefeat.hooks import Edit, list_layers
from denoisefeat.models import load_pipeline
from denoisefeat.toy.diffshapes import COLORS, SHAPES, condition_label, generate
from denoisefeat.toy.planted import PLANTED_TRUTH, _split_bands, band_masks, planted_pipeline
from denoisefeat.trajectory import trace

N_IMAGES = 24
STEPS = 25


@pytest.fixture(scope="module")
def pipe():
    pipe = planted_pipeline(n_images=N_IMAGES, seed=3)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _brute_force_x0(x_t: np.ndarray, alpha_bar: np.ndarray, data: np.ndarray) -> np.ndarray:
    """Σ_i softmax_i(−‖x_t − √ᾱ x_i‖² / (2(1−ᾱ))) x_i, the full squared distance, float64."""
    out = []
    for x, a in zip(x_t, alpha_bar):
        d2 = ((x[None] - np.sqrt(a) * data) ** 2).sum(axis=(1, 2, 3))
        logits = -d2 / (2 * (1 - a))
        w = np.exp(logits - logits.max())
        out.append(np.tensordot(w / w.sum(), data, axes=1))
    return np.stack(out)


@pytest.mark.parametrize("dtype", [None, torch.float64, torch.float32])
def test_modules_compute_the_exact_posterior_mean(pipe, dtype):
    model = pipe.unet if dtype is None else copy.deepcopy(pipe.unet).to(dtype)
    data = model.posterior.images.double().numpy()
    tol = 1e-10 if model.posterior.images.dtype == torch.float64 else 2e-5  # as built: float64 data
    dtype = model.dtype  # float32 as built: what pipelines feed it
    rng = np.random.default_rng(0)
    for t in (999, 700, 400, 150, 40, 0):
        a = float(model.alphas_cumprod[t])
        # noised data set images (a non-trivial posterior) and pure noise
        x0 = data[rng.integers(0, N_IMAGES, 3)]
        x_t = np.concatenate([np.sqrt(a) * x0 + np.sqrt(1 - a) * rng.standard_normal(x0.shape),
                              rng.standard_normal((1, *x0.shape[1:]))])
        sample = torch.from_numpy(x_t).to(dtype)
        expected = _brute_force_x0(sample.double().numpy(), np.full(len(x_t), a), data)
        with torch.no_grad():
            w = model.posterior(sample, model.alpha_bar(t, batch=len(x_t)))
            layout, detail = model.layout(w), model.detail(w)
            eps = model(sample, torch.tensor(t), return_dict=False)[0]
            assert eps.dtype == dtype
            eps = eps.double()
        assert torch.allclose(w.sum(1).double(), torch.ones((), dtype=torch.float64), atol=tol)
        np.testing.assert_allclose((layout + detail).double().numpy(), expected, atol=tol, rtol=0)
        # the epsilon output (in the sample's dtype) predicts that x̂0: invert it as the scheduler does
        x0_from_eps = (sample.double() - np.sqrt(1 - a) * eps) / np.sqrt(a)
        eps_tol = 1e-10 if dtype == torch.float64 else 4e-6 * np.sqrt((1 - a) / a) + 1e-6
        np.testing.assert_allclose(x0_from_eps.numpy(), expected, atol=eps_tol, rtol=0)


def test_timesteps_as_ints_tensors_and_per_sample(pipe):
    model = pipe.unet
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        per_sample = model(x, torch.tensor([900, 500, 10])).sample
        for i, t in enumerate((900, 500, 10)):
            torch.testing.assert_close(per_sample[i : i + 1], model(x[i : i + 1], t).sample)
            torch.testing.assert_close(per_sample[i : i + 1], model(x[i : i + 1], torch.tensor(float(t))).sample)
    ac = model.alphas_cumprod.double()
    halfway = model.alpha_bar(10.5, batch=1)  # interpolated σ, between its neighbours
    assert ac[11] < halfway[0] < ac[10]
    with pytest.raises(ValueError, match="timesteps"):
        model(x, torch.tensor([1, 2]))


def test_band_split_is_complete_and_holds_what_it_should(pipe):
    model = pipe.unet
    low_mask, high_mask = band_masks(32)
    torch.testing.assert_close(low_mask + high_mask, torch.ones(32, 32, dtype=torch.float64))
    assert low_mask[0, 0] == 1 and high_mask[0, 0] == 0
    # L + H is the identity on the stored data set; H has zero mean: the mean colour is all in L
    torch.testing.assert_close(model.layout.bands + model.detail.bands, model.posterior.images, atol=1e-6, rtol=0)
    assert model.detail.bands.double().mean(dim=(2, 3)).abs().max() < 1e-6
    # texture: same objects drawn solid and textured; the texture's oscillation is in H
    n = 20
    shapes, colors = np.arange(n) % len(SHAPES), np.arange(n) % len(COLORS)
    solid = generate(n, seed=5, background=0.5, labels=[condition_label(SHAPES[s], COLORS[c], "solid")
                                                        for s, c in zip(shapes, colors)])
    for texture in ("stripes", "checker", "dots"):
        textured = generate(n, seed=5, background=0.5, labels=[condition_label(SHAPES[s], COLORS[c], texture)
                                                               for s, c in zip(shapes, colors)])
        diff = torch.from_numpy(textured.images - solid.images).double()
        mask = torch.from_numpy(textured.mask).double()[:, None]
        oscillation = diff - mask * (diff * mask).sum((2, 3), keepdim=True) / mask.sum((2, 3), keepdim=True)
        low, high = _split_bands(oscillation, low_mask)
        assert (high**2).sum() / (oscillation**2).sum() > 0.95, texture
    # shape and colour: a solid object on a flat background is mostly low band; its edges are high band
    objects = torch.from_numpy(solid.images - 0.5).double()
    low, high = _split_bands(objects, low_mask)
    assert (low**2).sum() / (objects**2).sum() > 0.7
    edge_energy = (high**2).sum(1)
    edges = torch.from_numpy(solid.edges)
    assert edge_energy[edges].mean() > 3 * edge_energy[~edges].mean()
    assert set(PLANTED_TRUTH.values()) == {"layout", "detail"}


def test_ddim_ends_on_a_data_set_image_and_trace_equals_the_pipeline(pipe):
    assert [layer.name for layer in list_layers(pipe)] == ["posterior", "layout", "detail"]
    run = trace(pipe, samples=4, steps=STEPS, seed=0, record={"posterior": "full", "layout": "channel_mean"})
    final = run.dataset["final"].values
    generators = [torch.Generator().manual_seed(s) for s in range(4)]
    expected = pipe(batch_size=4, generator=generators, num_inference_steps=STEPS, output_type="np").images
    np.testing.assert_allclose(final, expected.transpose(0, 3, 1, 2), atol=2e-5)
    index, rmse = pipe.unet.nearest_image(torch.from_numpy(final))
    assert rmse.max() < 1e-3  # the exact posterior mean of a finite set memorises
    weights = run.acts("posterior", "full").values[:, -1]  # (sample, N) at the last step: one-hot
    np.testing.assert_array_equal(weights.argmax(1), index.numpy())
    assert weights.max(1).min() > 0.999
    assert run.acts("layout", "channel_mean").shape == (4, STEPS, 3)


def test_ablating_a_band_at_the_last_step_removes_exactly_that_band(pipe):
    # DDIM's last step lands on x̂0 (set_alpha_to_one): with one band zeroed there, the final image is
    # the other band of the data set image the trajectory ends on
    clean = trace(pipe, samples=2, steps=10, seed=7, keep=())
    index, _ = pipe.unet.nearest_image(torch.from_numpy(clean.dataset["final"].values))
    for kept, zeroed in (("layout", "detail"), ("detail", "layout")):
        run = trace(pipe, samples=2, steps=10, seed=7, keep=(), intervene=Edit(zeroed, "zero", steps=[9]))
        band = getattr(pipe.unet, kept).bands[index].numpy()
        np.testing.assert_allclose(run.dataset["final"].values, np.clip(band / 2 + 0.5, 0, 1), atol=1e-5)


def test_load_pipeline_and_save_pretrained_round_trip(tmp_path):
    pipe = load_pipeline("planted")
    assert type(pipe).__name__ == "DDIMPipeline" and pipe.unet.config.n_images == 64
    assert pipe.scheduler.config.clip_sample is False and pipe.scheduler.config.prediction_type == "epsilon"
    pipe.save_pretrained(tmp_path / "planted")
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in (tmp_path / "planted").rglob("*"))
    loaded = load_pipeline(tmp_path / "planted")
    assert type(loaded.unet) is type(pipe.unet)
    public = [{k: v for k, v in unet.config.items() if not k.startswith("_")} for unet in (pipe.unet, loaded.unet)]
    assert public[0] == public[1]
    for (key, a), b in zip(pipe.unet.state_dict().items(), loaded.unet.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=key, atol=0, rtol=0)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded.unet(x, 300).sample, pipe.unet(x, 300).sample, atol=0, rtol=0)


def test_factorized_model_is_the_exact_posterior_mean_of_its_product_set():
    """planted-factorized: x̂0 equals a brute-force posterior mean over every L(a_i) + H(b_j), and each band
    of x̂0 depends on its own band of x_t only."""
    from denoisefeat.toy.planted import FactorizedPlantedDenoiser

    model = FactorizedPlantedDenoiser(n_layouts=3, n_details=4)
    low, high = model.layout.bands, model.detail.bands
    assert torch.allclose(model._low(low), low, atol=1e-12) and torch.allclose(model._low(high), 0 * high, atol=1e-12)
    product = (low[:, None] + high[None, :]).reshape(-1, *low.shape[1:])  # (i, j) -> i * 4 + j
    rng = torch.Generator().manual_seed(0)
    for t in (999, 600, 200, 20):
        ab = model.alphas_cumprod.double()[t]
        noise = torch.randn(product[5].shape, generator=rng, dtype=torch.float64)
        x_t = ab.sqrt() * product[5] + (1 - ab).sqrt() * noise
        logits = -((x_t[None] - ab.sqrt() * product) ** 2).flatten(1).sum(1) / (2 * (1 - ab))
        expected = torch.einsum("n,nchw->chw", torch.softmax(logits, 0), product)
        eps = model(x_t[None].float(), t, return_dict=False)[0].double()[0]
        got = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()  # x̂0 from the ε prediction
        np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=2e-4 / ab.sqrt().item())
    # the detail's posterior ignores the low band of x_t entirely
    x = torch.randn(2, 3, 32, 32, generator=rng)
    moved = x + model._low(torch.randn(2, 3, 32, 32, generator=rng).double()).float()
    ab = model.alphas_cumprod.double()[[300, 300]]
    np.testing.assert_allclose(model.detail_posterior(x.double() - model._low(x), ab).numpy(),
                               model.detail_posterior(moved.double() - model._low(moved), ab).numpy(), atol=1e-6)
    assert load_pipeline("planted-factorized").unet.config.n_layouts == 12
