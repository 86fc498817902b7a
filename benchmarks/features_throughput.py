"""Throughput of the default metric set: ``compute_metrics`` vs a naive per-image scikit-image loop.

    OMP_NUM_THREADS=1 python benchmarks/features_throughput.py SIZE [SAMPLES STEPS]   # prints JSON

Both sides compute the same metrics on the same synthetic DiffShapes trajectories (issue 4).
"""
import json
import sys
import time

import numpy as np
import pywt
from scipy import ndimage as ndi
from skimage import color, feature, filters, measure
from skimage import metrics as skm

import denoisefeat.metrics as M
from denoisefeat.frequency import DEFAULT_BANDS, band_pass
from denoisefeat.toy.diffshapes import generate

size = int(sys.argv[1]) if len(sys.argv) > 1 else 32
S = int(sys.argv[2]) if len(sys.argv) > 2 else 8
T = int(sys.argv[3]) if len(sys.argv) > 3 else 8
b = generate(S, seed=0, size=size)
ims = b.images.astype(np.float64)
rng = np.random.default_rng(0)
traj = np.stack([np.clip((t / (T - 1)) * ims + (1 - t / (T - 1)) * 0.5
                         + 0.1 * (1 - t / (T - 1)) * rng.standard_normal(ims.shape), 0, 1) for t in range(T)], 1)
ref = ims[:, None]


def naive_one(x, r):
    """Every default metric for one (image, reference) pair, per-image scikit-image calls."""
    out = {}
    out["ssim"] = skm.structural_similarity(x, r, data_range=1, channel_axis=0)
    out["ms_ssim"] = M.ms_ssim(x, r, data_range=1)  # no scikit-image MS-SSIM
    out["psnr"] = skm.peak_signal_noise_ratio(r, x, data_range=1)
    bx, br = band_pass(x), band_pass(r)  # (3, n_bands, H, W)
    for i, name in enumerate(DEFAULT_BANDS):
        out[f"band_{name}"] = skm.structural_similarity(bx[:, i], br[:, i], data_range=1, channel_axis=0)
    gx, gr = color.rgb2gray(np.moveaxis(x, 0, -1)), color.rgb2gray(np.moveaxis(r, 0, -1))
    ex, er = feature.canny(gx), feature.canny(gr)
    out["edge_density"] = ex.mean()
    out["edge_sharpness"] = M.edge_sharpness(gx, channel_axis=None, edges=ex)
    dx, dr = ndi.binary_dilation(ex, np.ones((3, 3))), ndi.binary_dilation(er, np.ones((3, 3)))
    p, rc = (ex & dr).sum() / max(ex.sum(), 1), (er & dx).sum() / max(er.sum(), 1)
    out["edge_f1"] = 2 * p * rc / max(p + rc, 1e-12)
    q = np.minimum((gx * 32).astype(np.uint8), 31)
    P = feature.graycomatrix(q, [1], [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=32, symmetric=True, normed=True)
    for prop in ("contrast", "homogeneity", "energy", "correlation"):
        out[prop] = feature.graycoprops(P, prop).mean()
    lx = feature.local_binary_pattern(np.round(gx * 255).astype(np.uint8), 8, 1, "uniform")
    lr = feature.local_binary_pattern(np.round(gr * 255).astype(np.uint8), 8, 1, "uniform")
    hx = np.bincount(lx.astype(int).ravel(), minlength=10) / lx.size
    hr = np.bincount(lr.astype(int).ravel(), minlength=10) / lr.size
    s = hx + hr
    out["lbp"] = 0.5 * np.sum(np.where(s > 0, (hx - hr) ** 2 / np.where(s > 0, s, 1), 0))
    c = pywt.wavedec2(gx - gx.mean(), "db2", mode="periodization")
    out["wavelet"] = sum((d ** 2).sum() for d in c[-2]) + sum((d ** 2).sum() for d in c[-3])
    mx, mr = gx > filters.threshold_otsu(gx), gr > filters.threshold_otsu(gr)
    out["iou"] = (mx & mr).sum() / max((mx | mr).sum(), 1)
    hu = [measure.moments_hu(measure.moments_normalized(measure.moments_central(m.astype(float), order=3), order=3))
          for m in (mx, mr)]
    out["hu"] = np.abs(np.log10(1 + np.abs(hu[0]) / 1e-6) - np.log10(1 + np.abs(hu[1]) / 1e-6)).sum()
    labx, labr = color.rgb2lab(np.moveaxis(x, 0, -1)), color.rgb2lab(np.moveaxis(r, 0, -1))
    out["lab"] = labx.mean((0, 1))
    out["de"] = color.deltaE_ciede2000(labx, labr).mean()
    sp = [np.sqrt(((lab[mr] - lab[mr].mean(0)) ** 2).sum(-1)).mean() for lab in (labx, labr)]
    out["consistency"] = sp[0] - sp[1]
    hsx, hsr = color.rgb2hsv(np.moveaxis(x, 0, -1)), color.rgb2hsv(np.moveaxis(r, 0, -1))
    hh = [np.histogram(h[..., 0], 36, (0, 1), weights=h[..., 1] * h[..., 2])[0] for h in (hsx, hsr)]
    out["hue"] = hh
    rg, yb = x[0] - x[1], 0.5 * (x[0] + x[1]) - x[2]
    out["colorfulness"] = 255 * (np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))
    return out


def best(f, repeat=3):
    f()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return min(ts)


n = S * T
t_fast = best(lambda: M.compute_metrics(traj, ref))
t_naive = best(lambda: [naive_one(traj[i, j], ref[i, 0]) for i in range(S) for j in range(T)], repeat=2)
print(json.dumps({
    "size": size, "images": n,
    "us_per_image_compute_metrics": round(t_fast / n * 1e6, 1),
    "us_per_image_naive_loop": round(t_naive / n * 1e6, 1),
    "images_per_s": round(n / t_fast, 1),
    "speedup": round(t_naive / t_fast, 2),
    "n_metrics": len(M.compute_metrics(traj[:1, :1], ref[:1])),
}))
