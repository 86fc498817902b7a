"""The default metrics batched in torch, on the images' device (GPU when they are there).

:func:`device_metrics` is :func:`denoisefeat.metrics.compute_metrics` for tensors: the same
names, the same values (to float rounding; the numpy / scikit-image implementations of
:mod:`denoisefeat.metrics` stay the definitions and the tests' references), computed for the
whole batch at once on the tensors' device.  The reference's own work (its statistics, edge
maps, masks, colours) is done once per reference image and broadcast.

Where each metric runs
----------------------
* **On the device, differentiable** (gradients flow to ``images``): ``ssim``, ``ms_ssim``,
  ``edge_sharpness`` (through the gradients and contrasts at the edge pixels, which are fixed),
  ``psnr``, ``band_ssim_mid``, ``band_ssim_high``, ``lowpass_ssim``, ``wavelet_texture_energy``,
  ``lab_l``, ``lab_a``, ``lab_b``, ``delta_e2000``, ``colorfulness``, ``boundary_width`` (through
  the coverage values; the band around the boundary is a mask), ``texture_spectrum_distance``
  (through the luminance; the regions are masks) and ``color_consistency`` (through the image's
  Lab values; the mask is the reference's).
* **On the device, not differentiable** (their value is a count of thresholded or quantised
  pixels, piecewise constant in the images): ``edge_density``, ``edge_precision``,
  ``edge_recall``, ``edge_f1`` (Canny edge maps), ``glcm_*`` (grey-level quantisation),
  ``mask_iou`` and ``hu_moment_distance`` (Otsu masks), ``object_mask_iou`` (coverage > 0.5),
  ``object_color_distance`` (a median colour over a mask: differentiable almost everywhere in
  principle, but through a sort; treat as not), ``hue_histogram_distance`` (hue bins),
  ``lbp_distance`` (comparisons of 8-bit neighbours).
* Nothing stays on the CPU.  Canny's hysteresis, a connected-component labelling in
  scikit-image, is computed as the fixed point of a 3 x 3 dilation inside the candidate pixels
  (the same components, a few dozen cheap iterations on long edges).

Ground-truth metrics (``*_gt``) are not served here: a run has no ground truth.

Computed in the input's floating dtype (float64 matches the references to ~1e-10; float32 is
faster, and metrics made of thresholds — masks, edges, bins — may then differ on pixels within
rounding of a threshold).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from denoisefeat.metrics import _torch_ops as ops
from denoisefeat.metrics.registry import METRICS

__all__ = [
    "DEVICE_METRICS", "DIFFERENTIABLE_METRICS", "device_metrics", "lab_delta_e2000", "luminance", "object_descriptors",
]

_K1, _K2 = 0.01, 0.03  # Wang et al. (2004), as in denoisefeat.metrics.similarity
_MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_UNIFORM_TAPS = (1.0 / 7.0,) * 7  # scikit-image's default 7 x 7 uniform SSIM window
_HU_EPS = 1e-6
_GLCM_LEVELS = 32
# Constants of denoisefeat.metrics.foreground (a test checks that they agree).
_REFERENCE_SIZE = 32
_CHROMA_EPS = 1e-3
_MIN_CONTRAST = 0.02
_CHROMA_PRIOR = 1e-3  # of denoisefeat.metrics.color's hue histogram
_HUE_BINS = 36


# ---------------------------------------------------------------------------------------------
# Similarity
# ---------------------------------------------------------------------------------------------


def _ssim_means(x, y, taps):
    """Mean SSIM and mean contrast-structure term per plane (..., C) of broadcasting (..., H, W)."""
    def f(a):
        return ops.valid_filter(a, taps)

    ux, uy, uxx, uyy, uxy = f(x), f(y), f(x * x), f(y * y), f(x * y)
    n_px = len(taps) ** 2
    norm = n_px / (n_px - 1)
    vx, vy, vxy = norm * (uxx - ux * ux), norm * (uyy - uy * uy), norm * (uxy - ux * uy)
    c1, c2 = _K1**2, _K2**2
    lum = (2 * ux * uy + c1) / (ux * ux + uy * uy + c1)
    cs = (2 * vxy + c2) / (vx + vy + c2)
    return (lum * cs).mean(dim=(-2, -1)), cs.mean(dim=(-2, -1))


def _ssim(x, y):
    return _ssim_means(x, y, _UNIFORM_TAPS)[0].mean(dim=-1)


def _ms_ssim(x, y):
    taps = ops.gaussian_taps(1.5, 3.5)
    win = len(taps)
    n = 1
    while n < len(_MS_SSIM_WEIGHTS) and min(x.shape[-2:]) // 2**n >= win:
        n += 1
    weights = np.asarray(_MS_SSIM_WEIGHTS[:n]) / sum(_MS_SSIM_WEIGHTS[:n])
    log_prod = 0.0
    for j in range(n):
        s, cs = _ssim_means(x, y, taps)
        log_prod = log_prod + float(weights[j]) * torch.log(torch.clamp(s if j == n - 1 else cs, min=0.0))
        if j < n - 1:
            x, y = _pool2(x), _pool2(y)
    return torch.exp(log_prod).mean(dim=-1)


def _pool2(a):
    lead = a.shape[:-3]
    return F.avg_pool2d(a.reshape(-1, *a.shape[-3:]), 2).reshape(*lead, a.shape[-3], a.shape[-2] // 2,
                                                                  a.shape[-1] // 2)


def _psnr(x, y):
    mse = ((x - y) ** 2).mean(dim=(-3, -2, -1))
    return 10.0 * torch.log10(1.0 / mse)


def _band_ssim(x, y):
    """[low, mid, high] SSIM of the DEFAULT_BANDS band-pass images."""
    from denoisefeat.frequency import DEFAULT_BANDS, band_pass

    bands = {k: DEFAULT_BANDS[k] for k in ("low", "mid", "high")}
    xb = torch.movedim(band_pass(x, bands=bands), -3, -4)  # (..., band, C, H, W)
    yb = torch.movedim(band_pass(y, bands=bands), -3, -4)
    return _ssim_means(xb, yb, _UNIFORM_TAPS)[0].mean(dim=-1)


# ---------------------------------------------------------------------------------------------
# Edges (scikit-image's Canny)
# ---------------------------------------------------------------------------------------------

_CANNY_SIGMA, _CANNY_TRUNCATE = 1.0, 4.0  # skimage.filters.gaussian's default truncation
_CANNY_LOW, _CANNY_HIGH = 0.1, 0.2  # as denoisefeat.metrics.edges (a test checks)
_SHARPNESS_RADIUS = 3
_PRF_TOLERANCE = 1


def _same_gaussian(a):
    """scipy's gaussian_filter with ``mode="constant"`` (zeros outside), same size (n, H, W)."""
    taps = ops.gaussian_taps(_CANNY_SIGMA, _CANNY_TRUNCATE)
    r = len(taps) // 2
    return ops.valid_filter(F.pad(a, (r, r, r, r)), taps)


