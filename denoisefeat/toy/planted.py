"""A diffusion model whose mechanism is known by construction: the planted-ground-truth denoiser.

Attribution methods (ablation scans, causal tracing, probes, regression) claim that a layer at some
steps "drives" a feature.  Here the claim can be checked, because the denoiser is not learned: it
is the exact posterior mean of a finite data set of DiffShapes images, split into two named modules
that compute the low and the high spatial-frequency band of that mean.

The maths
---------
The forward process of the scheduler is ``x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε`` with ``ε ~ N(0, I)``.
If the data distribution is the uniform distribution on ``N`` images ``x_1 … x_N`` (model space,
``2·pixel − 1``), the posterior over which image was noised is

    p(i | x_t) = softmax_i( −‖x_t − √ᾱ_t x_i‖² / (2 (1 − ᾱ_t)) ),

and the minimum-mean-squared-error denoiser — what a perfectly trained network converges to — is
the posterior mean ``x̂_0(x_t, t) = E[x_0 | x_t] = Σ_i p(i | x_t) x_i``.  With a band split
``x = L(x) + H(x)`` (``L`` a linear low-pass filter, ``H = I − L``), linearity gives

    x̂_0 = Σ_i w_i L(x_i) + Σ_i w_i H(x_i) = layout + detail,     w_i = p(i | x_t).

The denoiser's submodules compute exactly these terms, in this order:

``posterior``   ``w`` (batch, N): the softmax above, from ``x_t`` and ``ᾱ_t``; logits in float64
                with the max subtracted (log-sum-exp), so it is exact from ``ᾱ ≈ 0`` to ``ᾱ ≈ 1``.
``layout``      ``Σ_i w_i L(x_i)`` (batch, 3, H, W): the low band — the object's position, coarse
                shape and mean colour, and the background.
``detail``      ``Σ_i w_i H(x_i)`` (batch, 3, H, W): the high band — fill texture and sharp edges.

The output is the scheduler's prediction of ``x̂_0 = layout + detail``:
``epsilon``: ``(x_t − √ᾱ_t x̂_0) / √(1 − ᾱ_t)``; ``sample``: ``x̂_0``;
``v_prediction``: ``√ᾱ_t ε̂ − √(1 − ᾱ_t) x̂_0``.  The scheduler then recovers ``x̂_0``
(``pred_original_sample -> x_0``) up to rounding.  The ground truth of attribution is
:data:`PLANTED_TRUTH`: shape and colour live in ``layout``, texture and edges in ``detail``;
``posterior`` feeds both (ablating it changes everything).

The band split
--------------
``L`` multiplies the 2-D Fourier transform of each channel by a radial mask ``M(ρ)``, ``ρ`` the
radial frequency in cycles per image (scale-free, like DiffShapes' texture periods, which scale
with the image): ``M = 1`` for ``ρ ≤ ρ_pass``, ``0`` for ``ρ ≥ ρ_stop``, a raised cosine between.
``H`` uses ``1 − M``, computed as ``x − L(x)``, so ``L + H`` is the identity up to one rounding.
The default ``band_cutoff = (1.5, 3.0)`` cycles per image (at 32 px: 0.047 and 0.094 cycles/px)
lies below every DiffShapes texture fundamental — stripes 0.125–0.25 cycles/px, checker periods
6–10 px (fundamentals at √2/period ≥ 0.14 cycles/px radially), dot grids 5–8 px (≥ 0.125) — i.e.
below 4 cycles per image, with a margin for the spread that the object's mask adds to the texture's
spectrum; and above the object's scale (circumradius 7–12 px, 0.7–1.1 cycles per image across
its diameter), so ``L`` holds the object as a blurred blob of the right place, size and colour.
``M(0) = 1``: the mean colour of every region larger than the blur is in ``L``.

Timesteps and noise levels
--------------------------
``ᾱ_t`` is read from the buffer ``alphas_cumprod``, the scheduler's own (built from the same
``num_train_timesteps``/betas), at integer timesteps; non-integer timesteps (Euler-type schedulers
with interpolated timesteps) use ``σ_t = √((1 − ᾱ_t) / ᾱ_t)`` interpolated linearly in ``t``, as
diffusers' Euler schedulers do.  A pipeline whose scheduler has other betas than the denoiser's
config would denoise with the wrong posterior: keep them together (:func:`planted_pipeline`).

Precision
---------
The data set and its bands are float64 buffers, and every module computes in its buffers' dtype:
the planted truth is exact to float64 rounding while the model presents itself as float32
(``ModelMixin.dtype`` is that of ``alphas_cumprod``, the first buffer), so pipelines draw float32
noise and receive float32 predictions.  ``model.to(torch.float32)`` casts the data too (then
``L + H`` reproduces ``x`` to float32 rounding); the posterior logits are float64 always.

Modules hold no state between calls and every module output is a tensor, so hooks can record and
edit them (zero, mean, resample, patch) like any UNet block's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput

__all__ = [
    "PLANTED_TRUTH",
    "BandMean",
    "FactorizedPlantedDenoiser",
    "GaussianBandMean",
    "LinearPlantedDenoiser",
    "PlantedDenoiser",
    "PlantedDenoiserOutput",
    "PosteriorWeights",
    "band_masks",
    "factorized_planted_pipeline",
    "linear_planted_pipeline",
    "planted_pipeline",
]

#: Which module carries each DiffShapes feature, by construction.
PLANTED_TRUTH = {"shape": "layout", "color": "layout", "texture": "detail", "edges": "detail"}

_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def band_masks(size: int, *, cutoff: tuple[float, float] = (1.5, 3.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """The complementary low and high Fourier masks of the planted band split.

    Parameters
    ----------
    size : int
        Height and width of the (square) image.
    cutoff : (float, float)
        ``(ρ_pass, ρ_stop)`` in cycles per image: the low mask is 1 up to ``ρ_pass``, 0 from
        ``ρ_stop``, a raised cosine in between.

    Returns
    -------
    low, high : torch.Tensor of float64, shape (size, size)
        Masks over ``torch.fft.fftfreq`` frequencies (unshifted, as ``torch.fft.fft2`` orders them);
        ``low + high == 1``.
    """
    rho_pass, rho_stop = (float(c) for c in cutoff)
    if not 0.0 <= rho_pass < rho_stop:
        raise ValueError(f"band_cutoff must be (pass, stop) with 0 <= pass < stop, got {cutoff!r}.")
    f = torch.fft.fftfreq(size, dtype=torch.float64) * size  # cycles per image
    rho = torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    ramp = ((rho - rho_pass) / (rho_stop - rho_pass)).clamp(0.0, 1.0)
    low = torch.cos(0.5 * math.pi * ramp) ** 2
    return low, 1.0 - low


def _split_bands(images: torch.Tensor, low_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L(x), x − L(x))`` of float64 images (n, c, h, w)."""
    low = torch.fft.ifft2(torch.fft.fft2(images) * low_mask).real
    return low, images - low


