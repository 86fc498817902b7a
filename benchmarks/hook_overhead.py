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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import PipelineBench, add_model_arguments, emit, interleaved, median  # noqa: E402

from denoisefeat.hooks import list_layers, top_level_layers  # noqa: E402


def mid_resolution_block(pipe) -> str:
    """The first up block whose output is at the middle resolution level of the network."""
    infos = {i.name: i for i in list_layers(pipe, pattern="up_blocks.*")}
    levels = sorted({i.level for i in infos.values() if i.level is not None})
    middle = levels[len(levels) // 2]
    return next(name for name, info in infos.items() if info.level == middle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--backends", default="torch,nnsight")
    args = parser.parse_args()
    bench = PipelineBench(args, decode_plain=False)
    blocks = top_level_layers(bench.pipe)
    mid = mid_resolution_block(bench.pipe)
    keep = ("xt", "x0")
    variants = {"plain": bench.plain, "trace_no_hooks": bench.trace(keep=keep)}
    for backend in args.backends.split(","):
        variants[f"a_channel_mean_all_blocks_{backend}"] = bench.trace(
            keep=keep, record={b: "channel_mean" for b in blocks}, backend=backend)
        variants[f"b_full_{mid}_{backend}"] = bench.trace(keep=keep, record={mid: "full"}, backend=backend)
    bench.plain()
    times = interleaved(variants, repeats=args.repeats)
    med = {name: median(t) for name, t in times.items()}
    emit({
        **bench.header("hook_overhead"),
        "blocks": blocks, "mid_resolution_block": mid,
        "seconds": {k: round(v, 4) for k, v in med.items()},
        "ratio_to_plain": {k: round(v / med["plain"], 4) for k, v in med.items() if k != "plain"},
    })


if __name__ == "__main__":
    main()
