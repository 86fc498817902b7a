"""Throughput of the default metric set, and analysis vs generation of one toy run.

    OMP_NUM_THREADS=1 python benchmarks/features_throughput.py                  # CPU, prints JSON
    python benchmarks/features_throughput.py --device cuda --sizes 32 64 256 512  # a GPU node

Part 1, per image size (ratios measured in one run, on the same images): the naive per-image
scikit-image loop (below) vs ``compute_metrics`` (numpy, batched) vs ``device_metrics`` (torch on
``--device``, float64 and float32).  All compute the default metrics on the same synthetic
DiffShapes trajectories (issue 4); the naive loop covers the metrics that existed when it was
written (not the object-level ones), so the batched sides do more work than it does.

Part 2 (``--run-samples`` > 0): the toy model's run (``--run-samples`` × ``--run-steps``) generated
with ``trace`` (keeping xt, x0 and images) vs ``features(run)`` of that run on the host (numpy)
and with ``device=--device``.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pywt
import torch
from scipy import ndimage as ndi
from skimage import color, feature, filters, measure
from skimage import metrics as skm

import denoisefeat.metrics as M
from denoisefeat.frequency import DEFAULT_BANDS, band_pass
from denoisefeat.metrics.device import device_metrics
from denoisefeat.toy.diffshapes import generate

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, timed  # noqa: E402


def trajectory(size, S, T):
    ims = generate(S, seed=0, size=size).images.astype(np.float64)
    rng = np.random.default_rng(0)
    traj = np.stack([np.clip((t / (T - 1)) * ims + (1 - t / (T - 1)) * 0.5
                             + 0.1 * (1 - t / (T - 1)) * rng.standard_normal(ims.shape), 0, 1) for t in range(T)], 1)
    return traj, ims[:, None]


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


def best(f, repeat):
    """Median of ``repeat`` timed calls after one warm-up call (device work synchronised)."""
    f()
    return timed(f, repeats=repeat)["median_s"]


def throughput(size, S, T, device, repeat):
    traj, ref = trajectory(size, S, T)
    n = S * T
    x64, r64 = torch.from_numpy(traj).to(device), torch.from_numpy(ref).to(device)
    x32, r32 = x64.float(), r64.float()
    t = {
        "naive_loop": best(lambda: [naive_one(traj[i, j], ref[i, 0]) for i in range(S) for j in range(T)], 1),
        "compute_metrics": best(lambda: M.compute_metrics(traj, ref), repeat),
        "device_metrics_float64": best(lambda: device_metrics(x64, r64), repeat),
        "device_metrics_float32": best(lambda: device_metrics(x32, r32), repeat),
    }
    return {
        "size": size, "images": n,
        "us_per_image": {k: round(v / n * 1e6, 1) for k, v in t.items()},
        "speedup_vs_naive": {k: round(t["naive_loop"] / v, 2) for k, v in t.items() if k != "naive_loop"},
    }


def analysis_vs_generation(S, steps, device, repeat):
    from denoisefeat.models import load_pipeline
    from denoisefeat.step_features import features
    from denoisefeat.trajectory import trace

    pipe = load_pipeline("toy")
    tmp = Path(tempfile.mkdtemp())
    count = [0]

    def generate_run():
        count[0] += 1
        trace(pipe, class_labels=[i % 4 for i in range(S)], seed=list(range(S)), steps=steps, batch_size=S,
              store=tmp / f"run{count[0]}.zarr", keep=("xt", "x0", "images"))

    t_gen = best(generate_run, repeat)
    run = tmp / "run1.zarr"

    def analyse(**kwargs):
        def go():
            features(run, overwrite=True, **kwargs)
        return go

    t_host = best(analyse(), repeat)
    t_dev = best(analyse(device=device), repeat)
    size = int(pipe.unet.config.sample_size)
    return {
        "model": "toy", "samples": S, "steps": steps, "image_size": size,
        "seconds": {"generate_trace": round(t_gen, 3), "features_numpy": round(t_host, 3),
                    f"features_device_{device}": round(t_dev, 3)},
        "ratio_analysis_over_generation": {"numpy": round(t_host / t_gen, 2),
                                           f"device_{device}": round(t_dev / t_gen, 2)},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 256, 512])
    parser.add_argument("--images", type=int, default=16,
                        help="images (samples x 4 steps) at 32 px; fewer at larger sizes (same pixels, at least 4)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--run-samples", type=int, default=8)
    parser.add_argument("--run-steps", type=int, default=30)
    args = parser.parse_args()
    results = []
    for size in args.sizes:
        n = max(4, int(args.images * (32 / size) ** 2) // 4 * 4)
        results.append(throughput(size, n // 4, 4, args.device, args.repeats))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    out = {"benchmark": "features_throughput", "device": args.device, "machine": machine(),
           "throughput": results}
    if args.run_samples > 0:
        out["analysis_vs_generation"] = analysis_vs_generation(args.run_samples, args.run_steps, args.device,
                                                               args.repeats)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