def _alphas_cumprod(num_train_timesteps: int, beta_start: float, beta_end: float, beta_schedule: str) -> torch.Tensor:
    """``ᾱ_t`` of diffusers' DDIMScheduler with this schedule, float32 (the scheduler's own dtype)."""
    from diffusers import DDIMScheduler

    schedule = DDIMScheduler(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                             beta_schedule=beta_schedule)
    return schedule.alphas_cumprod.to(torch.float32).clone()


@dataclass
class PlantedDenoiserOutput(BaseOutput):
    """Output of :class:`PlantedDenoiser`, as diffusers' ``UNet2DOutput``.

    Attributes
    ----------
    sample : torch.Tensor
        The prediction (batch, 3, H, W) of the configured ``prediction_type``.
    """

    sample: torch.Tensor


class PosteriorWeights(torch.nn.Module):
    """``w_i = p(i | x_t)`` over the data set: softmax of ``−‖x_t − √ᾱ x_i‖² / (2(1 − ᾱ))``.

    Parameters
    ----------
    images : torch.Tensor, shape (N, C, H, W)
        The data set in model space; kept as the buffer ``images``.
    """

    def __init__(self, images: torch.Tensor):
        super().__init__()
        self.register_buffer("images", images.clone())

    def forward(self, sample: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        """Posterior weights.

        Parameters
        ----------
        sample : torch.Tensor, shape (B, C, H, W)
            ``x_t``.
        alpha_bar : torch.Tensor, shape (B,)
            ``ᾱ_t`` of each sample (float64).

        Returns
        -------
        torch.Tensor, shape (B, N)
            Rows sum to 1; dtype of the module's buffer (float64 unless cast).
        """
        x = sample.flatten(1).double()  # (B, D)
        data = self.images.flatten(1).double()  # (N, D): x_i
        a = alpha_bar.double()[:, None]
        # −‖x_t − √ᾱ x_i‖² / (2(1−ᾱ)) without the ‖x_t‖² term, which is the same for every i
        logits = (a.sqrt() * (x @ data.T) - 0.5 * a * (data * data).sum(1)[None, :]) / (1.0 - a)
        return torch.softmax(logits, dim=1).to(self.images.dtype)  # softmax subtracts the max


class BandMean(torch.nn.Module):
    """``Σ_i w_i B(x_i)``: the posterior mean of one band ``B`` of the data set.

    Parameters
    ----------
    bands : torch.Tensor, shape (N, C, H, W)
        ``B(x_i)`` for every data set image; kept as the buffer ``bands``.
    """

    def __init__(self, bands: torch.Tensor):
        super().__init__()
        self.register_buffer("bands", bands.clone())

    def forward(self, weights: torch.Tensor) -> torch.Tensor:
        """The band's posterior mean.

        Parameters
        ----------
        weights : torch.Tensor, shape (B, N)
            Posterior weights (:class:`PosteriorWeights`), possibly edited by a hook.

        Returns
        -------
        torch.Tensor, shape (B, C, H, W)
        """
        return torch.einsum("bn,nchw->bchw", weights.to(self.bands.dtype), self.bands)


class PlantedDenoiser(ModelMixin, ConfigMixin):
    """The exact posterior-mean denoiser of a finite DiffShapes data set, split into frequency bands.

    The data set is ``denoisefeat.toy.diffshapes.generate(n_images, seed=seed, size=sample_size,
    labels=labels, n_objects=n_objects, background=background)``, made in ``__init__`` (so the config
    alone rebuilds the model) and kept in buffers, which ``save_pretrained`` writes as well.  See the
    module notes for the maths; submodules ``posterior``, ``layout`` and ``detail``.

    Parameters
    ----------
    n_images : int
        Size ``N`` of the data set (at least 1).
    sample_size : int
        Height and width in pixels (at least 16).
    in_channels : int
        Must be 3 (RGB); a config field because diffusers' pipelines read it.
    seed : int
        DiffShapes seed of the data set.
    labels : list of int, optional
        One DiffShapes condition label per image (fixes shape, colour and texture of each).
    n_objects : int
        Objects per image (1 to 3; 1: one object, whose ground truth DiffShapes returns).
    pairs : str, optional
        A factor of :data:`~denoisefeat.toy.diffshapes.FACTORS`: the data set is then
        ``n_images / 2`` counterfactual pairs (:func:`~denoisefeat.toy.diffshapes.counterfactual_pairs`)
        that differ in exactly that factor — image ``i`` and image ``i + N/2`` are one pair — so that
        a run ending on one image and a run ending on its partner differ in that factor alone (a
        minimal-pair corruption for causal tracing).  Excludes ``labels`` and ``n_objects > 1``.
    background : float, optional
        A flat grey background level in [0, 1] instead of DiffShapes' random low-contrast ones.
    band_cutoff : (float, float)
        ``(ρ_pass, ρ_stop)`` of the low-pass mask in cycles per image (:func:`band_masks`).
    prediction_type : {"epsilon", "sample", "v_prediction"}
        What the output is; the pipeline's scheduler must say the same.
    num_train_timesteps, beta_start, beta_end, beta_schedule
        The noise schedule, as for ``diffusers.DDIMScheduler`` (``alphas_cumprod`` is taken from one).

    Attributes
    ----------
    alphas_cumprod : torch.Tensor, shape (num_train_timesteps,)
        Buffer: the scheduler's ``ᾱ_t``.
    dataset_labels : torch.Tensor of int64, shape (N,)
        Buffer: each image's DiffShapes label (:func:`~denoisefeat.toy.diffshapes.condition_names`).
    posterior, layout, detail : torch.nn.Module
        :class:`PosteriorWeights` (buffer ``images``: the data set) and two :class:`BandMean`
        (buffer ``bands``: ``L(x_i)`` and ``H(x_i)``).
    """

    @register_to_config
    def __init__(
        self,
        n_images: int = 64,
        sample_size: int = 32,
        in_channels: int = 3,
        seed: int = 0,
        labels: list[int] | None = None,
        n_objects: int = 1,
        background: float | None = None,
        band_cutoff: tuple[float, float] = (1.5, 3.0),
        prediction_type: str = "epsilon",
        pairs: str | None = None,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
    ):
        super().__init__()
        from denoisefeat.toy.diffshapes import FACTORS, counterfactual_pairs, generate

        if in_channels != 3:
            raise ValueError(f"PlantedDenoiser makes RGB DiffShapes images: in_channels must be 3, got {in_channels}.")
        if n_images < 1:
            raise ValueError(f"n_images must be at least 1, got {n_images}.")
        if prediction_type not in _PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {', '.join(_PREDICTION_TYPES)}, got {prediction_type!r}.")
        if labels is not None and len(labels) != n_images:
            raise ValueError(f"labels has {len(labels)} entries for n_images={n_images}: give one per image.")
        # registered first: ModelMixin.dtype (what pipelines draw noise in) is the first floating
        # buffer's dtype, float32 as the scheduler's own alphas_cumprod
        alphas_cumprod = _alphas_cumprod(num_train_timesteps, beta_start, beta_end, beta_schedule)
        self.register_buffer("alphas_cumprod", alphas_cumprod)
        if pairs is None:
            batch = generate(n_images, seed=seed, size=sample_size, labels=labels, n_objects=n_objects,
                             background=background)
            pixels, dataset_labels = batch.images, batch.label
        else:
            if pairs not in FACTORS:
                raise ValueError(f"pairs must be one of {', '.join(FACTORS)}, got {pairs!r}.")
            if n_images % 2 or labels is not None or n_objects != 1:
                raise ValueError("pairs needs an even n_images, no labels and n_objects=1.")
            a, b = counterfactual_pairs(n_images // 2, factor=pairs, seed=seed, size=sample_size,
                                        background=background)
            pixels, dataset_labels = np.concatenate([a.images, b.images]), np.concatenate([a.label, b.label])
        images = torch.from_numpy(pixels).double() * 2 - 1  # pixel [0, 1] -> model space [-1, 1]
        low, high = _split_bands(images, band_masks(sample_size, cutoff=tuple(band_cutoff))[0])
        self.register_buffer("dataset_labels", torch.from_numpy(dataset_labels.astype(np.int64)))
        # float64 data (3 × N × 3 × H × W numbers): L(x_i) + H(x_i) = x_i to float64 rounding
        self.posterior = PosteriorWeights(images)
        self.layout = BandMean(low)
        self.detail = BandMean(high)

    # -- noise level ------------------------------------------------------------------------
    def alpha_bar(self, timestep, *, batch: int) -> torch.Tensor:
        """``ᾱ_t`` (float64, shape (batch,)) of a timestep: int, float, 0-d or (batch,) tensor.

        Integer timesteps index ``alphas_cumprod``; others interpolate ``σ_t`` linearly (module notes).
        """
        ac = self.alphas_cumprod.double()
        t = torch.as_tensor(timestep, device=ac.device).double().reshape(-1)
        if t.numel() == 1:
            t = t.expand(batch)
        if t.numel() != batch:
            raise ValueError(f"{t.numel()} timesteps for a batch of {batch}: give one, or one per sample.")
        last = len(ac) - 1
        if (t < 0).any() or (t > last).any():
            raise ValueError(f"timesteps must lie in [0, {last}], got {t.min().item()}..{t.max().item()}.")
        lo = t.floor().long().clamp(max=last)
        hi = (lo + 1).clamp(max=last)
        frac = t - lo.double()
        sigma = ((1 - ac) / ac).sqrt()
        s = sigma[lo] * (1 - frac) + sigma[hi] * frac
        exact = frac == 0
        return torch.where(exact, ac[lo], 1.0 / (1.0 + s * s))

    def forward(self, sample: torch.Tensor, timestep, return_dict: bool = True):
        """Predict from ``x_t`` at ``timestep``, like ``UNet2DModel.forward``.

        Parameters
        ----------
        sample : torch.Tensor, shape (B, 3, H, W)
            ``x_t`` in model space.
        timestep : int, float or torch.Tensor
            One timestep for the batch, or one per sample.
        return_dict : bool
            Return a :class:`PlantedDenoiserOutput` (``.sample``); ``False``: a 1-tuple.

        Returns
        -------
        PlantedDenoiserOutput or tuple of torch.Tensor
            The ``prediction_type`` prediction, dtype and device of ``sample``.
        """
        alpha_bar = self.alpha_bar(timestep, batch=sample.shape[0])  # ᾱ_t, (B,)
        weights = self.posterior(sample, alpha_bar)  # p(i | x_t), (B, N)
        x0 = self.layout(weights) + self.detail(weights)  # x̂_0 = E[x_0 | x_t]
        return _prediction(sample, x0, alpha_bar, self.config.prediction_type, return_dict)

    def dataset_images(self) -> torch.Tensor:
        """The data set in pixel space, (N, 3, H, W) in [0, 1] (float32)."""
        return (self.posterior.images.float() + 1) / 2

    def nearest_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Which data set image each of ``images`` (pixel space, (B, 3, H, W)) is closest to.

        Returns
        -------
        index : torch.Tensor of int64, shape (B,)
        rmse : torch.Tensor of float64, shape (B,)
            Root-mean-square pixel distance to that image.
        """
        data = self.dataset_images().double().flatten(1)
        x = torch.as_tensor(images).double().flatten(1).to(data.device)
        d2 = (x * x).sum(1)[:, None] - 2 * x @ data.T + (data * data).sum(1)[None, :]
        best = d2.argmin(1)
        rmse = (d2.gather(1, best[:, None])[:, 0].clamp(min=0) / x.shape[1]).sqrt()
        return best, rmse


class FactorizedPlantedDenoiser(ModelMixin, ConfigMixin):
    """The exact posterior-mean denoiser of a product data set whose two bands are independent.

    The data set is every sum ``L(a_i) + H(b_j)`` of the low band of a *layout* image ``a_i`` (a
    solid DiffShapes object: shape, colour, position) and the high band of a *detail* image ``b_j``
    (a DiffShapes object drawn sharp or with a soft edge, textured or solid: texture and edge
    sharpness), with ``L`` an ideal low-pass projector (a 0/1 radial Fourier mask, ``ρ <
    band_cutoff`` cycles per image) and ``H = I − L``.  Because ``L`` and ``H`` are orthogonal
    projectors and the noise is white, ``L x_t`` and ``H x_t`` are independent given ``(i, j)`` and
    the posterior factorises:

        E[x_0 | x_t] = Σ_i p(i | L x_t) L(a_i) + Σ_j p(j | H x_t) H(b_j) = layout + detail,

    each term computed from its own band of ``x_t`` only.  So ``layout`` (with ``layout_posterior``)
    carries the information about shape and colour and nothing else, ``detail`` (with
    ``detail_posterior``) the texture and the edges and nothing else — unlike
    :class:`PlantedDenoiser`, whose two bands are linear images of the same posterior weights and
    hence carry the same information (a linear probe cannot tell them apart).  Ablating either module
    never changes the other band of the trajectory: DDIM's update is linear, band by band.

    The two bands of an image come from *different* objects, so the only chromatic boundary of an
    image is the layout object's: a boundary metric such as
    :func:`~denoisefeat.metrics.boundary_width` measures mostly the layout (which layout the run
    ends on explains 0.67 of the final width's variance, the detail's sharpness 0.07; measured in
    ``tests/test_planted_truth.py``), although the sharpness *factor* lives in ``detail``.

    Parameters
    ----------
    n_layouts : int
        Layout images (solid objects), at least 1.
    n_details : int
        Detail images, an even number: ``n_details / 2`` objects drawn sharp and the same objects with a
        soft edge (:func:`~denoisefeat.toy.diffshapes.counterfactual_pairs`, ``edge_sharpness``).
    sample_size, in_channels, seed, background, prediction_type
        As for :class:`PlantedDenoiser`.
    num_train_timesteps, beta_start, beta_end, beta_schedule
        As for :class:`PlantedDenoiser`.
    band_cutoff : float
        The ideal low-pass cutoff in cycles per image.

    Attributes
    ----------
    layout_labels : torch.Tensor of int64, shape (n_layouts,)
        Each layout's DiffShapes label (its shape and colour; texture solid).
    detail_labels : torch.Tensor of int64, shape (n_details,)
        Each detail's DiffShapes label (its texture).
    detail_sharp : torch.Tensor of bool, shape (n_details,)
        Whether the detail's edge is sharp.
    """

    @register_to_config
    def __init__(
        self,
        n_layouts: int = 12,
        n_details: int = 12,
        sample_size: int = 32,
        in_channels: int = 3,
        seed: int = 0,
        background: float | None = None,
        band_cutoff: float = 2.5,
        prediction_type: str = "epsilon",
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
    ):
        super().__init__()
        from denoisefeat.toy.diffshapes import counterfactual_pairs, generate

        _check_rgb_prediction(in_channels, prediction_type)
        if n_layouts < 1 or n_details < 2 or n_details % 2:
            raise ValueError(f"Need n_layouts >= 1 and an even n_details >= 2; got {n_layouts}, {n_details}.")
        if not band_cutoff > 0:
            raise ValueError(f"band_cutoff must be a positive number of cycles per image, got {band_cutoff!r}.")
        self.register_buffer("alphas_cumprod",  # first: ModelMixin.dtype is the first floating buffer's
                             _alphas_cumprod(num_train_timesteps, beta_start, beta_end, beta_schedule))
        f = torch.fft.fftfreq(sample_size, dtype=torch.float64) * sample_size
        low_mask = (torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2) < band_cutoff).double()  # a projector: 0/1
        self.register_buffer("low_mask", low_mask)
        layouts = generate(n_layouts, seed=seed, size=sample_size, textures=["solid"], background=background)
        sharp, soft = counterfactual_pairs(n_details // 2, factor="edge_sharpness", seed=seed + 1, size=sample_size,
                                           background=background)
        details = np.concatenate([sharp.images, soft.images])
        low = self._low(torch.from_numpy(layouts.images).double() * 2 - 1)
        images = torch.from_numpy(details).double() * 2 - 1
        high = images - self._low(images)
        self.register_buffer("layout_labels", torch.from_numpy(layouts.label.astype(np.int64)))
        detail_labels = np.concatenate([sharp.label, soft.label]).astype(np.int64)
        self.register_buffer("detail_labels", torch.from_numpy(detail_labels))
        self.register_buffer("detail_sharp", torch.arange(n_details) < n_details // 2)
        self.layout_posterior = PosteriorWeights(low)
        self.layout = BandMean(low)
        self.detail_posterior = PosteriorWeights(high)
        self.detail = BandMean(high)

    def _low(self, x: torch.Tensor) -> torch.Tensor:
        """``L(x)``: the ideal low band of float64 images (n, c, h, w)."""
        return torch.fft.ifft2(torch.fft.fft2(x.double()) * self.low_mask).real

    alpha_bar = PlantedDenoiser.alpha_bar

    def forward(self, sample: torch.Tensor, timestep, return_dict: bool = True):
        """Predict from ``x_t`` at ``timestep``, like ``UNet2DModel.forward`` (see :class:`PlantedDenoiser`)."""
        alpha_bar = self.alpha_bar(timestep, batch=sample.shape[0])  # ᾱ_t, (B,)
        low = self._low(sample)  # L x_t
        high = sample.double() - low  # H x_t
        # p(i | L x_t) and p(j | H x_t): the posterior factorises over the two independent bands
        x0 = self.layout(self.layout_posterior(low, alpha_bar)) + self.detail(self.detail_posterior(high, alpha_bar))
        return _prediction(sample, x0, alpha_bar, self.config.prediction_type, return_dict)

    def ends(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (layout, detail) indices each of ``images`` (pixel space, (B, 3, H, W)) is closest to."""
        x = torch.as_tensor(images).double() * 2 - 1
        low = self._low(x)
        return (_nearest(low, self.layout.bands), _nearest(x - low, self.detail.bands))


class GaussianBandMean(torch.nn.Module):
    """``B μ + s_b(ᾱ) B(x_t − √ᾱ μ)``: the posterior mean of one band of a Gaussian data set.

    Parameters
    ----------
    mask : torch.Tensor, shape (H, W)
        The band's 0/1 Fourier mask (an orthogonal projector ``B``).
    mean : torch.Tensor, shape (C, H, W)
        The data mean ``μ`` in model space.
    variance : float
        The data's variance ``c_b`` per Fourier coefficient of the band (per pixel of an
        orthonormal basis).
    """

    def __init__(self, mask: torch.Tensor, mean: torch.Tensor, variance: float):
        super().__init__()
        self.register_buffer("mask", mask.double())
        self.register_buffer("mean", mean.double())
        self.variance = float(variance)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``B x`` of float64 images (n, c, h, w)."""
        return torch.fft.ifft2(torch.fft.fft2(x.double()) * self.mask).real

    def forward(self, sample: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        """The band of ``E[x_0 | x_t]``, affine in ``sample``.

        Parameters
        ----------
        sample : torch.Tensor, shape (n, C, H, W)
            ``x_t``.
        alpha_bar : torch.Tensor, shape (n,)
            ``ᾱ_t`` (float64).

        Returns
        -------
        torch.Tensor, shape (n, C, H, W), float64
        """
        a = alpha_bar.double().reshape(-1, 1, 1, 1)
        gain = a.sqrt() * self.variance / (a * self.variance + 1 - a)  # s_b = √ᾱ c_b / (ᾱ c_b + 1 − ᾱ)
        return self.project(self.mean.expand_as(sample)) + gain * self.project(sample.double() - a.sqrt() * self.mean)


class LinearPlantedDenoiser(ModelMixin, ConfigMixin):
    """The exact posterior-mean denoiser of a Gaussian data set: affine in ``x_t``, split into two bands.

    The data are ``x_0 ~ N(μ, c_low L + c_high H)`` with ``μ`` half a DiffShapes image (model space)
    and ``L``, ``H = I − L`` the ideal low / high Fourier projectors (``band_cutoff`` cycles per
    image).  For Gaussian data the posterior mean is affine in ``x_t``, band by band:

        E[x_0 | x_t] = Σ_b B μ + s_b(ᾱ_t) B(x_t − √ᾱ_t μ),   s_b = √ᾱ_t c_b / (ᾱ_t c_b + 1 − ᾱ_t),

    computed by the modules ``layout`` (``b = L``) and ``detail`` (``b = H``).  With DDIM's affine
    update, the final image of a run is then an affine function of either module's output at any
    step: a first-order (attribution patching) estimate of any edit of them, measured by a feature
    that is affine in the image, is exact — the planted truth of gradient-based attribution.

    Parameters
    ----------
    sample_size : int
        Height and width (at least 16).
    in_channels : int
        Must be 3.
    seed : int
        DiffShapes seed of the image ``μ`` is made from.
    variances : (float, float)
        ``(c_low, c_high)``.
    band_cutoff : float
        Cutoff of ``L`` in cycles per image.
    prediction_type, num_train_timesteps, beta_start, beta_end, beta_schedule
        As for :class:`PlantedDenoiser`.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        in_channels: int = 3,
        seed: int = 0,
        variances: tuple[float, float] = (0.02, 0.005),
        band_cutoff: float = 2.5,
        prediction_type: str = "epsilon",
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
    ):
        super().__init__()
        from denoisefeat.toy.diffshapes import generate

        _check_rgb_prediction(in_channels, prediction_type)
        if len(variances) != 2 or min(variances) <= 0:
            raise ValueError(f"variances must be two positive numbers (c_low, c_high), got {variances!r}.")
        self.register_buffer("alphas_cumprod",  # first: ModelMixin.dtype is the first floating buffer's
                             _alphas_cumprod(num_train_timesteps, beta_start, beta_end, beta_schedule))
        f = torch.fft.fftfreq(sample_size, dtype=torch.float64) * sample_size
        low = (torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2) < band_cutoff).double()
        mean = 0.5 * (torch.from_numpy(generate(1, seed=seed, size=sample_size).images[0]).double() * 2 - 1)
        self.layout = GaussianBandMean(low, mean, variances[0])
        self.detail = GaussianBandMean(1.0 - low, mean, variances[1])

    alpha_bar = PlantedDenoiser.alpha_bar

    def forward(self, sample: torch.Tensor, timestep, return_dict: bool = True):
        """Predict from ``x_t`` at ``timestep``, like ``UNet2DModel.forward`` (see :class:`PlantedDenoiser`)."""
        alpha_bar = self.alpha_bar(timestep, batch=sample.shape[0])  # ᾱ_t, (B,)
        x0 = self.layout(sample, alpha_bar) + self.detail(sample, alpha_bar)  # x̂_0 = E[x_0 | x_t]
        return _prediction(sample, x0, alpha_bar, self.config.prediction_type, return_dict)


