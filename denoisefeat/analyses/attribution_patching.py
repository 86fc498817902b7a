"""Attribution patching: a first-order estimate of every layer × step ablation from one backward pass.

An exact ablation scan (:func:`~denoisefeat.analyses.ablation_scan`) runs one edited trajectory per
(layer, step window).  Attribution patching (Nanda 2023; Syed, Rager & Conmy 2023) estimates all of
them at once with a first-order Taylor expansion: replacing the output ``a`` of layer ``l`` at step
``s`` by ``a'`` changes a feature ``F`` of the final image by

    ΔF ≈ Σ_elements (a' − a) · ∂F/∂a,

per sample, and ablating a window of steps by the sum of its steps' terms.  ``∂F/∂a`` runs through the
whole sampling chain: step ``s``'s denoiser call, its scheduler step, every later step, the decoding of
the final sample and the feature.

What it is exact for, and what not: a single step's estimate is exact when the feature's descriptor
is affine in that step's layer output (tested on the affine planted model,
:func:`denoisefeat.toy.planted.linear_planted_pipeline`).  A window's sum is first order in each
step's edit separately, but a replacement at a later step of the window overrides what the earlier
ones changed in that layer's output, so even an affine model's joint window edit differs from the
sum.  Large edits at early steps are where the first order is worst: x̂0 there amplifies ε̂ by up to
``√((1 − ᾱ)/ᾱ)`` (``docs/pitfalls/x0-amplification.md``), and a memorising model (the planted
posterior mean) has almost no gradient there while an exact ablation changes which image it makes.
Check the ranking with :func:`attribution_study`.

Two estimators
--------------
``estimator="first_order"`` (the default) is attribution patching proper: the edited step is
linearised too, so every layer's estimate comes from the same backward pass.  Where the edit is large
(a whole block zeroed), most of the first order's error is inside the edited denoiser call, not in
the steps after it.  ``estimator="exact_step"`` therefore runs each (layer, step) edit's step exactly
(one denoiser call without a graph, from the clean state) and carries only its change of the next
sample, ``Δx_{s+1}``, through the rest of the chain to first order: ``ΔF ≈ λ_{s+1} · Δx_{s+1}`` with
the adjoint ``λ_{s+1} = ∂φ/∂x_{s+1}`` the backward pass computes anyway (the AtP* idea of recomputing
the worst-linearised part exactly, Kramár et al. 2024).  It costs one denoiser call per layer and
step (against about ``T − s`` for the exact scan's cell, prefix-cached) and is exact for an edit at
the last step whatever the denoiser (tested on a planted model quadratic in one module there).  On
the toy model's 7 blocks × 5 windows it ranks like the exact scan where the first order does not
(the README's table).  A window's estimate is the sum of its steps' in both.

The backward pass
-----------------
Memory stays bounded by one step's activations plus the chain's states: the clean trajectory runs
once without a graph, keeping its loop state before every step
(:class:`denoisefeat.trajectory.PrefixCache`); then, from the last step to the first, each step is
run again from its state under :func:`torch.enable_grad`
(:meth:`denoisefeat.trajectory.DenoisingLoop.step_from`) with hooks that expose the layers' outputs,
and the adjoint ``λ_s = ∂F/∂x_s`` is carried back one vector–Jacobian product at a time:
``(λ_s, ∂F/∂a_{l,s}) = vjp(step_s, λ_{s+1})``.  One denoiser evaluation forward, one recomputation
and one backward pass per step and per feature component, whatever the number of layers.

Disruption and specificity
--------------------------
The exact scans rank by specificity, ``|effect_std| / disruption``, with ``disruption`` the mean L2
change of the whole final image (over the clean samples' RMS distance): the most specific cause,
not the block that breaks everything.  The same first order gives the image's change ``ΔI`` of every
cell, but its norm would need one backward pass per pixel.  A sketch needs a few: with standard
normal probes ``r_j`` over the image, ``E[(r_j · ΔI)²] = ‖ΔI‖²``, and each ``r_j · I`` is one more
component carried back with the features (``disruption_probes``, default 4; an unbiased estimate of
``‖ΔI‖²`` per sample with relative standard deviation ``√(2 / probes)``, its mean over ``n`` samples
about ``1 / √(2 × probes × n)`` relative error in the norm).  It is exact in expectation wherever the
estimate is (an affine model: tested against the exact scan), and as approximate as the effects
elsewhere.

Features
--------
Each feature is linearised through a smooth *descriptor* ``φ`` of the final image (``k`` numbers per
sample, one backward pass each) and a *change* ``D``: the estimated feature change is
``D(φ_clean + Σ_s J_s (a' − a), φ_clean)``, so a feature whose descriptor is affine in the edited
activation is estimated exactly, distances included (:data:`DIFFERENTIABLE_FEATURES`):

* the reference-free differentiable device metrics (:data:`denoisefeat.metrics.DIFFERENTIABLE_METRICS`
  whose reference is nothing; ``boundary_width`` is the ``edges`` group): ``φ`` the metric, ``D`` the
  difference;
* ``object_color_distance`` (the ``color`` group; a median over a mask, not differentiable) via
  the surrogate ``φ`` = CIELAB of the *mean* normalised colour over the clean object's interior,
  ``D`` = CIEDE2000 (:func:`denoisefeat.metrics.device.object_descriptors`);
* ``texture_spectrum_distance`` (``texture``; an L1 distance between spectra, whose gradient vanishes
  at the clean image) via ``φ`` = the total power of the spectrum's bins (of the absolute luminance
  contrast), ``D = |Δφ|`` (a lower bound of the L1 distance: ``|Σ_k Δ_k| ≤ Σ_k |Δ_k|``);
* ``object_mask_iou`` (``shape``; a thresholded mask) via the smooth object map ``m`` of
  :func:`~denoisefeat.metrics.device.object_descriptors` (0 on the background, about 1 on the
  object, unclamped): ``φ_j = r_j · m / (‖m_clean‖ √p)`` for :data:`SHAPE_PROBES` fixed standard
  normal maps ``r_j``, ``D = −‖Δφ‖``, a sketch of ``−‖m − m_clean‖ / ‖m_clean‖``.  For binary
  masks that is ``−√(|A Δ B| / |B|)``: it counts the pixels that leave the mask and those that join
  it alike, as the IoU's symmetric difference does, where a soft IoU (the first surrogate) lets a
  boundary that moves out here and in there cancel, and ranked worse (0.92 against 0.95 for the
  sketch with 4 or 8 probes, each surrogate's exact change vs the metric's over the toy model's 7
  blocks × 5 windows).

How well each surrogate ranks like its metric is measured by the two-stage study
(:func:`attribution_study`) against the exact scan of the metric itself.  Metrics that compare with
the clean image (``ssim``, ``psnr``, …; an extremum there, gradient 0) and thresholded metrics
without a surrogate are refused (:class:`NonDifferentiableFeatureError`).  A mapping ``{name:
callable}`` adds features of your own: ``callable(images) -> (n,)`` tensor, differentiable.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from denoisefeat.analyses.ablation import ABLATION_METHODS, ablation_scan
from denoisefeat.analyses.inference import float_resolution, floor_changes, t_inference
from denoisefeat.analyses.table import benjamini_hochberg, rank, specificity, validate, write_attribution
from denoisefeat.hooks import Edit, intervene, resolve_layers
from denoisefeat.hooks.layers import first_tensor, probe_layers
from denoisefeat.metrics import FEATURE_GROUPS, METRICS
from denoisefeat.metrics.device import (
    DIFFERENTIABLE_METRICS,
    device_metrics,
    lab_delta_e2000,
    object_descriptors,
)
from denoisefeat.models import denoiser_of
from denoisefeat.options import RunOptions
from denoisefeat.progress import progress_bar
from denoisefeat.steps import step_windows
from denoisefeat.store import replacement
from denoisefeat.trajectory import DenoisingLoop, PrefixCache, trace

__all__ = [
    "DIFFERENTIABLE_FEATURES",
    "DISRUPTION_PROBES",
    "ESTIMATORS",
    "PATCHING_METHODS",
    "SHAPE_PROBES",
    "GraphBreakError",
    "LayerOutputError",
    "NonDifferentiableFeatureError",
    "agreement",
    "attribution_patching",
    "feature_changes",
    "attribution_study",
]

#: What replaces a layer's output: the methods of :func:`~denoisefeat.analyses.ablation_scan`
#: (:data:`~denoisefeat.analyses.ablation.ABLATION_METHODS`, the same :class:`denoisefeat.hooks.Edit`
#: computing the replacement); ``identity`` is the null control: every estimate exactly 0.
PATCHING_METHODS = ABLATION_METHODS

#: How an edit's effect is carried to the final image (module notes): ``first_order`` linearises the
#: whole chain, the edited step included (attribution patching proper: one backward pass for every
#: layer); ``exact_step`` computes each (layer, step) edit's change of the next sample exactly (one
#: more denoiser call per layer and step) and linearises only the steps after it.
ESTIMATORS = ("first_order", "exact_step")


class NonDifferentiableFeatureError(ValueError):
    """A feature without a gradient at the clean image and without a smooth surrogate."""


class LayerOutputError(ValueError):
    """A layer whose output carries no tensor to differentiate."""


class GraphBreakError(ValueError):
    """A scheduler or denoiser whose steps cannot be differentiated (detached, in-place, multistep history)."""


# ---------------------------------------------------------------------------------------------
# Features: descriptor φ (n, k) and change D(φ̂, φ_clean) (n,)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Feature:
    name: str
    components: int
    descriptor: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    change: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    surrogate: str | None = None


def _difference(estimated, clean):
    return (estimated - clean)[:, 0]


def _metric(name: str) -> _Feature:
    return _Feature(name, 1, lambda x, ref: device_metrics(x, names=[name])[name][:, None], _difference)


def _color_change(estimated, clean):
    return lab_delta_e2000(estimated, clean)


def _texture_change(estimated, clean):
    return (estimated - clean).abs()[:, 0]


#: Random projections of the smooth object map that sketch how far it moves (``object_mask_iou``'s
#: surrogate, module notes): 4 give a relative error of 35 % per sample, 1 / √(8 n) over n samples
#: (ranked like the metric: 0.945 over the toy model's 35 block-window ablations, 0.948 with 8).
SHAPE_PROBES = 4

#: Entropy of the probes' seeds, so that they are not the noise a run draws from a small seed (a probe
#: equal to sample 0's initial noise correlates with what the model draws from it).
_PROBE_ENTROPY = 0x9E3779B97F4A7C15

#: Default number of image-space probes that estimate each cell's disruption (module notes).
DISRUPTION_PROBES = 4


def _normal_probes(shape: tuple[int, ...], *stream: int) -> torch.Tensor:
    """Standard normal float64 probes of ``shape``, one fixed seed per ``stream`` (module notes).

    Streams: ``(0, first sample, j)`` the ``j``-th image-space probe of a sample chunk (the
    disruption's); ``(1,)`` the object-map probes (the shape sketch's, fixed per shape).
    """
    seed = int(np.random.SeedSequence([_PROBE_ENTROPY, *stream]).generate_state(1, dtype=np.uint64)[0])
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _shape_sketch(images, reference):
    """``r_j · m / (‖m_ref‖ √probes)`` of the smooth object map ``m`` (n, probes)."""
    maps = object_descriptors(images, reference)["object_map"]
    size = object_descriptors(reference, reference)["object_map"].flatten(1).norm(dim=1).clamp(min=1e-6)
    probes = _normal_probes((SHAPE_PROBES, *maps.shape), 1).to(maps.device, maps.dtype)
    return torch.einsum("pnhw,nhw->np", probes, maps) / (size[:, None] * math.sqrt(SHAPE_PROBES))


def _shape_change(estimated, clean):
    """Minus the sketched relative L2 change of the object map, ``−‖m − m_ref‖ / ‖m_ref‖``."""
    return -torch.sqrt(((estimated - clean) ** 2).sum(dim=1))


_SURROGATES: dict[str, _Feature] = {
    "object_color_distance": _Feature(
        "object_color_distance", 3, lambda x, ref: object_descriptors(x, ref)["color"], _color_change,
        "CIEDE2000 between the Lab of the mean (not median) normalised object colours"),
    "texture_spectrum_distance": _Feature(
        "texture_spectrum_distance", 1, lambda x, ref: object_descriptors(x, ref)["texture_energy"],
        _texture_change, "|change of the total texture-spectrum power| (a lower bound of the L1 distance)"),
    "object_mask_iou": _Feature(
        "object_mask_iou", SHAPE_PROBES, _shape_sketch, _shape_change,
        f"minus the relative L2 change of the smooth object map, from {SHAPE_PROBES} random projections"),
}

#: Features attribution patching estimates: the reference-free differentiable device metrics and the
#: metrics with a smooth surrogate (module notes).
DIFFERENTIABLE_FEATURES: tuple[str, ...] = (
    *(n for n in DIFFERENTIABLE_METRICS if METRICS[n].needs_reference is None), *_SURROGATES)


def _custom(name: str, func: Callable) -> _Feature:
    def descriptor(x, ref):
        value = func(x)
        if not torch.is_tensor(value) or value.shape != x.shape[:1]:
            raise ValueError(f"Feature {name!r} must return a tensor of shape ({x.shape[0]},), one value per image.")
        return value[:, None]

    return _Feature(name, 1, descriptor, _difference)


def _resolve(features) -> list[_Feature]:
    """Feature groups, names and ``{name: callable}`` into linearisable features; refuse the others."""
    if isinstance(features, Mapping):
        return [_custom(str(name), func) for name, func in features.items()]
    names: list[str] = []
    for feature in [features] if isinstance(features, str) else list(features):
        for name in FEATURE_GROUPS.get(feature, (feature,)):
            if name not in names:
                names.append(name)
    if not names:
        raise ValueError("No features given: name groups (edges, texture, shape, color) or metrics.")
    out = []
    for name in names:
        if name in _SURROGATES:
            out.append(_SURROGATES[name])
        elif name in DIFFERENTIABLE_FEATURES:
            out.append(_metric(name))
        elif name in METRICS:
            why = ("compares with the clean image, where it is an extremum (gradient 0)"
                   if name in DIFFERENTIABLE_METRICS else "is not differentiable (thresholds, bins or masks)")
            raise NonDifferentiableFeatureError(
                f"Feature {name!r} {why} and has no smooth surrogate; attribution patching estimates "
                f"{', '.join(DIFFERENTIABLE_FEATURES)} (or pass {{name: differentiable callable}}); "
                "use ablation_scan for the others.")
        else:
            raise ValueError(f"Unknown feature {name!r}; groups: {', '.join(FEATURE_GROUPS)}; "
                             f"features: {', '.join(DIFFERENTIABLE_FEATURES)}.")
    return out


def _descriptors(features: list[_Feature], images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Every feature's descriptor side by side: (n, Σ k)."""
    return torch.cat([f.descriptor(images, reference).reshape(len(images), f.components) for f in features], dim=1)


