"""An ablation scan naive, with prefix caching, and with prefix caching and batched edited runs, in one process.

    python benchmarks/ablation_scan.py                                  # tiny-class-unet, CPU
    python benchmarks/ablation_scan.py --model toy --steps 50 --windows 5
    python benchmarks/ablation_scan.py --model sd15-random --device cuda --fp16 --samples 4 --steps 20

Both variants ablate every top-level block (``denoisefeat.hooks.top_level_layers``) in ``--windows``
equal step windows and compute the same features; "uncached" (the naive scan) runs every ablated
trajectory from step 0, one at a time; "cached" starts it from the clean trajectory's cached state at
the window's start; "batched" also denoises up to ``--lanes`` ablated trajectories that start at the
same step in one batch.  With ``W`` equal windows the cached scan needs about ``(W + 1) / 2W`` of
the edited denoiser calls.  ``--blocks``: ``top`` for every top-level block (7 on the toy model).
Prints JSON: median wall times, denoiser calls, the speed-ups over the naive scan, and the largest
differences between the tables (0 for cached vs naive; the denoiser's batch-size rounding for batched).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import PipelineBench, add_model_arguments, emit, interleaved, median  # noqa: E402

from denoisefeat.analyses import ablation_scan  # noqa: E402
from denoisefeat.hooks import top_level_layers  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.set_defaults(model="tiny-class-unet", samples=4, steps=20, repeats=3)
    parser.add_argument("--windows", type=int, default=4, help="equal step windows")
    parser.add_argument("--method", default="zero", help="ablation method(s), comma-separated")
    parser.add_argument("--features", default="color", help="feature groups or metrics, comma-separated")
    parser.add_argument("--lanes", type=int, default=8, help="ablated trajectories per denoiser batch (batched)")
    parser.add_argument("--blocks", default="top", help="'top' (down/mid/up blocks) or 'all' top-level layers")
    args = parser.parse_args()
    bench = PipelineBench(args, decode_plain=False)
    layers = top_level_layers(bench.pipe)
    if args.blocks == "top":
        layers = [name for name in layers if "blocks" in name or name == "mid_block"]
    kwargs = dict(layers=layers, windows=args.windows, method=args.method.split(","),
                  features=args.features.split(","), samples=args.samples, seed=bench.seeds, steps=args.steps,
                  batch_size=args.samples, **bench.condition)
    tables = {}

    def variant(name: str, cache: bool, lanes: int):
        def run():
            tables[name] = ablation_scan(bench.pipe, cache=cache, lanes=lanes, **kwargs)

        return run

    times = interleaved({"uncached": variant("uncached", False, 1), "cached": variant("cached", True, 1),
                         "batched": variant("batched", True, args.lanes)}, repeats=args.repeats)
    med = {name: median(t) for name, t in times.items()}
    stats = ["effect", "ci_low", "ci_high", "p"]

    def difference(a, b):
        return float(np.nanmax(np.abs(tables[a][stats].to_numpy() - tables[b][stats].to_numpy())))

    def relative(a, b):
        x, y = tables[a]["effect"].to_numpy(), tables[b]["effect"].to_numpy()
        return float(np.nanmax(np.abs(x - y) / np.maximum(np.abs(y), 1e-12)))
    emit({
        **bench.header("ablation_scan"),
        "layers": layers, "windows": args.windows, "methods": kwargs["method"], "features": kwargs["features"],
        "rows": len(tables["cached"]),
        "seconds": {k: round(v, 4) for k, v in med.items()},
        "speedup_vs_naive": {k: round(med["uncached"] / med[k], 3) for k in ("cached", "batched")},
        "denoiser_calls": {k: t.attrs["denoiser_calls"] for k, t in tables.items()},
        "lanes": args.lanes,
        "max_abs_difference_cached_vs_naive": difference("cached", "uncached"),
        "max_abs_difference_batched_vs_naive": difference("batched", "uncached"),
        "max_relative_effect_difference_batched_vs_naive": relative("batched", "uncached"),
        "load_average": list(os.getloadavg()),
    })


if __name__ == "__main__":
    main()
