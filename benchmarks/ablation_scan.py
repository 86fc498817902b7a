"""An ablation scan with and without prefix caching, in one process.

    python benchmarks/ablation_scan.py                                  # tiny-class-unet, CPU
    python benchmarks/ablation_scan.py --model toy --steps 50 --windows 5
    python benchmarks/ablation_scan.py --model sd15-random --device cuda --fp16 --samples 4 --steps 20

Both variants ablate every top-level block (``denoisefeat.hooks.top_level_layers``) in ``--windows``
equal step windows and compute the same features; "uncached" runs every ablated trajectory from step
0, "cached" starts it from the clean trajectory's cached state at the window's start.  With ``W``
equal windows the cached scan needs about ``(W + 1) / 2W`` of the edited denoiser calls.
Prints JSON: median wall times, denoiser calls, the speed-up, and the largest difference between the
two tables (0 up to float rounding).
"""

from __future__ import annotations

import argparse
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
    args = parser.parse_args()
    bench = PipelineBench(args, decode_plain=False)
    layers = top_level_layers(bench.pipe)
    kwargs = dict(layers=layers, windows=args.windows, method=args.method.split(","),
                  features=args.features.split(","), samples=args.samples, seed=bench.seeds, steps=args.steps,
                  batch_size=args.samples, **bench.condition)
    tables = {}

    def variant(cache: bool):
        def run():
            tables[cache] = ablation_scan(bench.pipe, cache=cache, **kwargs)

        return run

    times = interleaved({"uncached": variant(False), "cached": variant(True)}, repeats=args.repeats)
    med = {name: median(t) for name, t in times.items()}
    stats = ["effect", "ci_low", "ci_high", "p"]
    difference = np.nanmax(np.abs(tables[True][stats].to_numpy() - tables[False][stats].to_numpy()))
    emit({
        **bench.header("ablation_scan"),
        "layers": layers, "windows": args.windows, "methods": kwargs["method"], "features": kwargs["features"],
        "rows": len(tables[True]),
        "seconds": {k: round(v, 4) for k, v in med.items()},
        "speedup": round(med["uncached"] / med["cached"], 3),
        "denoiser_calls": {"uncached": tables[False].attrs["denoiser_calls"],
                           "cached": tables[True].attrs["denoiser_calls"]},
        "max_abs_difference": float(difference),
    })


if __name__ == "__main__":
    main()
