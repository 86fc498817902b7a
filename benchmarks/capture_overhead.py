"""Wall time of the plain pipeline vs ``trace`` (store writing on) on the same model and seeds.

    python benchmarks/capture_overhead.py                    # toy model, CPU, 8 samples × 50 steps
    python benchmarks/capture_overhead.py --model sd15-random --device cuda --fp16 --samples 8

Prints JSON: median wall times over repeats (runs alternate, in one process) and their ratio.
``trace`` is timed three times: keeping xt and x0 only, with the decoded image of every step
(for latent models one VAE decode per step, which the plain pipeline does once; ``decode_batch``
steps per VAE call, the default), and with the image of every ``--decode-every``-th step.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import PipelineBench, add_model_arguments, emit, interleaved, median  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--decode-every", type=int, default=5, help="the third variant decodes every k-th step")
    args = parser.parse_args()
    bench = PipelineBench(args, decode_plain=True)
    bench.plain()  # warm-up (allocations, kernels)
    runs = interleaved({
        "plain": bench.plain,
        "trace_xt_x0": bench.trace(keep=("xt", "x0")),
        "trace_all": bench.trace(keep=("xt", "x0", "images")),
        "trace_all_every_k": bench.trace(keep=("xt", "x0", "images"), decode_every=args.decode_every),
    }, repeats=args.repeats)
    med = {name: median(t) for name, t in runs.items()}
    emit({
        **bench.header("capture_overhead"),
        "seconds": {k: round(v, 4) for k, v in med.items()},
        "all_seconds": {k: [round(x, 4) for x in v] for k, v in runs.items()},
        "ratio_trace_xt_x0": round(med["trace_xt_x0"] / med["plain"], 4),
        "ratio_trace_all": round(med["trace_all"] / med["plain"], 4),
        "decode_every": args.decode_every,
        "ratio_trace_all_every_k": round(med["trace_all_every_k"] / med["plain"], 4),
    })


if __name__ == "__main__":
    main()
