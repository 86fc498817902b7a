"""The metric selectivity matrix on DiffShapes counterfactual pairs, at 32 and 64 px, and metric costs.

    OMP_NUM_THREADS=1 python benchmarks/metric_selectivity.py [N_PAIRS] [--legacy]   # prints JSON

For every metric of ``denoisefeat.metrics.FEATURE_GROUPS`` (with ``--legacy`` also the older
group metrics: edge_density, edge_f1, glcm_contrast, lbp_distance, mask_iou,
hu_moment_distance, delta_e2000, colorfulness) and every factor, the median response over
``N_PAIRS`` pairs (default 64); the selectivity ratio (own-factor min / other-factor max, the
criterion is >= 5); and the per-image cost of the FEATURE_GROUPS metrics (one ``compute_metrics``
call on 48 images against their references).
"""
import sys
import time

import numpy as np

from denoisefeat.metrics import FEATURE_GROUPS, compute_metrics
from denoisefeat.metrics.selectivity import OWN_FACTORS, metric_selectivity, selectivity_ratio
from denoisefeat.toy.diffshapes import generate

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import emit, machine  # noqa: E402

LEGACY = {"edges": ("edge_density", "edge_f1"), "texture": ("glcm_contrast", "lbp_distance"),
          "shape": ("mask_iou", "hu_moment_distance"), "color": ("delta_e2000", "colorfulness")}

args = [a for a in sys.argv[1:] if not a.startswith("--")]
n_pairs = int(args[0]) if args else 64
groups = {g: FEATURE_GROUPS[g] + (LEGACY[g] if "--legacy" in sys.argv else ()) for g in FEATURE_GROUPS}
names = [m for ms in groups.values() for m in ms]
result = {"benchmark": "metric_selectivity", "n_pairs": n_pairs, "feature_groups": dict(FEATURE_GROUPS),
          "own_factors": dict(OWN_FACTORS), "machine": machine(), "sizes": {}}
for size in (32, 64):
    start = time.perf_counter()
    matrix = metric_selectivity(metrics=names, n_pairs=n_pairs, size=size)
    elapsed = time.perf_counter() - start
    ratio = selectivity_ratio(matrix, groups=groups)
    images = generate(48, seed=1, size=size).images
    reference = generate(48, seed=2, size=size).images
    selected = list(dict.fromkeys(m for ms in FEATURE_GROUPS.values() for m in ms))
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        compute_metrics(images, reference, names=selected)
        times.append(time.perf_counter() - t0)
    result["sizes"][str(size)] = {
        "matrix": {m: {f: float(matrix.sel(metric=m, factor=f)) for f in matrix["factor"].values}
                   for m in matrix["metric"].values},
        "selectivity_ratio": {m: float(r) for m, r in zip(ratio["metric"].values, ratio.values)},
        "passes": {m: bool(r >= 5) for m, r in zip(ratio["metric"].values, ratio.values)},
        "matrix_seconds": round(elapsed, 2),
        "feature_groups_ms_per_image": round(1e3 * float(np.median(times)) / 48, 3),
    }
emit(result)