def _changes(features: list[_Feature], estimated: torch.Tensor, clean: torch.Tensor) -> dict[str, np.ndarray]:
    """Each feature's change from descriptors (..., n, Σ k): {name: (..., n)}."""
    out, start = {}, 0
    lead = estimated.shape[:-2]
    for f in features:
        stop = start + f.components
        est = estimated[..., start:stop].reshape(-1, f.components)
        ref = clean[..., start:stop].expand_as(estimated[..., start:stop]).reshape(-1, f.components)
        out[f.name] = f.change(est, ref).reshape(*lead, estimated.shape[-2]).double().cpu().numpy()
        start = stop
    return out


def feature_changes(images, reference, *, features=("edges", "texture", "shape", "color")) -> dict[str, np.ndarray]:
    """Each feature's change from ``reference`` to ``images``, measured as attribution patching measures it.

    What the first-order estimate approximates: ``D(φ(images), φ(reference))`` with each feature's
    descriptor ``φ`` and change ``D`` (module notes), the surrogate's where the metric has one.
    Comparing it with the metric's own change on exactly edited images checks how well a surrogate
    ranks like its metric, apart from the first-order error.

    Parameters
    ----------
    images, reference : array_like or torch.Tensor, shape (n, 3, H, W)
        RGB in [0, 1] (e.g. ablated and clean final images of the same samples).
    features : str, sequence of str or mapping
        As for :func:`attribution_patching`.

    Returns
    -------
    dict of str to numpy.ndarray
        ``{feature: (n,) changes}``, float64.
    """
    feats = _resolve(features)
    x, ref = (torch.as_tensor(np.asarray(a, dtype=np.float64)) for a in (images, reference))
    with torch.no_grad():
        return _changes(feats, _descriptors(feats, x, ref).double(), _descriptors(feats, ref, ref).double())


