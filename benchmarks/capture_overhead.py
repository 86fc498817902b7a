"""Wall time of the plain pipeline vs ``trace`` (store writing on) on the same model and seeds.

    python benchmarks/capture_overhead.py                    # toy model, CPU, 8 samples × 50 steps
    python benchmarks/capture_overhead.py --model sd15-random --device cuda --fp16 --samples 8

Prints JSON: median wall times over repeats (runs alternate, in one process) and their ratio.
``trace`` is timed twice: keeping xt and x0 only, and with the decoded image of every step
(for latent models that is one VAE decode per step, which the plain pipeline does once).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, machine, random_sd15_pipeline, timed  # noqa: E402

from denoisefeat.models import load_pipeline  # noqa: E402
from denoisefeat.trajectory import trace  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    dtype = torch.float16 if args.fp16 else torch.float32
    if args.model == "sd15-random":
        pipe = random_sd15_pipeline(dtype=dtype, device=args.device)
    else:
        pipe = load_pipeline(args.model, device=args.device, dtype=dtype if args.fp16 else None)
    seeds = list(range(args.samples))
    latent = hasattr(pipe, "vae")
    if latent:
        condition = {"prompts": ["a photo of a red circle"] * args.samples}
        plain_kwargs = {"prompt": condition["prompts"], "output_type": "pt"}
    else:
        labels = [0] * args.samples
        condition = {"class_labels": labels}
        plain_kwargs = {"class_labels": labels, "output_type": "pt"}

    def plain():
        gens = [torch.Generator(args.device).manual_seed(s) for s in seeds]
        pipe(generator=gens, num_inference_steps=args.steps, **plain_kwargs)

    tmp = Path(tempfile.mkdtemp())
    counter = iter(range(10**6))

    def traced(keep):
        def run():
            trace(pipe, seed=seeds, steps=args.steps, batch_size=args.samples, keep=keep,
                  store=tmp / f"run{next(counter)}.zarr", **condition)
        return run

    plain()  # warm-up (allocations, kernels)
    runs = {"plain": [], "trace_xt_x0": [], "trace_all": []}
    fns = {"plain": plain, "trace_xt_x0": traced(("xt", "x0")), "trace_all": traced(("xt", "x0", "images"))}
    for _ in range(args.repeats):  # interleaved, so that drift hits every variant alike
        for name, fn in fns.items():
            runs[name].append(timed(fn, repeats=1)["median_s"])
    med = {name: sorted(t)[len(t) // 2] for name, t in runs.items()}
    emit({
        "benchmark": "capture_overhead", "model": args.model, "device": args.device, "dtype": str(dtype),
        "samples": args.samples, "steps": args.steps, "repeats": args.repeats, "machine": machine(),
        "seconds": {k: round(v, 4) for k, v in med.items()},
        "all_seconds": {k: [round(x, 4) for x in v] for k, v in runs.items()},
        "ratio_trace_xt_x0": round(med["trace_xt_x0"] / med["plain"], 4),
        "ratio_trace_all": round(med["trace_all"] / med["plain"], 4),
    })


if __name__ == "__main__":
    main()
