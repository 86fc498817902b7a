"""Plain pipeline vs ``trace`` with recording, torch-hook and nnsight backends, in one process.

    python benchmarks/hook_overhead.py                                   # toy model, CPU
    python benchmarks/hook_overhead.py --model sd15-random --device cuda --fp16

Variants (each stores xt and x0 as ``trace`` does; "images" are not decoded, so that the ratio
isolates the hooks):
    (a) channel_mean on every top-level block;  (b) full activations of one mid-resolution block.
Prints JSON with median wall times and ratios to the plain pipeline.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, machine, random_sd15_pipeline, timed  # noqa: E402

from denoisefeat.hooks import list_layers, top_level_layers  # noqa: E402
from denoisefeat.models import load_pipeline  # noqa: E402
from denoisefeat.trajectory import trace  # noqa: E402


def mid_resolution_block(pipe) -> str:
    """The first up block whose output is at the middle resolution level of the network."""
    infos = {i.name: i for i in list_layers(pipe, pattern="up_blocks.*")}
    levels = sorted({i.level for i in infos.values() if i.level is not None})
    middle = levels[len(levels) // 2]
    return next(name for name, info in infos.items() if info.level == middle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", default="torch,nnsight")
    args = parser.parse_args()

    dtype = torch.float16 if args.fp16 else torch.float32
    if args.model == "sd15-random":
        pipe = random_sd15_pipeline(dtype=dtype, device=args.device)
        condition = {"prompts": ["a photo of a red circle"] * args.samples}
        plain_kwargs = {"prompt": condition["prompts"], "output_type": "latent"}
    else:
        pipe = load_pipeline(args.model, device=args.device, dtype=dtype if args.fp16 else None)
        condition = {"class_labels": [0] * args.samples}
        plain_kwargs = {"class_labels": condition["class_labels"], "output_type": "pt"}
    seeds = list(range(args.samples))
    blocks = top_level_layers(pipe)
    mid = mid_resolution_block(pipe)
    tmp = Path(tempfile.mkdtemp())
    counter = iter(range(10**6))

    def plain():
        gens = [torch.Generator(args.device).manual_seed(s) for s in seeds]
        pipe(generator=gens, num_inference_steps=args.steps, **plain_kwargs)

    def traced(record, backend):
        def run():
            trace(pipe, seed=seeds, steps=args.steps, batch_size=args.samples, keep=("xt", "x0"), record=record,
                  backend=backend, store=tmp / f"r{next(counter)}.zarr", **condition)
        return run

    variants = {"plain": plain, "trace_no_hooks": traced(None, "torch")}
    for backend in args.backends.split(","):
        variants[f"a_channel_mean_all_blocks_{backend}"] = traced({b: "channel_mean" for b in blocks}, backend)
        variants[f"b_full_{mid}_{backend}"] = traced({mid: "full"}, backend)
    plain()
    times = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn, repeats=1)["median_s"])
    median = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    emit({
        "benchmark": "hook_overhead", "model": args.model, "device": args.device, "dtype": str(dtype),
        "samples": args.samples, "steps": args.steps, "repeats": args.repeats, "machine": machine(),
        "blocks": blocks, "mid_resolution_block": mid,
        "seconds": {k: round(v, 4) for k, v in median.items()},
        "ratio_to_plain": {k: round(v / median["plain"], 4) for k, v in median.items() if k != "plain"},
    })


if __name__ == "__main__":
    main()
