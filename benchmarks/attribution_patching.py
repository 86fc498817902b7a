"""Attribution patching vs the exact ablation scan on the toy model; peak memory vs steps.

    python benchmarks/attribution_patching.py                    # toy model, 4 samples x 10 steps, CPU
    python benchmarks/attribution_patching.py --samples 8 --steps 20

1. **Agreement** on the exact scan's grid: the 7 top-level blocks (down, mid, up) x ``--windows`` step windows, the
   default feature groups (surrogates where the metric is not differentiable): Spearman correlation
   of the estimated and the exact effects per feature over the grid's cells (target >= 0.8), and the
   top cell of each; within each window (over the blocks); and the error decomposed on the same
   edited images: the surrogates' exact changes vs the metrics' (the surrogate's part) and the
   estimate vs the surrogates' exact changes (the first order's part).
2. **Cost** at sub-module x step granularity (every ``resnets``/``attentions`` module x every step):
   the estimate's denoiser-equivalent evaluations (forward calls + 2 x backward passes) and wall time,
   vs the exact scan of the same grid: its denoiser calls counted (``EditScan.planned_calls`` with
   prefix caching), its wall time extrapolated from the block scan's measured time per call (the
   exact sub-module scan itself would take too long here); and both counts at 10, 20 and 50 steps
   (the exact scan grows with steps², the estimate with steps), for the toy model's modules and for
   Stable Diffusion 1.5's (its ``resnets``/``attentions`` counted from its configuration; the exact
   scan grows with the modules too, the first-order estimate does not).  Target: >= 10x cheaper.
3. **Peak memory vs steps**: attribution patching of the linear planted model (64 px, 4 samples) at
   ``--memory-steps``, each in a fresh process: its peak RSS (``VmHWM``, reset after a warm-up run)
   above the RSS before the run.  Bounded: one step's graph plus one state per step.

Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import SD15_UNET, emit, machine, peak_rss_mib  # noqa: E402

_MEMORY_CHILD = """
import json, re, sys
from denoisefeat.toy.planted import linear_planted_pipeline
from denoisefeat.analyses.attribution_patching import attribution_patching