# ---------------------------------------------------------------------------------------------
# The chain's backward pass
# ---------------------------------------------------------------------------------------------
class _Exposed:
    """Forward hooks that put a graph node in place of each layer's output and keep its replacement."""

    def __init__(self, denoiser, layers: list[str], replacements: dict):
        self.modules = dict(denoiser.named_modules())
        self.layers, self.replacements = layers, replacements
        self.outputs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def _hook(self, layer: str):
        def hook(module, args, output):
            tensor = first_tensor(output)
            if tensor is None or not (torch.is_tensor(output) or isinstance(output, (tuple, list))):
                raise LayerOutputError(
                    f"Layer {layer!r} returned {type(output).__name__}, not a tensor or a tuple starting with one: "
                    "there is no output to differentiate; name a module that returns a tensor.")
            with torch.no_grad():
                edited = self.replacements[layer](module, args, output)
                alt = tensor if edited is None else first_tensor(edited)
            node = tensor.clone()  # the graph node ∂F/∂a is taken at (in-place edits downstream raise)
            self.outputs.setdefault(layer, []).append((node, alt.detach()))
            return node if torch.is_tensor(output) else type(output)((node, *output[1:]))

        return hook

    def __enter__(self):
        self.handles = []
        try:
            for layer in self.layers:
                self.handles.append(self.modules[layer].register_forward_hook(self._hook(layer)))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        return False


