"""Size and build time of the HTML report of a run (issues 7 and 21).

    OMP_NUM_THREADS=1 python benchmarks/report_size.py [--model toy] [--samples 64] [--steps 50]   # prints JSON
    OMP_NUM_THREADS=2 python benchmarks/report_size.py --synthetic --size 512 --samples 16 --steps 50

Traces the model (default: the trained toy model when its weights are installed, else
``tiny-class-unet``) into a temporary store, recording two layers, then times ``build_report``
(median of ``--repeats``) and reports the file size, the number of figures and the size of the
embedded plotly.js.  ``--store PATH`` reports on an existing store instead; ``--synthetic`` writes
a store of ``--size``² photo-like images directly (``tests/photo_store.py``, no model), as a
Stable Diffusion run's decoded x̂0 would be.  ``size_mb`` is the report's size, ``max_mb`` its
budget (``--max-mb``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # photo_store

from _common import emit, machine, peak_rss_mib, timed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a load_pipeline source (default: toy if installed)")
    parser.add_argument("--store", default=None, help="report on this existing run store instead of tracing")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--synthetic", action="store_true", help="photo-like images written straight to a store")
    parser.add_argument("--size", type=int, default=512, help="image side of --synthetic")
    parser.add_argument("--max-mb", type=float, default=25.0, help="the report's budget")
    args = parser.parse_args()

    import denoisefeat as dft
    from denoisefeat.models import TOY_WEIGHTS
    from denoisefeat.viz import build_report

    tmp = Path(tempfile.mkdtemp(prefix="dft-report-bench-"))
    trace_s = None
    if args.store:
        run = dft.open_run(args.store)
        model = run.attrs.get("model_id")
    elif args.synthetic:
        from photo_store import write_photo_store

        start = time.perf_counter()
        run = dft.open_run(write_photo_store(tmp / "run.zarr", samples=args.samples, steps=args.steps, size=args.size))
        trace_s = time.perf_counter() - start
        model = "synthetic-photos"
    else:
        model = args.model or ("toy" if (TOY_WEIGHTS / "model_index.json").exists() else "tiny-class-unet")
        pipe = dft.load_pipeline(model)
        null_class = getattr(pipe, "null_class", None)  # class-conditional: labels 0 … null_class − 1
        labels = [i % null_class for i in range(args.samples)] if null_class else None
        layers = [name for name in ("mid_block", "up_blocks.1") if name in dict(pipe.unet.named_modules())]
        start = time.perf_counter()
        run = dft.trace(pipe, samples=args.samples, class_labels=labels, seed=0, steps=args.steps,
                        store=tmp / "run.zarr", record={name: "channel_mean" for name in layers})
        trace_s = time.perf_counter() - start

    out = tmp / "report.html"
    timing = timed(lambda: build_report(run, out, max_mb=args.max_mb), repeats=args.repeats)
    text = out.read_text(encoding="utf-8")
    from plotly.offline import get_plotlyjs

    from denoisefeat.viz.plotly_bundle import plotly_js

    embedded = next(lib for lib in (plotly_js(["scatter"]), get_plotlyjs()) if lib in text)
    emit({
        "benchmark": "report_size",
        "model": model,
        "samples": run.store.n_samples,
        "steps": run.store.n_steps,
        "image_size": list(run.dataset["images"].shape[-2:]) if "images" in run.dataset else None,
        "figures": text.count('<figure class="dft-figure"'),
        "size_mb": round(out.stat().st_size / 2**20, 3),
        "max_mb": args.max_mb,
        "budget_lines": re.findall(r'<p class="dft-budget">([^<]*)</p>', text),
        "plotlyjs_mb": round(len(embedded.encode()) / 2**20, 3),  # the plotly.js embedded (partial bundle or full)
        "plotlyjs_bundle": "cartesian" if embedded != get_plotlyjs() else "full",
        "build_s": round(timing["median_s"], 3),
        "build_times_s": timing["times_s"],
        "trace_s": None if trace_s is None else round(trace_s, 3),  # or the synthetic store's writing
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "load_average": [round(v, 1) for v in os.getloadavg()],  # other work on the machine meanwhile
        "machine": machine(),
    })


if __name__ == "__main__":
    main()