def _canny(lum):
    """``skimage.feature.canny(p, sigma=1, low_threshold=0.1, high_threshold=0.2)`` of every plane.

    Gaussian smoothing with the bleed-over correction of its constant border, scipy's Sobel
    (reflected border), the bilinear non-maximum suppression of ``_canny_cy`` (its low threshold is
    a C float) and hysteresis: the 8-connected components of the candidate pixels that hold a
    strong pixel, grown here by repeated 3 x 3 dilation inside the candidates until nothing
    changes (the same components as ``scipy.ndimage.label``).
    """
    lead, (H, W) = lum.shape[:-2], lum.shape[-2:]
    img = lum.reshape(-1, H, W)
    bleed = _same_gaussian(torch.ones_like(img[:1])) + torch.finfo(img.dtype).eps
    smoothed = _same_gaussian(img) / bleed
    p = F.pad(smoothed[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]  # scipy "reflect" for 1 px
    dj = p[:, :, 2:] - p[:, :, :-2]  # derivative along axis 1, then [1, 2, 1] along axis 0
    jsobel = dj[:, :-2] + 2 * dj[:, 1:-1] + dj[:, 2:]
    di = p[:, 2:] - p[:, :-2]
    isobel = di[:, :, :-2] + 2 * di[:, :, 1:-1] + di[:, :, 2:]
    mag = torch.sqrt(isobel * isobel + jsobel * jsobel)
    ai, aj = isobel.abs(), jsobel.abs()
    up, right = isobel > 0, jsobel > 0
    cond1 = up == right  # both gradients positive, or both not
    mp = F.pad(mag, (1, 1, 1, 1))

    def at(di_, dj_):
        return mp[:, 1 + di_:H + 1 + di_, 1 + dj_:W + 1 + dj_]

    steep = ai > aj
    ratio_i = aj / torch.where(ai > 0, ai, torch.ones_like(ai))  # w where |isobel| dominates
    ratio_j = ai / torch.where(aj > 0, aj, torch.ones_like(aj))
    # cond1: steep -> (+1,0),(+1,+1) | (-1,0),(-1,-1); else (0,+1),(+1,+1) | (0,-1),(-1,-1)
    # cond2: |i| < |j| -> (0,+1),(-1,+1) | (0,-1),(+1,-1); else (-1,0),(-1,+1) | (+1,0),(+1,-1)
    flat2 = ai < aj
    w = torch.where(cond1, torch.where(steep, ratio_i, ratio_j), torch.where(flat2, ratio_j, ratio_i))
    n11 = torch.where(cond1, torch.where(steep, at(1, 0), at(0, 1)), torch.where(flat2, at(0, 1), at(-1, 0)))
    n12 = torch.where(cond1, at(1, 1), at(-1, 1))
    n21 = torch.where(cond1, torch.where(steep, at(-1, 0), at(0, -1)), torch.where(flat2, at(0, -1), at(1, 0)))
    n22 = torch.where(cond1, at(-1, -1), at(1, -1))
    inner = torch.zeros(H, W, dtype=torch.bool, device=lum.device)
    inner[1:-1, 1:-1] = True
    low = float(np.float32(_CANNY_LOW))
    candidate = (inner & (mag >= low) & ((n12 * w + n11 * (1.0 - w)) <= mag)
                 & ((n22 * w + n21 * (1.0 - w)) <= mag))
    edges = candidate & (mag >= _CANNY_HIGH)
    while True:
        grown = ops.dilate(edges, 1) & candidate
        if torch.equal(grown, edges):
            break
        edges = grown
    return edges.reshape(*lead, H, W)


def _sharpness(lum, e):
    """Mean over edge pixels of ``2 |grad| / (p90 - p10)`` of the 7 x 7 neighbourhood, clipped to
    [0, 1] (denoisefeat.metrics.edges.edge_sharpness); 0 where an image has no edge pixel."""
    lead, (H, W) = e.shape[:-2], e.shape[-2:]
    flat_e = e.reshape(-1, H, W)
    img = lum.expand(e.shape).reshape(-1, H, W)
    p = F.pad(img[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    d = 0.5 * (p[:, 2:] - p[:, :-2])  # [-1, 0, 1] / 2 along y, then [1, 2, 1] / 4 along x
    gy = 0.25 * d[:, :, :-2] + 0.5 * d[:, :, 1:-1] + 0.25 * d[:, :, 2:]
    d = 0.5 * (p[:, :, 2:] - p[:, :, :-2])
    gx = 0.25 * d[:, :-2] + 0.5 * d[:, 1:-1] + 0.25 * d[:, 2:]
    n_idx, y, x = torch.nonzero(flat_e, as_tuple=True)
    r = _SHARPNESS_RADIUS
    padded = F.pad(img[:, None], (r, r, r, r), mode="replicate")[:, 0]
    offsets = torch.arange(2 * r + 1, device=lum.device)
    rows = (y[:, None] + offsets[None, :])[:, :, None]
    cols = (x[:, None] + offsets[None, :])[:, None, :]
    hood = padded[n_idx[:, None, None], rows, cols].reshape(len(n_idx), -1)
    q = torch.quantile(hood, torch.tensor([0.1, 0.9], dtype=hood.dtype, device=hood.device), dim=-1)
    contrast = q[1] - q[0]
    grad = ops.safe_hypot(gy[n_idx, y, x], gx[n_idx, y, x])
    ratio = torch.where(contrast > 1e-12, 2.0 * grad / torch.where(contrast > 1e-12, contrast, 1.0),
                        torch.zeros_like(grad)).clamp(0.0, 1.0)
    total = torch.zeros(flat_e.shape[0], dtype=lum.dtype, device=lum.device).index_add_(0, n_idx, ratio)
    count = flat_e.sum(dim=(1, 2)).to(lum.dtype)
    return torch.where(count > 0, total / torch.clamp(count, min=1), torch.zeros_like(total)).reshape(lead)


def _edge_group(x, y):
    """[density, sharpness, precision, recall, f1] from one Canny pass per image (and reference)."""
    lum = ops.luminance(x)
    e = _canny(lum)
    density = e.to(x.dtype).mean(dim=(-2, -1))
    sharp = _sharpness(lum, e)
    if y is None:
        nan = torch.full((*density.shape, 3), torch.nan, dtype=x.dtype, device=x.device)
        return torch.cat([density[..., None], sharp[..., None], nan], dim=-1)
    r = _canny(ops.luminance(y))
    shape = torch.broadcast_shapes(e.shape, r.shape)
    ee, rr = e.expand(shape), r.expand(shape)
    hw = shape[-2:]
    e_d = ops.dilate(ee.reshape(-1, *hw), _PRF_TOLERANCE).reshape(shape)
    r_d = ops.dilate(rr.reshape(-1, *hw), _PRF_TOLERANCE).reshape(shape)
    n_e = ee.sum(dim=(-2, -1)).to(x.dtype)
    n_r = rr.sum(dim=(-2, -1)).to(x.dtype)
    tp_e = (ee & r_d).sum(dim=(-2, -1)).to(x.dtype)
    tp_r = (rr & e_d).sum(dim=(-2, -1)).to(x.dtype)
    one, zero = torch.ones_like(n_e), torch.zeros_like(n_e)
    precision = torch.where(n_e > 0, tp_e / torch.clamp(n_e, min=1), torch.where(n_r > 0, zero, one))
    recall = torch.where(n_r > 0, tp_r / torch.clamp(n_r, min=1), torch.where(n_e > 0, zero, one))
    total = precision + recall
    f1 = torch.where(total > 0, 2 * precision * recall / torch.where(total > 0, total, one), zero)
    lead = shape[:-2]
    return torch.stack([density.expand(lead), sharp.expand(lead), precision, recall, f1], dim=-1)


# ---------------------------------------------------------------------------------------------
# Texture
# ---------------------------------------------------------------------------------------------

# (row, column) offsets of distance 1 at angles 0, pi/4, pi/2, 3 pi/4, as skimage.feature.graycomatrix.
_GLCM_OFFSETS = ((0, 1), (-1, 1), (-1, 0), (-1, -1))


def _glcm(x, y):
    """[contrast, homogeneity, energy, correlation], means over the four angles (symmetric GLCM)."""
    L = _GLCM_LEVELS
    lum = ops.luminance(x)
    lead, (H, W) = lum.shape[:-2], lum.shape[-2:]
    q = torch.clamp(torch.floor(torch.clamp(lum, 0.0, 1.0) * L), max=L - 1).to(torch.int64).reshape(-1, H, W)
    i = torch.arange(L, dtype=x.dtype, device=x.device)
    row, col = i[:, None], i[None, :]
    props = []
    for dr, dc in _GLCM_OFFSETS:
        r0, r1 = max(0, -dr), H - max(0, dr)
        c0, c1 = max(0, -dc), W - max(0, dc)
        a = q[:, r0:r1, c0:c1].reshape(q.shape[0], -1)
        b = q[:, r0 + dr:r1 + dr, c0 + dc:c1 + dc].reshape(q.shape[0], -1)
        counts = torch.zeros(q.shape[0], L * L, dtype=x.dtype, device=x.device)
        counts.scatter_add_(1, a * L + b, torch.ones_like(a, dtype=x.dtype))
        P = counts.reshape(-1, L, L)
        P = P + P.transpose(1, 2)
        P = P / P.sum(dim=(1, 2), keepdim=True)
        mean_i = (row * P).sum(dim=(1, 2), keepdim=True)
        mean_j = (col * P).sum(dim=(1, 2), keepdim=True)
        std_i = torch.sqrt((P * (row - mean_i) ** 2).sum(dim=(1, 2)))
        std_j = torch.sqrt((P * (col - mean_j) ** 2).sum(dim=(1, 2)))
        cov = (P * (row - mean_i) * (col - mean_j)).sum(dim=(1, 2))
        flat = (std_i < 1e-15) | (std_j < 1e-15)
        corr = torch.where(flat, torch.ones_like(cov), cov / torch.where(flat, torch.ones_like(cov), std_i * std_j))
        props.append(torch.stack([
            (P * (row - col) ** 2).sum(dim=(1, 2)),
            (P / (1.0 + (row - col) ** 2)).sum(dim=(1, 2)),
            torch.sqrt((P * P).sum(dim=(1, 2))),
            corr,
        ], dim=-1))
    return torch.stack(props).mean(dim=0).reshape(*lead, 4)


_LBP_P, _LBP_R = 8, 1.0  # the registry's lbp_distance: 8 neighbours at radius 1, "uniform" codes


def _lbp_histogram(lum):
    """Uniform LBP histograms (..., P + 2) of the interior pixels, as scikit-image's
    ``local_binary_pattern(u8, P, R, "uniform")`` on the 8-bit luminance.

    The neighbours are read at scikit-image's rounded offsets by its bilinear interpolation
    (the same float operations, per pixel, so that the ``>=`` comparisons agree); a code is the
    number of neighbours at least the centre when the circular pattern, read from neighbour 0 to
    P - 1, changes at most twice, else P + 1.
    """
    P, R = _LBP_P, _LBP_R
    u8 = torch.round(torch.clamp(lum, 0.0, 1.0) * 255.0)
    lead, (H, W) = lum.shape[:-2], lum.shape[-2:]
    img = u8.reshape(-1, H, W)
    b = math.ceil(R)
    if H <= 2 * b or W <= 2 * b:
        raise ValueError(f"lbp: images of {(H, W)} pixels have no pixel at least R={R} from the border")
    angles = 2 * np.pi * np.arange(P, dtype=np.float64) / P
    rp, cp = np.round(-R * np.sin(angles), 5), np.round(R * np.cos(angles), 5)
    rows = np.arange(b, H - b, dtype=np.float64)
    cols = np.arange(b, W - b, dtype=np.float64)
    centre = img[:, b:H - b, b:W - b]
    bits = []
    for i in range(P):
        r, c = rows + rp[i], cols + cp[i]  # positions as scikit-image forms them, per row / column
        r0, c0 = np.floor(r), np.floor(c)
        dr = torch.as_tensor(r - r0, dtype=lum.dtype, device=lum.device)[:, None]
        dc = torch.as_tensor(c - c0, dtype=lum.dtype, device=lum.device)[None, :]
        r0, r1 = r0.astype(np.int64), np.ceil(r).astype(np.int64)
        c0, c1 = c0.astype(np.int64), np.ceil(c).astype(np.int64)

        def at(rr, cc):
            return img[:, torch.as_tensor(rr, device=lum.device)][:, :, torch.as_tensor(cc, device=lum.device)]

        top = (1 - dc) * at(r0, c0) + dc * at(r0, c1)
        bottom = (1 - dc) * at(r1, c0) + dc * at(r1, c1)
        bits.append(((1 - dr) * top + dr * bottom) - centre >= 0)
    bits = torch.stack(bits)  # (P, n, h, w)
    changes = (bits[:-1] != bits[1:]).sum(dim=0)
    codes = torch.where(changes <= 2, bits.sum(dim=0), torch.full_like(changes, P + 1)).reshape(img.shape[0], -1)
    hist = torch.zeros(img.shape[0], P + 2, dtype=lum.dtype, device=lum.device)
    hist.scatter_add_(1, codes, torch.ones_like(codes, dtype=lum.dtype))
    return (hist / codes.shape[1]).reshape(*lead, P + 2)


def _lbp(x, y):
    """Chi-square distance between the uniform LBP histograms of the images and the reference."""
    h, g = _lbp_histogram(ops.luminance(x)), _lbp_histogram(ops.luminance(y))
    s = h + g
    terms = torch.where(s > 0, (h - g) ** 2 / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(s))
    return 0.5 * terms.sum(dim=-1)


def _wavelet(x, y):
    """Fraction of the centred luminance's db2 energy in levels 2-3 (level 2 alone below 24 px)."""
    import pywt

    from denoisefeat.frequency import wavelet_energy

    max_level = pywt.dwt_max_level(min(x.shape[-2:]), pywt.Wavelet("db2").dec_len)
    levels = [j for j in (2, 3) if j <= max_level] or [1]
    lum = ops.luminance(x)
    en = wavelet_energy(lum - lum.mean(dim=(-2, -1), keepdim=True), wavelet="db2", mode="periodization")
    total = en.approximation + en.details.sum(dim=(-2, -1))
    band = en.details[..., [j - 1 for j in levels], :].sum(dim=(-2, -1))
    return torch.where(total > 1e-24, band / torch.where(total > 1e-24, total, torch.ones_like(total)),
                       torch.zeros_like(total))


# ---------------------------------------------------------------------------------------------
# Shape (Otsu masks)
# ---------------------------------------------------------------------------------------------


def _split(lum):
    """(bright, dark) Otsu maps of planes (..., H, W); both empty for constant planes."""
    lead, (H, W) = lum.shape[:-2], lum.shape[-2:]
    flat = lum.reshape(-1, H, W)
    varying = flat.amax(dim=(1, 2)) > flat.amin(dim=(1, 2))
    ramp = torch.linspace(0, 1, H * W, dtype=lum.dtype, device=lum.device).reshape(H, W)
    t = ops.otsu_thresholds(torch.where(varying[:, None, None], flat, ramp))
    t = torch.where(varying, t, torch.zeros_like(t)).reshape(*lead, 1, 1)
    varying = varying.reshape(*lead, 1, 1)
    return (lum > t) & varying, (lum <= t) & varying


def _border_bright_fraction(bright):
    H, W = bright.shape[-2:]
    border = torch.zeros(H, W, dtype=torch.bool, device=bright.device)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    return bright[..., border].to(torch.float64).mean(dim=-1)


def _reference_masks(lum_ref):
    """Otsu masks of reference planes with the automatic polarity, and the polarity."""
    bright, dark = _split(lum_ref)
    pol = _border_bright_fraction(bright) <= 0.5
    return torch.where(pol[..., None, None], bright, dark), pol


def _iou(a, b):
    inter = (a & b).sum(dim=(-2, -1)).to(torch.float64)
    union = (a | b).sum(dim=(-2, -1)).to(torch.float64)
    return torch.where(union > 0, inter / torch.clamp(union, min=1), torch.ones_like(union))


def _hu(masks):
    """Hu moments (..., 7) of boolean masks (..., H, W); zeros for empty masks."""
    lead, (H, W) = masks.shape[:-2], masks.shape[-2:]
    m = masks.reshape(-1, H, W).to(torch.float64)
    m00 = m.sum(dim=(1, 2))
    safe = torch.clamp(m00, min=1.0)
    y = torch.arange(H, dtype=m.dtype, device=m.device)
    x = torch.arange(W, dtype=m.dtype, device=m.device)
    cy = torch.einsum("nyx,y->n", m, y) / safe
    cx = torch.einsum("nyx,x->n", m, x) / safe
    powers = torch.arange(4, dtype=m.dtype, device=m.device)
    py = (y[None, :] - cy[:, None])[:, None, :] ** powers[None, :, None]
    px = (x[None, :] - cx[:, None])[:, None, :] ** powers[None, :, None]
    mu = torch.einsum("nyx,npy,nqx->npq", m, py, px)
    order = powers[:, None] + powers[None, :]
    nu = mu / safe[:, None, None] ** (order / 2 + 1)
    n20, n02, n11 = nu[:, 2, 0], nu[:, 0, 2], nu[:, 1, 1]
    n30, n03, n21, n12 = nu[:, 3, 0], nu[:, 0, 3], nu[:, 2, 1], nu[:, 1, 2]
    t0, t1 = n30 + n12, n21 + n03
    q0, q1 = t0 * t0, t1 * t1
    n4, s, d = 4 * n11, n20 + n02, n20 - n02
    hu0, hu1, hu3 = s, d * d + n4 * n11, q0 + q1
    hu5 = d * (q0 - q1) + n4 * t0 * t1
    t0, t1 = t0 * (q0 - 3 * q1), t1 * (3 * q0 - q1)
    q0, q1 = n30 - 3 * n12, 3 * n21 - n03
    hu2 = q0 * q0 + q1 * q1
    hu4 = q0 * t0 + q1 * t1
    hu6 = q1 * t0 - q0 * t1
    hu = torch.stack([hu0, hu1, hu2, hu3, hu4, hu5, hu6], dim=-1)
    return torch.where((m00 > 0)[:, None], hu, torch.zeros_like(hu)).reshape(*lead, 7)


def _log_hu(hu):
    return torch.sign(hu) * torch.log10(1.0 + hu.abs() / _HU_EPS)


def _mask_group(x, y):
    """[mask_iou, hu_moment_distance]: images' Otsu masks with the polarity of their reference."""
    ref_mask, pol = _reference_masks(ops.luminance(y))
    bright, dark = _split(ops.luminance(x))
    img_mask = torch.where(pol[..., None, None], bright, dark)
    hu = (_log_hu(_hu(img_mask)) - _log_hu(_hu(ref_mask))).abs().sum(dim=-1)
    iou = _iou(img_mask, ref_mask)
    return torch.stack(torch.broadcast_tensors(iou, hu), dim=-1)


# ---------------------------------------------------------------------------------------------
# Colour
# ---------------------------------------------------------------------------------------------


def _spread(lab, mask):
    """Mean CIE76 distance of the masked pixels (whole image if empty) to their mean Lab colour.

    ``lab`` (..., 3, H, W), ``mask`` (..., H, W), broadcasting."""
    shape = torch.broadcast_shapes(mask.shape, lab.shape[:-3] + lab.shape[-2:])
    mask = mask.expand(shape)
    empty = ~mask.any(dim=-1).any(dim=-1)
    w = (mask | empty[..., None, None]).to(lab.dtype)
    n = w.sum(dim=(-2, -1))
    mean = (lab * w[..., None, :, :]).sum(dim=(-2, -1)) / n[..., None]
    dist = ops.safe_sqrt(((lab - mean[..., :, None, None]) ** 2).sum(dim=-3))
    return (dist * w).sum(dim=(-2, -1)) / n


def _lab_group(x, y):
    """[L, a, b, delta_e2000, color_consistency] from one CIELAB conversion per image."""
    lab = ops.rgb_to_lab(x)
    mean = lab.mean(dim=(-2, -1))
    if y is None:
        nan = torch.full((*mean.shape[:-1], 2), torch.nan, dtype=mean.dtype, device=mean.device)
        return torch.cat([mean, nan], dim=-1)
    lab_y = ops.rgb_to_lab(y)
    de = ops.delta_e_ciede2000(lab, lab_y).mean(dim=(-2, -1))
    m, _ = _reference_masks(ops.luminance(y))
    cons = _spread(lab, m) - _spread(lab_y, m)
    shape = torch.broadcast_shapes(mean.shape[:-1], de.shape)
    return torch.cat([mean.expand(*shape, 3), de.expand(shape)[..., None], cons.expand(shape)[..., None]], dim=-1)


def _hue_hist(a):
    bins = _HUE_BINS
    hue = ops.rgb_to_hue(a)
    chroma = a.amax(dim=-3) - a.amin(dim=-3)
    lead = hue.shape[:-2]
    n_px = hue.shape[-2] * hue.shape[-1]
    k = torch.clamp((hue * bins).to(torch.int64), max=bins - 1).reshape(-1, n_px)
    h = torch.zeros(k.shape[0], bins, dtype=a.dtype, device=a.device)
    h = h.scatter_add_(1, k, chroma.reshape(-1, n_px)) / n_px
    p = (h + _CHROMA_PRIOR / bins) / (h.sum(dim=-1, keepdim=True) + _CHROMA_PRIOR)
    return p.reshape(*lead, bins)


def _hue(x, y):
    d = torch.cumsum(_hue_hist(x) - _hue_hist(y), dim=-1)
    return (d - ops.median(d)[..., None]).abs().sum(dim=-1) * (360.0 / _HUE_BINS)


def _colorfulness(x, y):
    r, g, b = (255.0 * x[..., k, :, :] for k in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    s = ops.safe_sqrt(rg.var(dim=(-2, -1), correction=0) + yb.var(dim=(-2, -1), correction=0))
    m = ops.safe_sqrt(rg.mean(dim=(-2, -1)) ** 2 + yb.mean(dim=(-2, -1)) ** 2)
    return s + 0.3 * m


# ---------------------------------------------------------------------------------------------
# Object-level (denoisefeat.metrics.foreground)
# ---------------------------------------------------------------------------------------------


def _chroma_distance(a, ground=None):
    """Chromaticity distance (n, H*W) of each pixel to the border's median chromaticity (or ``ground``)."""
    n, channels, h, w = a.shape
    chroma = a / (a.sum(dim=1, keepdim=True) + _CHROMA_EPS) if channels == 3 else a
    border = torch.zeros(h, w, dtype=torch.bool, device=a.device)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    if ground is None:
        ground = ops.median(chroma[:, :, border])  # (n, C)
    d = ops.safe_sqrt(((chroma - ground[:, :, None, None]) ** 2).sum(dim=1)).reshape(n, -1)
    return d, ground, border


def _coverage(a):
    """Coverage estimates (n, H, W) of flat prepared images (n, C, H, W), as foreground's."""
    n, channels, h, w = a.shape
    d, _, border = _chroma_distance(a)
    flat_border = border.reshape(-1)
    d_bg = ops.median(d[:, flat_border])
    t = 0.5 * (d.amin(dim=1) + d.amax(dim=1))
    for _ in range(10):  # two-means (isodata) threshold
        above = d > t[:, None]
        n_above = above.sum(dim=1)
        mean_above = torch.where(n_above > 0, (d * above).sum(dim=1) / torch.clamp(n_above, min=1), t)
        n_below = d.shape[1] - n_above
        mean_below = torch.where(n_below > 0, (d * ~above).sum(dim=1) / torch.clamp(n_below, min=1), t)
        t = 0.5 * (mean_above + mean_below)
    d_fg = ops.masked_median(d, d > t[:, None])
    d_fg = torch.where(torch.isnan(d_fg), d_bg, d_fg)
    found = (d_fg - d_bg) > _MIN_CONTRAST
    beta = (d - d_bg[:, None]) / torch.where(found, d_fg - d_bg, torch.ones_like(d_bg))[:, None]
    beta = torch.where(found[:, None], torch.clamp(beta, 0.0, 1.0), torch.zeros_like(beta))
    if channels != 3:
        return beta.reshape(n, h, w)
    total = a.sum(dim=1).reshape(n, -1)
    s_bg = ops.median(total[:, flat_border])
    s_fg = ops.masked_median(total, beta > 0.5)
    s_fg = torch.where(torch.isnan(s_fg) | (s_fg <= 0), s_bg, s_fg)
    s_bg, s_fg = s_bg[:, None], s_fg[:, None]
    den = beta * s_bg + (1.0 - beta) * s_fg
    c = torch.where(den > 0, beta * s_bg / torch.where(den > 0, den, torch.ones_like(den)), beta)
    return c.reshape(n, h, w)


def _interior(mask, scale):
    return ops.erode(mask, max(1, round(2 * scale)))


def _width_of(c, band):
    mask = c > 0.5
    near = ops.dilate(mask, band) & ~ops.erode(mask, band)
    cell = near[:, :-1, :-1] | near[:, 1:, :-1] | near[:, :-1, 1:] | near[:, 1:, 1:]
    gx = 0.5 * ((c[:, :-1, 1:] - c[:, :-1, :-1]) + (c[:, 1:, 1:] - c[:, 1:, :-1]))
    gy = 0.5 * ((c[:, 1:, :-1] - c[:, :-1, :-1]) + (c[:, 1:, 1:] - c[:, :-1, 1:]))
    g = ops.safe_hypot(gx, gy) * cell
    energy = (g * g).sum(dim=(1, 2))
    return torch.where(energy > 0, g.sum(dim=(1, 2)) / torch.where(energy > 0, energy, torch.ones_like(energy)),
                       torch.zeros_like(energy))


def _color_of(a, c, scale):
    """Median value-normalised colour (n, 3) over the eroded mask (else the mask, else the image)."""
    n = a.shape[0]
    mask = c > 0.5
    region = _interior(mask, scale)
    region = torch.where(region.flatten(1).any(dim=1)[:, None, None], region, mask)
    region = torch.where(region.flatten(1).any(dim=1)[:, None, None], region, torch.ones_like(region))
    value = a.amax(dim=1, keepdim=True)
    normalised = torch.where(value > _CHROMA_EPS, a / torch.clamp(value, min=_CHROMA_EPS), torch.ones_like(a))
    r = region.reshape(n, 1, -1).expand(n, 3, -1)
    return ops.masked_median(normalised.reshape(n, 3, -1), r)


def _spectrum_weights(h, w, *, dtype, device):
    """Soft orientation x frequency bin weights (k, h, w) of texture_spectrum's pooling."""
    from denoisefeat.metrics.foreground import TEXTURE_FREQUENCIES, TEXTURE_ORIENTATIONS

    scale = min(h, w) / _REFERENCE_SIZE
    ky = torch.fft.fftfreq(h, dtype=dtype, device=device)[:, None]
    kx = torch.fft.fftfreq(w, dtype=dtype, device=device)[None, :]
    rho = torch.sqrt(kx * kx + ky * ky) * scale
    theta = torch.remainder(torch.atan2(ky, kx), math.pi)
    n_o = TEXTURE_ORIENTATIONS
    pos = theta / (math.pi / n_o)
    o_w = torch.stack([torch.clamp(1 - (torch.remainder(pos - k + n_o / 2, n_o) - n_o / 2).abs(), 0, 1)
                       for k in range(n_o)])
    centers = np.log2(np.asarray(TEXTURE_FREQUENCIES))
    step = float(centers[1] - centers[0])
    lr = torch.log2(torch.where(rho > 0, rho, torch.ones_like(rho)))
    f_w = torch.stack([torch.where(rho > 0, torch.clamp(1 - (lr - float(c)).abs() / step, 0, 1),
                                   torch.zeros_like(rho)) for c in centers])
    return (o_w[:, None] * f_w[None, :]).reshape(-1, h, w)


def _spectrum_of(a, region, *, relative: bool = True):
    h, w = a.shape[-2:]
    lum = ops.luminance(a)
    count = region.sum(dim=(1, 2))
    mean = (lum * region).sum(dim=(1, 2)) / torch.clamp(count, min=1)
    ok = (count > 0) & (mean > _CHROMA_EPS)
    if relative:  # contrast relative to the region's mean luminance (the metric's)
        rel = lum / torch.where(ok, mean, torch.ones_like(mean))[:, None, None] - 1.0
    else:  # absolute luminance contrast around it
        rel = lum - mean[:, None, None]
    s = torch.where(region & ok[:, None, None], rel, torch.zeros_like(lum))
    spectrum = torch.fft.fft2(s)  # |F|^2 as re^2 + im^2: differentiable where F = 0 too
    power = (spectrum.real**2 + spectrum.imag**2) / (h * w * torch.clamp(count, min=1))[:, None, None]
    return torch.einsum("nyx,kyx->nk", power, _spectrum_weights(h, w, dtype=a.dtype, device=a.device))


def _object_group(x, y):
    """[object_mask_iou, object_color_distance, texture_spectrum_distance, boundary_width]."""
    lead, hw = x.shape[:-3], x.shape[-2:]
    scale = min(hw) / _REFERENCE_SIZE
    flat = x.reshape(-1, *x.shape[-3:])
    cov = _coverage(flat)
    width = _width_of(cov, max(2, round(3 * scale))).reshape(lead)
    if y is None:
        nan = torch.full((*lead, 3), torch.nan, dtype=x.dtype, device=x.device)
        return torch.cat([nan, width[..., None]], dim=-1)
    shape = torch.broadcast_shapes(lead, y.shape[:-3])
    flat_y = y.reshape(-1, *y.shape[-3:])
    cov_y = _coverage(flat_y)
    if x.shape[-3] == 3:
        lab = ops.rgb_to_lab(torch.clamp(_color_of(flat, cov, scale), 0, 1)[..., None, None]).reshape(*lead, 3)
        lab_y = ops.rgb_to_lab(torch.clamp(_color_of(flat_y, cov_y, scale), 0, 1)[..., None, None])
        de = ops.delta_e_ciede2000(lab, lab_y.reshape(*y.shape[:-3], 3), dim=-1)
    else:
        de = torch.full(shape, torch.nan, dtype=x.dtype, device=x.device)

    def full(z, tail):
        return z.expand(*shape, *tail).reshape(-1, *tail)

    cx = full(cov.reshape(*lead, *hw), hw)
    cy = full(cov_y.reshape(*y.shape[:-3], *hw), hw)
    iou = _iou(cx > 0.5, cy > 0.5).reshape(shape)
    fx, fy = full(x, x.shape[-3:]), full(y, y.shape[-3:])
    own_x, own_y = _interior(cx > 0.5, scale), _interior(cy > 0.5, scale)
    common = _interior((cx > 0.5) & (cy > 0.5), scale)
    has = common.flatten(1).any(dim=1)[:, None, None]
    own_x, own_y = torch.where(has, common, own_x), torch.where(has, common, own_y)
    tex = (_spectrum_of(fx, own_x) - _spectrum_of(fy, own_y)).abs().sum(dim=1).reshape(shape)
    return torch.stack([iou.to(x.dtype), de.expand(shape), tex, width.expand(shape)], dim=-1)


# ---------------------------------------------------------------------------------------------
# Registry and entry point
# ---------------------------------------------------------------------------------------------

# Each torch group callable and the registered metrics it computes; the component of each
# metric on the callable's last axis is the registry's MetricSpec.index (the same layout).
_GROUPS: dict[Callable, tuple[str, ...]] = {
    _ssim: ("ssim",),
    _edge_group: ("edge_density", "edge_sharpness", "edge_precision", "edge_recall", "edge_f1"),
    _ms_ssim: ("ms_ssim",),
    _psnr: ("psnr",),
    _band_ssim: ("lowpass_ssim", "band_ssim_mid", "band_ssim_high"),
    _glcm: ("glcm_contrast", "glcm_homogeneity", "glcm_energy", "glcm_correlation"),
    _lbp: ("lbp_distance",),
    _wavelet: ("wavelet_texture_energy",),
    _mask_group: ("mask_iou", "hu_moment_distance"),
    _lab_group: ("lab_l", "lab_a", "lab_b", "delta_e2000", "color_consistency"),
    _hue: ("hue_histogram_distance",),
    _colorfulness: ("colorfulness",),
    _object_group: ("object_mask_iou", "object_color_distance", "texture_spectrum_distance", "boundary_width"),
}
_GROUP_OF: dict[str, Callable] = {name: func for func, names in _GROUPS.items() for name in names}

#: The registered metrics computed on the tensors' device, in registry order: every one that
#: needs no ground truth.
DEVICE_METRICS: tuple[str, ...] = tuple(n for n in METRICS if n in _GROUP_OF)
#: The device metrics whose values carry gradients to the images (see the module docstring).
DIFFERENTIABLE_METRICS: tuple[str, ...] = (
    "ssim", "ms_ssim", "edge_sharpness", "psnr", "band_ssim_mid", "band_ssim_high", "lowpass_ssim",
    "wavelet_texture_energy",
    "lab_l", "lab_a", "lab_b", "delta_e2000", "color_consistency", "colorfulness", "texture_spectrum_distance",
    "boundary_width",
)
def luminance(images: torch.Tensor) -> torch.Tensor:
    """Luminance of an image batch, as the metrics see it.

    Parameters
    ----------
    images : torch.Tensor, shape (..., C, H, W)
        RGB (C = 3) or grey (C = 1) images.

    Returns
    -------
    torch.Tensor, shape (..., H, W)
        The grey channel, or :func:`skimage.color.rgb2gray`'s BT.709 weighting of RGB.
    """
    return ops.luminance(images)


def _check(t, *, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"device_metrics: {name} must be a torch.Tensor, got {type(t).__name__}; "
                        "use denoisefeat.metrics.compute_metrics for numpy arrays")
    if not t.is_floating_point():
        raise TypeError(f"device_metrics: {name} must be a floating-point tensor, got {t.dtype}")
    if t.ndim < 3 or t.shape[-3] not in (1, 3) or 0 in t.shape[-2:]:
        raise ValueError(f"device_metrics: {name} must have shape (..., C, H, W) with C 1 or 3, "
                         f"got {tuple(t.shape)}")
    with torch.no_grad():
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"device_metrics: {name} contain NaN or infinite values")
        if t.numel() and (float(t.min()) < -1e-6 or float(t.max()) > 1 + 1e-6):
            raise ValueError(f"device_metrics: {name} must lie in [0, 1], got values in "
                             f"[{float(t.min()):.4g}, {float(t.max()):.4g}]; rescale them first")
    return t


def device_metrics(images, reference=None, *, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Evaluate registered metrics on a tensor batch, on its device, sharing intermediate results.

    Parameters
    ----------
    images : torch.Tensor, shape (..., C, H, W)
        Floating-point images in [0, 1] (RGB; grey images skip the colour metrics by default),
        on any device; computed in their dtype.
    reference : torch.Tensor, shape (..., C, H, W), optional
        Reference images on the same device, broadcasting against ``images`` over the leading
        axes (e.g. ``(sample, 1, C, H, W)`` for images ``(sample, step, C, H, W)``).
    names : sequence of str, optional
        Metrics of :data:`denoisefeat.metrics.METRICS` to compute; default every metric that needs
        no ground truth and whose reference is given, as :func:`~denoisefeat.metrics.compute_metrics`.

    Returns
    -------
    dict of str to torch.Tensor
        One tensor of shape ``(...)`` (the broadcast leading shape) per metric, in registry
        order, on ``images``' device and dtype.  Equal to ``compute_metrics`` of the same arrays
        to float rounding.

    Raises
    ------
    TypeError
        Inputs that are not floating-point tensors.
    ValueError
        Inputs with NaN, values outside [0, 1], bad shapes, devices that differ, ground-truth
        metrics, or a metric that needs the missing reference.
    KeyError
        Unknown metric names.
    """
    x = _check(images, name="images")
    y = None if reference is None else _check(reference, name="reference")
    if y is not None:
        if y.device != x.device:
            raise ValueError(f"device_metrics: reference is on {y.device}, images on {x.device}; move one")
        if y.shape[-3:] != x.shape[-3:]:
            raise ValueError(f"device_metrics: images (C, H, W) = {tuple(x.shape[-3:])} and reference "
                             f"{tuple(y.shape[-3:])} differ")
        try:
            torch.broadcast_shapes(x.shape[:-3], y.shape[:-3])
        except RuntimeError as err:
            raise ValueError(f"device_metrics: the reference's leading shape {tuple(y.shape[:-3])} does not "
                             f"broadcast against the images' {tuple(x.shape[:-3])}") from err
        y = y.to(x.dtype)
    usable = [n for n, s in METRICS.items() if s.needs_reference in (None, "image")]
    if names is None:
        selected = [n for n in usable if (METRICS[n].needs_reference is None or y is not None)
                    and not (METRICS[n].kind == "color" and x.shape[-3] != 3)]
    else:
        unknown = [n for n in names if n not in METRICS]
        if unknown:
            raise KeyError(f"device_metrics: unknown metric(s) {unknown}; known: {usable}")
        ground = [n for n in names if n not in usable]
        if ground:
            raise ValueError(f"device_metrics: {ground} compare against ground truth, not served here; "
                             "use compute_metrics(..., masks=, edges=)")
        selected = [n for n in usable if n in set(names)]
        missing = [n for n in selected if METRICS[n].needs_reference == "image" and y is None]
        if missing:
            raise ValueError(f"device_metrics: metrics {missing} need a reference that was not given")
    groups: dict[Callable, list[str]] = {}
    for n in selected:
        if n in _GROUP_OF:
            groups.setdefault(_GROUP_OF[n], []).append(n)
    values: dict[str, torch.Tensor] = {}
    for func, group in groups.items():
        needs = any(METRICS[n].needs_reference == "image" for n in group)
        out = func(x, y if needs else None)
        for n in group:
            index = METRICS[n].index
            values[n] = out if index is None else out[..., index]
    shape = torch.broadcast_shapes(*(v.shape for v in values.values())) if values else x.shape[:-3]
    return {n: values[n].to(x.dtype).expand(shape) for n in selected}


def object_descriptors(images: torch.Tensor, reference: torch.Tensor) -> dict[str, torch.Tensor]:
    """Smooth descriptors of the object in ``images``, measured where ``reference``'s object lies.

    The object-level metrics (:mod:`denoisefeat.metrics.foreground`) compare an image with a
    reference through masks and medians, so their gradient is zero or undefined at the reference
    itself.  These descriptors are what a first-order (gradient) analysis linearises instead: the
    regions are ``reference``'s (fixed masks, as the metrics' own regions at ``images ==
    reference``), the values are smooth in ``images``.

    Parameters
    ----------
    images : torch.Tensor, shape (n, 3, H, W)
        RGB in [0, 1]; gradients flow to them.
    reference : torch.Tensor, shape (n, 3, H, W)
        The images whose object masks define the regions (not differentiated).

    Returns
    -------
    dict of str to torch.Tensor
        ``"color"`` (n, 3): CIELAB of the *mean* (the metric: median) value-normalised colour over
        the reference object's interior (else its mask, else the image), as
        ``object_color_distance`` measures it; ``"texture_energy"`` (n, 1): the total power of
        ``texture_spectrum``'s orientation x frequency bins over that interior, of the absolute
        luminance contrast (the metric's is relative to the mean luminance, which moves with the
        layout); ``"object_map"`` (n, H, W): the smooth object map ``m`` of the images, each
        pixel's chromaticity distance to the reference's background (the border's median), minus
        its mean outside the reference's object mask (``object_mask_iou``'s ``coverage > 0.5``),
        over the mean contrast of inside and outside (0 on the background, about 1 on the object,
        not clamped, so that it stays linear where the metric's mask saturates).
    """
    x, y = _check(images, name="images"), _check(reference, name="reference").detach()
    if x.ndim != 4 or x.shape[1] != 3 or y.shape != x.shape:
        raise ValueError(f"object_descriptors: images and reference must both be (n, 3, H, W), got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    n, _, h, w = x.shape
    scale = min(h, w) / _REFERENCE_SIZE
    mask = _coverage(y) > 0.5
    region = _interior(mask, scale)
    region = torch.where(region.flatten(1).any(dim=1)[:, None, None], region, mask)
    region = torch.where(region.flatten(1).any(dim=1)[:, None, None], region, torch.ones_like(region))
    value = x.amax(dim=1, keepdim=True)
    normalised = torch.where(value > _CHROMA_EPS, x / torch.clamp(value, min=_CHROMA_EPS), torch.ones_like(x))
    weights = region[:, None].to(x.dtype)
    mean = (normalised * weights).sum(dim=(2, 3)) / weights.sum(dim=(2, 3))
    lab = ops.rgb_to_lab(torch.clamp(mean, 0, 1)[..., None, None])[..., 0, 0]
    energy = _spectrum_of(x, _interior(mask, scale), relative=False).sum(dim=1, keepdim=True)
    d_ref, ground, _ = _chroma_distance(y)
    mask_ref = (_coverage(y) > 0.5).reshape(n, -1)
    inside = torch.where(mask_ref, d_ref, torch.nan).nanmean(dim=1, keepdim=True)
    outside = torch.where(~mask_ref, d_ref, torch.nan).nanmean(dim=1, keepdim=True)
    contrast = torch.nan_to_num(inside - outside, nan=1.0).clamp(min=_MIN_CONTRAST)

    def soft_mask(d):  # the chromaticity contrast in units of the reference object's, unclamped
        return ((d - torch.nan_to_num(outside, nan=0.0)) / contrast).reshape(n, h, w)

    return {"color": lab, "texture_energy": energy, "object_map": soft_mask(_chroma_distance(x, ground)[0])}


def lab_delta_e2000(lab1: torch.Tensor, lab2: torch.Tensor) -> torch.Tensor:
    """CIEDE2000 colour difference of CIELAB colours, channels last (``delta_e2000``'s formula).

    Parameters
    ----------
    lab1, lab2 : torch.Tensor, shape (..., 3)
        Broadcasting L*, a*, b* triples (e.g. :func:`object_descriptors`' ``"color"``).

    Returns
    -------
    torch.Tensor, shape (...)
    """
    return ops.delta_e_ciede2000(lab1, lab2, dim=-1)