class _Replaced:
    """A forward hook that replaces one layer's output by its edit (the exact step of ``exact_step``)."""

    def __init__(self, module, replacement):
        self.module, self.replacement = module, replacement

    def _hook(self, module, args, output):
        edited = self.replacement(module, args, output)
        return output if edited is None else edited

    def __enter__(self):
        self.handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()
        return False


def _per_sample(values: torch.Tensor, n: int) -> torch.Tensor:
    """Rows (n or 2n under guidance, either branch order) → per-sample sums (n,)."""
    flat = values.flatten(1).sum(dim=1)
    return flat if flat.shape[0] == n else flat.reshape(-1, n).sum(dim=0)


@contextlib.contextmanager
def _graph_errors():
    """autograd's in-place errors as :class:`GraphBreakError`."""
    try:
        yield
    except RuntimeError as err:
        if "inplace" in str(err) or "in-place" in str(err):
            raise GraphBreakError(
                f"The step updates a tensor in place that the gradient needs ({err}); attribution patching needs "
                "a denoiser and a scheduler step without in-place updates of graph tensors.") from err
        raise


def _vjp(output: torch.Tensor, inputs: list[torch.Tensor], cotangent, *, retain: bool):
    with _graph_errors():
        return torch.autograd.grad(output, inputs, grad_outputs=cotangent, retain_graph=retain, allow_unused=True)


#: Scheduler attributes that hold past model outputs or derivatives between steps (multistep and
#: second-order solvers): a step then depends on earlier steps' outputs, not on x_t alone.
_HISTORY = ("model_outputs", "ets", "derivatives", "prev_derivative")


def _check_markov(scheduler) -> None:
    kept = [name for name in _HISTORY if hasattr(scheduler, name)]
    if kept:
        raise GraphBreakError(
            f"{type(scheduler).__name__} keeps past model outputs between steps ({', '.join(kept)}): each step depends "
            "on earlier denoiser calls, which a step-by-step backward pass does not differentiate; use a one-step "
            "scheduler (ddim, ddpm, euler, euler-ancestral).")


@dataclass
class _Chunk:
    estimates: torch.Tensor  # (layer, window, n, Σ k): the estimated change of φ
    clean: torch.Tensor  # (n, Σ k): φ of the clean final images
    images: torch.Tensor  # (n, 3, H, W): the clean final images