def mib(key):
    return int(re.search(key + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024

pipe = linear_planted_pipeline(size=64)
run = dict(layers=["layout", "detail"], features=["edges"], samples=4, seed=0)
attribution_patching(pipe, steps=2, **run)  # warm: imports, allocator
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
before = mib("VmRSS")
attribution_patching(pipe, steps=int(sys.argv[1]), **run)
print(json.dumps({"steps": int(sys.argv[1]), "peak_above_start_mib": round(mib("VmHWM") - before, 1)}))
"""


def _rho(a, b) -> float | None:
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 3 or np.ptp(a[keep]) == 0 or np.ptp(b[keep]) == 0:
        return None
    return round(float(stats.spearmanr(a[keep], b[keep]).statistic), 3)


def _submodule(name: str) -> bool:
    """A ``resnets`` or ``attentions`` module: the sub-module granularity of the cost comparison."""
    return name.split(".")[-2:-1] in (["resnets"], ["attentions"])


def _labels(n: int) -> list[int]:
    from denoisefeat.toy.diffshapes import SHAPES, condition_label

    colors, textures = ("red", "blue", "green", "yellow"), ("stripes", "dots", "checker", "solid")
    return [condition_label(SHAPES[i % len(SHAPES)], colors[i % 4], textures[(i // 2) % 4]) for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--method", default="zero")
    parser.add_argument("--memory-steps", default="5,10,20,40", help="comma-separated step counts")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()

    import torch
    from diffusers import UNet2DConditionModel

    import denoisefeat as dft
    from denoisefeat.analyses import ablation_scan
    from denoisefeat.analyses.attribution_patching import (
        ESTIMATORS,
        agreement,
        attribution_patching,
        feature_changes,
    )
    from denoisefeat.analyses.scan import EditScan
    from denoisefeat.hooks import Edit, list_layers, top_level_layers
    from denoisefeat.metrics import compute_metrics
    from denoisefeat.options import RunOptions

    memory = []
    for steps in ([] if args.skip_memory else [int(s) for s in args.memory_steps.split(",")]):
        out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(steps)], capture_output=True, text=True,
                             check=True)
        memory.append(json.loads(out.stdout.strip().splitlines()[-1]))
    pipe = dft.load_pipeline("toy")
    run = dict(class_labels=_labels(args.samples), steps=args.steps, seed=0)
    blocks = [b for b in top_level_layers(pipe) if b.split(".")[0] in ("down_blocks", "mid_block", "up_blocks")]
    result = {"machine": machine(), "model": "toy", "samples": args.samples, "steps": args.steps,
              "windows": args.windows, "method": args.method, "blocks": blocks, "memory_vs_steps": memory}

    estimates, ap_time = {}, {}
    for estimator in ESTIMATORS:
        start = time.perf_counter()
        estimates[estimator] = attribution_patching(pipe, layers=blocks, windows=args.windows, method=args.method,
                                                    estimator=estimator, **run)
        ap_time[estimator] = time.perf_counter() - start
    names = list(dict.fromkeys(estimates["first_order"]["feature"]))
    start = time.perf_counter()
    exact = ablation_scan(pipe, layers=blocks, windows=args.windows, method=args.method, features=names, **run)
    exact_time = time.perf_counter() - start
    windows = sorted(set(zip(exact["step_start"], exact["step_stop"])))
    # where the disagreement comes from: the surrogates' exact changes on the same edited images
    scan = EditScan(pipe, RunOptions.of(run, caller="benchmark"))
    grid = [(layer, start, stop) for layer in blocks for start, stop in windows]
    edits = [Edit(layer=layer, method=args.method, steps=range(start, stop)) for layer, start, stop in grid]
    clean = scan.run_base(edits)
    base = compute_metrics(clean, clean, names=names)
    metric, surrogate = {n: [] for n in names}, {n: [] for n in names}
    for edited in scan.run_edits(edits):
        values, changes = compute_metrics(edited, clean, names=names), feature_changes(edited, clean)
        for n in names:
            metric[n].append(float(np.nanmean(values[n] - base[n])))
            surrogate[n].append(float(np.mean(changes[n])))
    result["blocks_x_windows"] = {"cells": len(blocks) * args.windows, "surrogate_vs_metric": {
        n: _rho(surrogate[n], metric[n]) for n in names},
        "exact": {"wall_s": round(exact_time, 2), "denoiser_calls": exact.attrs["denoiser_calls"]}}
    for estimator, estimated in estimates.items():
        est = {(r.feature, r.layer, r.step_start, r.step_stop): r.effect for r in estimated.itertuples()}
        within = {}
        for start, stop in windows:
            def cells(frame, start=start, stop=stop):
                return frame[(frame["step_start"] == start) & (frame["step_stop"] == stop)]

            for feature, agreed in agreement(cells(estimated), cells(exact)).items():
                within.setdefault(feature, {})[f"{start}:{stop}"] = agreed["spearman"]
        result["blocks_x_windows"][estimator] = {
            "spearman": {n: a["spearman"] for n, a in agreement(estimated, exact).items()},
            "agreement": agreement(estimated, exact),
            "estimate_vs_surrogate": {n: _rho([est[(n, *cell)] for cell in grid], surrogate[n]) for n in names},
            "spearman_within_each_window": within,
            "estimate": {"wall_s": round(ap_time[estimator], 2),
                         "denoiser_equivalents": estimated.attrs["denoiser_equivalents"],
                         "denoiser_calls": estimated.attrs["denoiser_calls"],
                         "backward_passes": estimated.attrs["backward_passes"]},
        }

    subs = [info.name for info in list_layers(pipe) if _submodule(info.name)]
    scan = EditScan(pipe, RunOptions.of(run, caller="benchmark"))
    cells = [Edit(layer=layer, method=args.method, steps=[s]) for layer in subs for s in range(scan.n_steps)]
    exact_calls = scan.planned_calls(cells)
    per_call = exact_time / exact.attrs["denoiser_calls"]
    result["submodules_x_steps"] = {
        "modules": len(subs), "cells": len(cells),
        "exact_planned": {"denoiser_calls": exact_calls, "wall_s_extrapolated": round(exact_calls * per_call, 1)}}
    for estimator in ESTIMATORS:
        start = time.perf_counter()
        fine = attribution_patching(pipe, layers=subs, method=args.method, estimator=estimator, **run)
        fine_time = time.perf_counter() - start
        result["submodules_x_steps"][estimator] = {
            "wall_s": round(fine_time, 2), "denoiser_equivalents": fine.attrs["denoiser_equivalents"],
            "cheaper_by_evaluations": round(exact_calls / fine.attrs["denoiser_equivalents"], 2),
            "cheaper_by_wall_time": round(exact_calls * per_call / fine_time, 2),
            "faster_than_blocks_exact_scan": fine_time < exact_time,
        }
    k = fine.attrs["components"] + fine.attrs["disruption_probes"]  # backward passes per step
    with torch.device("meta"):  # SD 1.5's module names, no weights
        sd15 = [name for name, _ in UNet2DConditionModel(**SD15_UNET).named_modules() if _submodule(name)]
    assert [name for name, _ in pipe.unet.named_modules() if _submodule(name)] == subs
    scaling = {}
    for model, modules in (("toy", subs), ("sd15", sd15)):
        scaling[model] = {"modules": len(modules)}
        for steps in (10, 20, 50):  # counted, not run: the exact scan's planned calls, the estimate's formula
            grid = EditScan(pipe, RunOptions.of({**run, "steps": steps}, caller="benchmark"))
            planned = grid.planned_calls([Edit(layer=layer, method=args.method, steps=[s]) for layer in modules
                                          for s in range(grid.n_steps)])  # counts names, runs nothing
            estimate = len(grid.chunks) * (2 * steps + 1 + 2 * steps * k)  # calls + 2 x backward passes
            exact_step = estimate + len(grid.chunks) * steps * len(modules)  # + one call per module and step
            scaling[model][steps] = {"exact_calls": planned, "first_order_equivalents": estimate,
                                     "exact_step_equivalents": exact_step,
                                     "cheaper_by_evaluations": {"first_order": round(planned / estimate, 2),
                                                                "exact_step": round(planned / exact_step, 2)}}
    result["submodules_x_steps"]["scaling_counted"] = scaling
    result["peak_rss_mib"] = round(peak_rss_mib(), 1)

    emit(result)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
