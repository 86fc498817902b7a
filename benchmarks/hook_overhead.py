"""Plain pipeline vs ``trace`` with recording, torch-hook and nnsight backends, in one process.

    python benchmarks/hook_overhead.py                                   # toy model, CPU
    python benchmarks/hook_overhead.py --model sd15-random --device cuda --fp16

Variants (each stores xt and x0 as ``trace`` does; "images" are not decoded, so that the ratio
isolates the hooks):
    (a) channel_mean on every top-level block;  (b) full activations of one mid-resolution block.
The floor: ``minimal_hook_loop``, the plain pipeline with hand-written torch forward hooks on every
top-level block that keep each output's channel means in Python lists (on the host), nothing stored.
Prints JSON with median wall times, ratios to the plain pipeline and (a) to the minimal loop.
"""

from __future__ import annotations

import argparse
import os
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


def minimal_hook_loop(bench, blocks):
    """The plain pipeline with torch forward hooks keeping the channel means of ``blocks`` in lists."""
    modules = dict(bench.pipe.unet.named_modules())

    def run():
        means = {block: [] for block in blocks}
        handles = []
        for block in blocks:
            def hook(module, args, output, kept=means[block]):
                tensor = output[0] if isinstance(output, tuple) else output
                kept.append(tensor.detach().float().mean(dim=(2, 3)).cpu())
            handles.append(modules[block].register_forward_hook(hook))
        try:
            bench.plain()
        finally:
            for handle in handles:
                handle.remove()
        return means

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--backends", default="torch,nnsight")
    parser.add_argument("--full", default=None, help="the block recorded in full (default: a mid-resolution one)")
    args = parser.parse_args()
    bench = PipelineBench(args, decode_plain=False)
    blocks = [name for name in top_level_layers(bench.pipe) if "blocks" in name or name == "mid_block"]
    mid = args.full or mid_resolution_block(bench.pipe)
    keep = ("xt", "x0")
    variants = {"plain": bench.plain, "minimal_hook_loop": minimal_hook_loop(bench, blocks),
                "trace_no_hooks": bench.trace(keep=keep)}
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
        "times": {k: [round(x, 3) for x in t] for k, t in times.items()},
        "ratio_to_plain": {k: round(v / med["plain"], 4) for k, v in med.items() if k != "plain"},
        "ratio_to_minimal_hook_loop": {k: round(v / med["minimal_hook_loop"], 4) for k, v in med.items()
                                       if k.startswith("a_channel_mean")},
        "load_average": list(os.getloadavg()),
    })


if __name__ == "__main__":
    main()