def _chunk(loop: DenoisingLoop, samples: slice, layers: list[str], windows: list[tuple[int, int]],
           features: list[_Feature], replacements, advance, *, estimator: str, probes: int) -> _Chunk:
    """The clean run of one sample chunk, then its backward pass step by step.

    The adjoints carried back are the descriptors' components, then ``probes`` random projections
    ``r_j · image`` of the final image (the disruption's sketch, module notes).
    """
    n_steps = loop.n_steps
    prefixes = PrefixCache(range(1, n_steps))
    with torch.no_grad():
        loop.run(samples, prefixes=prefixes, advance=advance)
    states = [loop.initial_state(samples)] + [prefixes.state(samples, s) for s in range(1, n_steps)]
    with torch.no_grad():  # the final sample (the clean run's last step again: one more call)
        final = loop.step_from(samples, states[-1]).detach()
        images = loop.to_images(final)
    with torch.enable_grad():  # λ = ∂φ_j/∂x_final, one backward pass per component j
        final.requires_grad_(True)
        final_images = loop.to_images(final)
        phi = _descriptors(features, final_images, images)
        outputs = [phi[:, j].sum() for j in range(phi.shape[1])]
        outputs += [(_normal_probes(images.shape, 0, samples.start, j).to(images.device, torch.float32)
                     * final_images.float()).sum() for j in range(probes)]
        n, k = phi.shape[0], len(outputs)
        adjoint = [_vjp(out, [final], None, retain=j < k - 1)[0] for j, out in enumerate(outputs)]
    estimates = torch.zeros(len(layers), len(windows), n, k, dtype=torch.float64)
    denoiser = loop.family.denoiser
    first_order = estimator == "first_order"
    for s in reversed(range(n_steps)):
        containing = [w for w, (start, stop) in enumerate(windows) if start <= s < stop]
        if not first_order and containing:  # each layer's edited step exactly, then λ_{s+1} · Δx_{s+1}
            clean_next = final.detach() if s == n_steps - 1 else states[s + 1].x
            step_terms = _exact_step(loop, samples, states[s], clean_next, layers, replacements, adjoint)
            for w in containing:
                estimates[:, w] += step_terms
        x = states[s].x.detach().requires_grad_(True)
        with _Exposed(denoiser, layers, replacements) as exposed, torch.enable_grad(), _graph_errors():
            x_next = _checked(loop.step_from(samples, replace(states[s], x=x)), step=s)
        pairs = [(i, node, alt) for i, layer in enumerate(layers) for node, alt in exposed.outputs.get(layer, [])]
        inputs = [x] + ([node for _, node, _ in pairs] if first_order else [])
        for j in range(k):
            grads = _vjp(x_next, inputs, adjoint[j], retain=j < k - 1)
            for (i, node, alt), g in zip(pairs if first_order else [], grads[1:], strict=True):
                if g is not None:  # first order: the steps' terms add up over a window
                    term = _per_sample(((alt - node.detach()) * g).double(), n).cpu()
                    for w in containing:
                        estimates[i, w, :, j] += term
            adjoint[j] = torch.zeros_like(x) if grads[0] is None else grads[0]
        if advance is not None:
            advance()
    return _Chunk(estimates, phi.detach().double().cpu(), images.float())


def _exact_step(loop: DenoisingLoop, samples: slice, state, clean_next: torch.Tensor, layers: list[str],
                replacements, adjoint: list[torch.Tensor]) -> torch.Tensor:
    """``λ_{s+1,j} · (x_{s+1}(edited) − x_{s+1})`` per layer, sample and component ``j``: (layer, n, k).

    Each layer's edited step runs exactly from the clean state, without a graph.
    """
    modules = dict(loop.family.denoiser.named_modules())
    n = clean_next.shape[0]
    out = torch.zeros(len(layers), n, len(adjoint), dtype=torch.float64)
    for i, layer in enumerate(layers):
        with torch.no_grad(), _Replaced(modules[layer], replacements[layer]):
            delta = loop.step_from(samples, state) - clean_next
        for j, lam in enumerate(adjoint):
            out[i, :, j] = _per_sample((delta * lam).double(), n).cpu()
    return out


def _checked(x_next: torch.Tensor, *, step: int) -> torch.Tensor:
    if not x_next.requires_grad or x_next.grad_fn is None:
        raise GraphBreakError(
            f"The sample after step {step} carries no autograd graph: the scheduler step (or the denoiser) detaches "
            "its result or runs under torch.no_grad; attribution patching needs a differentiable step "
            "(use DDIM, DDPM or Euler-type schedulers).")
    return x_next


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------
def _layers(pipe, layers) -> list[str]:
    names = resolve_layers(pipe, layers)
    order = probe_layers(denoiser_of(pipe), names, size=None)[1]
    return sorted(names, key=lambda name: order.get(name, len(order)))


def _scale_and_resolution(features, images: torch.Tensor, resolution: float):
    """Each feature's between-sample scale (RMS change to another clean sample) and float resolution."""
    with torch.no_grad():
        clean = _descriptors(features, images, images).double()
        other = torch.roll(images, 1, dims=0)
        between = _changes(features, _descriptors(features, other, images).double(), clean)
        floor = dict.fromkeys(between, 0.0)
        generator = torch.Generator().manual_seed(0)
        for _ in range(2):
            noise = (torch.rand(images.shape, generator=generator, dtype=images.dtype) * 2 - 1) * resolution
            noisy = torch.clamp(images + noise.to(images.device), 0.0, 1.0)
            changed = _changes(features, _descriptors(features, noisy, images).double(), clean)
            for name, value in changed.items():
                floor[name] = max(floor[name], float(np.nanmax(np.abs(value))))
    scale = {name: float(np.sqrt(np.nanmean(value**2))) for name, value in between.items()}
    return scale, floor


def _disruption(projections: torch.Tensor, images: torch.Tensor, resolution: float) -> np.ndarray:
    """Each cell's estimated mean L2 change of the final image over the clean samples' RMS distance.

    ``projections`` (layer, window, sample, probes) are ``r_j · ΔI`` for standard normal ``r_j``, so
    ``mean_j (r_j · ΔI)²`` estimates ``‖ΔI‖²`` without bias; NaN without probes, 0 for a change whose
    norm is within the images' float resolution (so unchanged for the exact scans too, whose floor is
    the largest change of one pixel).
    """
    if projections.shape[-1] == 0:
        return np.full(projections.shape[:2], np.nan)
    flat = images.double().flatten(1)
    image_scale = float(torch.sqrt(((torch.roll(flat, 1, dims=0) - flat) ** 2).sum(dim=1).mean()))
    if not image_scale > resolution:
        raise ValueError("All clean samples are the same image: use other seeds or conditions.")
    norms = torch.sqrt((projections.double() ** 2).mean(dim=-1))  # (layer, window, sample)
    norms = torch.where(norms > resolution, norms, torch.zeros_like(norms))  # surely unchanged everywhere
    return (norms.mean(dim=-1) / image_scale).numpy()