def linear_planted_pipeline(*, size: int = 32, seed: int = 0, variances: tuple[float, float] = (0.02, 0.005),
                            band_cutoff: float = 2.5):
    """A ``DDIMPipeline`` around a :class:`LinearPlantedDenoiser`: every module's effect is affine.

    Parameters
    ----------
    size, seed, variances, band_cutoff
        As for :class:`LinearPlantedDenoiser` (``size`` is ``sample_size``).

    Returns
    -------
    diffusers.DDIMPipeline
        As :func:`planted_pipeline`'s.
    """
    denoiser = LinearPlantedDenoiser(sample_size=size, seed=seed, variances=[float(v) for v in variances],
                                     band_cutoff=float(band_cutoff))
    return _ddim(denoiser, "epsilon")


def _check_rgb_prediction(in_channels: int, prediction_type: str) -> None:
    if in_channels != 3:
        raise ValueError(f"The planted denoiser makes RGB images: in_channels must be 3, got {in_channels}.")
    if prediction_type not in _PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {', '.join(_PREDICTION_TYPES)}, got {prediction_type!r}.")


def _nearest(x: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    """Index of the row of ``data`` (N, ...) nearest to each of ``x`` (B, ...)."""
    x, data = x.flatten(1), data.double().flatten(1).to(x.device)
    return ((x * x).sum(1)[:, None] - 2 * x @ data.T + (data * data).sum(1)[None, :]).argmin(1)


def _prediction(sample, x0, alpha_bar, kind: str, return_dict: bool):
    """The ``kind`` prediction of x̂_0 at ᾱ_t, in the dtype of ``sample``."""
    a = alpha_bar.reshape(-1, 1, 1, 1)
    xt, x0 = sample.double(), x0.double()
    if kind == "sample":
        out = x0
    else:
        eps = (xt - a.sqrt() * x0) / (1 - a).sqrt()  # ε̂ = (x_t − √ᾱ x̂_0) / √(1 − ᾱ)
        out = eps if kind == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0  # v = √ᾱ ε − √(1−ᾱ) x_0
    out = out.to(sample.dtype)
    return PlantedDenoiserOutput(sample=out) if return_dict else (out,)


def factorized_planted_pipeline(*, n_layouts: int = 12, n_details: int = 12, size: int = 32, seed: int = 0,
                                background: float | None = None, band_cutoff: float = 2.5):
    """A ``DDIMPipeline`` around a :class:`FactorizedPlantedDenoiser` (the built-in ``"planted-factorized"``).

    Parameters
    ----------
    n_layouts, n_details, seed, background, band_cutoff
        As for :class:`FactorizedPlantedDenoiser`.
    size : int
        Image size (``sample_size``).

    Returns
    -------
    diffusers.DDIMPipeline
        As :func:`planted_pipeline`'s.
    """
    denoiser = FactorizedPlantedDenoiser(n_layouts=n_layouts, n_details=n_details, sample_size=size, seed=seed,
                                         background=background, band_cutoff=float(band_cutoff))
    return _ddim(denoiser, "epsilon")


def planted_pipeline(
    *,
    n_images: int = 64,
    size: int = 32,
    seed: int = 0,
    labels: list[int] | None = None,
    n_objects: int = 1,
    background: float | None = None,
    band_cutoff: tuple[float, float] = (1.5, 3.0),
    prediction_type: str = "epsilon",
    pairs: str | None = None,
):
    """A ``DDIMPipeline`` around a :class:`PlantedDenoiser` (the built-in model ``"planted"``).

    Parameters
    ----------
    n_images, seed, labels, n_objects, background, band_cutoff, prediction_type, pairs
        As for :class:`PlantedDenoiser`.
    size : int
        Image size (``sample_size``).

    Returns
    -------
    diffusers.DDIMPipeline
        Its ``unet`` is the planted denoiser; its ``DDIMScheduler`` has the denoiser's noise
        schedule, ``clip_sample=False`` and ``set_alpha_to_one=True`` (the last step lands on x̂_0).
    """
    denoiser = PlantedDenoiser(n_images=n_images, sample_size=size, seed=seed,
                               labels=None if labels is None else [int(v) for v in labels],
                               n_objects=n_objects, background=background,
                               band_cutoff=[float(c) for c in band_cutoff], prediction_type=prediction_type,
                               pairs=pairs)
    return _ddim(denoiser, prediction_type)


def _ddim(denoiser, prediction_type: str):
    """A DDIMPipeline with the denoiser's own noise schedule, no clipping, ending on x̂_0."""
    from diffusers import DDIMPipeline, DDIMScheduler

    c = denoiser.config
    scheduler = DDIMScheduler(num_train_timesteps=c.num_train_timesteps, beta_start=c.beta_start,
                              beta_end=c.beta_end, beta_schedule=c.beta_schedule, clip_sample=False,
                              set_alpha_to_one=True, prediction_type=prediction_type)
    return DDIMPipeline(unet=denoiser.eval(), scheduler=scheduler)