def _table(pipe, loop: DenoisingLoop, options: RunOptions, layer_names: list[str], pairs, feats: list[_Feature],
           replacements, *, method: str, estimator: str, probes: int, alpha: float, progress: bool,
           traced_calls: int) -> pd.DataFrame:
    """The estimate's attribution table: every chunk's backward pass, then one row per (feature, layer, window).

    ``traced_calls``: the denoiser calls of the clean run written to the store, counted in the attrs.
    """
    chunks = loop.chunks(options.batch_size)
    k = sum(f.components for f in feats)
    with progress_bar(progress, total=2 * len(chunks) * loop.n_steps, label="attribution patching") as advance:
        parts = [_chunk(loop, samples, layer_names, pairs, feats, replacements, advance, estimator=estimator,
                        probes=probes) for samples in chunks]
    estimates = torch.cat([p.estimates for p in parts], dim=2)  # (layer, window, sample, Σ k + probes)
    clean = torch.cat([p.clean for p in parts])
    images = torch.cat([p.images for p in parts])
    resolution = float_resolution(denoiser_of(pipe).dtype)
    scale, floor = _scale_and_resolution(feats, images, resolution)
    disruption = _disruption(estimates[..., k:], images, resolution)
    flat = [name for name in scale if not scale[name] > 2 * floor[name]]
    if flat:
        raise ValueError(f"Features {flat} do not vary between the clean samples (between-sample scale within float "
                         "resolution), so their standardised effect is undefined: use samples that differ (other "
                         "seeds or conditions) or leave these features out.")
    rows = []
    for i, layer in enumerate(layer_names):
        for w, (start, stop) in enumerate(pairs):
            changes = _changes(feats, clean + estimates[i, w, :, :k], clean)
            moved = float(disruption[i, w])
            for f in feats:
                d = floor_changes(changes[f.name], resolution=floor[f.name])
                result = t_inference(d, alpha=alpha)
                std = result.estimate / scale[f.name]
                rows.append(dict(feature=f.name, layer=layer, step_start=start, step_stop=stop,
                                 method=f"attribution_patching:{method}", effect=result.estimate,
                                 ci_low=result.ci_low, ci_high=result.ci_high, p=result.p, n=len(d),
                                 effect_std=std, disruption=moved,
                                 specificity=specificity(abs(std), moved),
                                 scale=scale[f.name], resolution=floor[f.name], surrogate=f.surrogate or "",
                                 estimator=estimator))
    frame = pd.DataFrame(rows)
    frame.insert(frame.columns.get_loc("n"), "p_adj", benjamini_hochberg(frame["p"]))
    frame["n"] = frame["n"].astype(np.int64)
    backward, calls = len(chunks) * loop.n_steps * (k + probes), loop.calls + traced_calls
    frame.attrs.update(alpha=alpha, ci_level=1 - alpha, inference="t", image_resolution=resolution,
                       estimator=estimator, components=k, disruption_probes=probes, denoiser_calls=calls,
                       backward_passes=backward, denoiser_equivalents=calls + 2 * backward)
    validate(frame)
    return frame


def attribution_patching(
    pipe,
    *,
    layers,
    windows=None,
    method: str = "zero",
    features=("edges", "texture", "shape", "color"),
    estimator: str = "first_order",
    disruption_probes: int = DISRUPTION_PROBES,
    alpha: float = 0.05,
    store=None,
    overwrite: bool = False,
    progress: bool = False,
    **run,
) -> pd.DataFrame:
    """Estimate, per sample, the effect of ablating each layer at each step from one backward pass.

    Parameters
    ----------
    pipe : diffusers.DiffusionPipeline
        A pipeline :func:`denoisefeat.trace` runs, with a scheduler whose step is differentiable.
    layers : str or sequence of str
        Module paths or globs (:func:`denoisefeat.hooks.resolve_layers`); each must return a tensor
        (or a tuple starting with one, whose first element is replaced, as :class:`~denoisefeat.hooks.Edit`
        does).
    windows : int or sequence of (int, int), optional
        Step windows to aggregate into (:func:`denoisefeat.steps.step_windows`; a window's estimate is
        the sum of its steps'); default every loop step on its own.
    method : str
        One of :data:`PATCHING_METHODS`: what replaces the output.
    features : str, sequence of str or mapping
        Groups or names of :data:`DIFFERENTIABLE_FEATURES`, or ``{name: callable(images) -> (n,)}``
        (module notes).
    estimator : str
        One of :data:`ESTIMATORS` (module notes): ``"first_order"`` linearises the edited step too
        (cheapest: no call per layer); ``"exact_step"`` runs each layer's edited step exactly (one
        more denoiser call per layer and step of a window) and linearises only the steps after it.
    disruption_probes : int
        Random projections of the final image carried back with the features (one more backward pass
        per step each) to estimate how far each cell moves the whole image (``disruption``, module
        notes; relative error about ``1 / √(2 × probes × samples)``); 0 leaves ``disruption`` and
        ``specificity`` NaN.
    alpha : float
        Rows carry ``1 − alpha`` t-intervals of the mean estimate, dual to the t-test that gives ``p``.
    store : str or path, optional
        Write the clean trajectory there (every step, :func:`denoisefeat.trace`: one more clean run) and
        the table under ``attribution/attribution_patching``.
    overwrite : bool
        Replace an existing ``store``.
    progress : bool
        Show a progress bar over the steps.
    **run
        The run options of :func:`denoisefeat.trace` (as for :func:`~denoisefeat.analyses.ablation_scan`;
        20 steps and 8 samples by default).

    Returns
    -------
    pandas.DataFrame
        An attribution table (:mod:`denoisefeat.analyses.table`), ``method ==
        "attribution_patching:<method>"``, one row per (feature, layer, window).  Per sample ``i`` the
        estimated change ``d_i = D(φ_i + Σ_{s∈window} Σ (a' − a)·∂φ_i/∂a, φ_i)`` (module notes), set to
        0 within the feature's float resolution; ``effect`` its mean, ``ci_low``/``ci_high``/``p`` the
        t-interval and t-test (:func:`~denoisefeat.analyses.inference.t_inference`), ``p_adj``
        Benjamini-Hochberg over the table; ``effect_std = effect / scale`` with ``scale`` the
        feature's RMS change between two clean samples (as the exact scans); ``disruption`` the
        estimated mean L2 change of the whole final image over the RMS L2 distance between two clean
        samples (as the exact scans; from the random projections, module notes) and ``specificity =
        |effect_std| / disruption`` (NaN without probes).  Extra columns: ``scale``, ``resolution``, ``surrogate`` (the
        surrogate's description, or ``""``), ``estimator``.  ``attrs``: ``alpha``, ``ci_level``,
        ``inference``, ``estimator``, ``components`` (``Σ k``), ``denoiser_calls`` (forward calls:
        the clean run, its last step again, the recomputation of every step, the exact edited steps
        of ``exact_step``, and the clean run written to ``store``),
        ``disruption_probes``, ``backward_passes`` (one per step and component, probes included)
        and ``denoiser_equivalents`` (``denoiser_calls + 2 × backward_passes``, a backward pass
        costing about two forward ones).

    Raises
    ------
    NonDifferentiableFeatureError
        A feature without gradient and surrogate (before anything runs).
    ValueError
        Besides bad arguments: a feature that does not vary between the clean samples (its
        standardised effect is undefined).
    LayerOutputError
        A layer whose output is not a tensor.
    GraphBreakError
        A scheduler step (or denoiser) that breaks the graph: detached results, in-place updates.
    """
    if method not in PATCHING_METHODS:
        raise ValueError(f"Unknown method {method!r}; valid: {', '.join(PATCHING_METHODS)}.")
    if estimator not in ESTIMATORS:
        raise ValueError(f"Unknown estimator {estimator!r}; valid: {', '.join(ESTIMATORS)}.")
    if not isinstance(disruption_probes, (int, np.integer)) or isinstance(disruption_probes, bool) \
            or disruption_probes < 0:
        raise ValueError(f"disruption_probes must be a non-negative number of probes, got {disruption_probes!r}.")
    feats = _resolve(features)
    layer_names = _layers(pipe, layers)
    conditioned = any(run.get(name) is not None for name in ("samples", "class_labels", "prompts"))
    options = RunOptions.of(run, caller="attribution_patching",
                            defaults={"steps": 20, **({} if conditioned else {"samples": 8})})
    request, scheduler = options.request(pipe, decode=False)
    _check_markov(scheduler)
    loop = DenoisingLoop(pipe, request, scheduler)
    if request.n_samples < 2:
        raise ValueError(f"Paired statistics need at least 2 samples, got {request.n_samples}.")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}.")
    pairs = step_windows(loop.n_steps if windows is None else windows, loop.n_steps)
    editor = intervene(pipe, [Edit(layer=layer, method=method) for layer in layer_names], clock=loop.clock)
    with replacement(store, overwrite=overwrite) as target:  # an old store stays until the table is written
        if target is not None:  # first: a store in the way fails before the backward passes
            trace(pipe, store=target, overwrite=overwrite, progress=progress, **vars(options))
        traced = 0 if target is None else loop.n_steps * len(loop.chunks(options.batch_size))
        frame = _table(pipe, loop, options, layer_names, pairs, feats, editor.layer_hooks(), method=method,
                       estimator=estimator, probes=int(disruption_probes), alpha=alpha, progress=progress,
                       traced_calls=traced)
        if target is not None:
            write_attribution(target, frame, name="attribution_patching", overwrite=overwrite)
    return frame


# ---------------------------------------------------------------------------------------------
# Two-stage study
# ---------------------------------------------------------------------------------------------
def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import stats

    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 3 or np.ptp(a[keep]) == 0 or np.ptp(b[keep]) == 0:
        return math.nan
    return float(stats.spearmanr(a[keep], b[keep]).statistic)


def agreement(estimated: pd.DataFrame, exact: pd.DataFrame) -> dict[str, dict]:
    """How well attribution-patching estimates agree with exact ablations of the same cells.

    Parameters
    ----------
    estimated, exact : pandas.DataFrame
        Attribution tables (:func:`attribution_patching`, :func:`~denoisefeat.analyses.ablation_scan`)
        sharing (feature, layer, window) cells.

    Returns
    -------
    dict of str to dict
        Per feature: ``spearman`` (rank correlation of the two effects over the shared cells; None
        with fewer than 3 or a constant side), ``spearman_disruption`` and ``spearman_specificity``
        (the same for those columns; None without disruption estimates), ``n_cells``,
        ``top_exact`` (``"layer@start:stop"`` of the exact scan's top cell by ``|effect_std|``) and
        ``top_agrees`` (whether the estimate's top cell among the shared ones is that cell).
    """
    keys = ["feature", "layer", "step_start", "step_stop"]
    values = ["effect", "effect_std", "disruption", "specificity"]
    merged = validate(estimated)[[*keys, *values]].merge(
        validate(exact)[[*keys, *values]], on=keys, suffixes=("_estimated", "_exact"))
    out = {}
    for feature, rows in merged.groupby("feature", sort=False):
        est, ex = rows["effect_estimated"].to_numpy(float), rows["effect_exact"].to_numpy(float)

        def top(values, frame=rows):
            scores = np.nan_to_num(np.abs(values), nan=-np.inf)
            r = frame.iloc[int(np.argmax(scores))]
            return f"{r.layer}@{int(r.step_start)}:{int(r.step_stop)}"

        rho = _spearman(est, ex)
        out[str(feature)] = dict(spearman=None if math.isnan(rho) else rho, n_cells=len(rows), top_exact=top(ex),
                                 top_agrees=top(est) == top(ex))
        for column in ("disruption", "specificity"):
            rho = _spearman(rows[f"{column}_estimated"].to_numpy(float), rows[f"{column}_exact"].to_numpy(float))
            out[str(feature)][f"spearman_{column}"] = None if math.isnan(rho) else rho
    return out


def attribution_study(
    pipe,
    *,
    layers,
    top_k: int = 10,
    windows=None,
    method: str = "zero",
    features=("edges", "texture", "shape", "color"),
    estimator: str = "first_order",
    disruption_probes: int = DISRUPTION_PROBES,
    alpha: float = 0.05,
    store=None,
    overwrite: bool = False,
    progress: bool = False,
    **run,
) -> pd.DataFrame:
    """Rank every layer × step window by attribution patching, then ablate the top cells exactly.

    Parameters
    ----------
    pipe : diffusers.DiffusionPipeline
    layers : str or sequence of str
        Module paths or globs: every named module you want ranked (e.g. ``"*.resnets.*"``).
    top_k : int
        Cells per feature that the exact scan (:func:`~denoisefeat.analyses.ablation_scan`) measures:
        the estimate's top ``top_k`` by ``|effect_std|`` and, with disruption probes, its top ``top_k``
        by specificity (:func:`rank`, significant first); their union is scanned.
    windows : int or sequence of (int, int), optional
        As for :func:`attribution_patching` (default every step).
    method, features, estimator, disruption_probes, alpha, progress, **run
        As for :func:`attribution_patching`; the exact scan uses the same method, metrics (the real
        metrics, where the estimate uses a surrogate) and run options.
    store : str or path, optional
        Write the clean trajectory and the whole estimate there (as :func:`attribution_patching`) and
        the combined table under ``attribution/attribution_study``.
    overwrite : bool
        Replace an existing ``store``.

    Returns
    -------
    pandas.DataFrame
        The top cells twice, side by side in one attribution table: the estimate's rows
        (``attribution_patching:<method>``) and the exact scan's (``ablation:<method>``), ``p_adj``
        Benjamini-Hochberg within each method's rows.  ``attrs``: ``agreement``
        (:func:`agreement` per feature), the estimate's ``denoiser_equivalents``, the exact scan's
        ``exact_denoiser_calls``, ``cells_ranked`` and ``cells_scanned``.
    """
    if isinstance(features, Mapping):
        raise ValueError("attribution_study compares with the exact scan, which measures named metrics: "
                         "give feature names or groups, not callables.")
    if not isinstance(top_k, (int, np.integer)) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(f"top_k must be a positive number of cells, got {top_k!r}.")
    estimated = attribution_patching(pipe, layers=layers, windows=windows, method=method, features=features,
                                     estimator=estimator, disruption_probes=disruption_probes, alpha=alpha,
                                     store=store, overwrite=overwrite, progress=progress, **run)
    names = list(pd.unique(estimated["feature"]))
    cells = []
    criteria = ("effect", "specificity") if disruption_probes > 0 else ("effect",)
    for feature in names:
        for by in criteria:
            top = rank(estimated, feature=feature, by=by, alpha=alpha, top=int(top_k))
            cells.extend((r.layer, int(r.step_start), int(r.step_stop)) for r in top.itertuples())
    cells = list(dict.fromkeys(cells))
    by_window: dict[tuple[int, int], list[str]] = {}
    for layer, start, stop in cells:
        by_window.setdefault((start, stop), []).append(layer)
    exact_parts, calls = [], 0
    for (start, stop), window_layers in by_window.items():
        part = ablation_scan(pipe, layers=window_layers, windows=[(start, stop)], method=method, features=names,
                             alpha=alpha, progress=progress, **run)
        exact_parts.append(part)
        calls += int(part.attrs["denoiser_calls"])
    exact = pd.concat(exact_parts, ignore_index=True)
    exact["p_adj"] = benjamini_hochberg(exact["p"])
    keys = ["layer", "step_start", "step_stop"]
    chosen = pd.MultiIndex.from_tuples(cells, names=keys)
    picked = estimated[estimated.set_index(keys).index.isin(chosen)].copy()
    picked["p_adj"] = benjamini_hochberg(picked["p"])
    frame = pd.concat([picked, exact], ignore_index=True)
    frame.attrs.update(alpha=alpha, ci_level=1 - alpha, inference="t", agreement=agreement(picked, exact),
                       denoiser_equivalents=estimated.attrs["denoiser_equivalents"], exact_denoiser_calls=calls,
                       cells_ranked=int(len(estimated) // max(1, len(names))), cells_scanned=len(cells))
    validate(frame)
    if store is not None:
        write_attribution(store, frame, name="attribution_study", overwrite=True)  # the store is this study's
    return frame
