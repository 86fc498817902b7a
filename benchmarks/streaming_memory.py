"""Peak RSS while streaming a run to disk: it must not grow with the number of steps or samples.

    python benchmarks/streaming_memory.py            # 20 vs 200 steps, and full activations of every block

Each measurement runs in a fresh subprocess (peak RSS is per process) and prints JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

CHILD = r"""
import json, resource, sys, tempfile, time
import torch
from denoisefeat.models import load_pipeline
from denoisefeat.hooks import top_level_layers
from denoisefeat.trajectory import trace
model, samples, steps, record_all = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
pipe = load_pipeline(model)
record = {b: "full" for b in top_level_layers(pipe)} if record_all else None
kwargs = {"class_labels": [0] * samples} if hasattr(pipe, "null_class") else {"samples": samples}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start = time.perf_counter()
run = trace(pipe, steps=steps, batch_size=8, record=record, store=tempfile.mkdtemp() + "/r.zarr", **kwargs)
seconds = time.perf_counter() - start
stored = sum(a.nbytes for _, a in run.store.group.arrays()) / 2**20
acts = sum(a.nbytes for _, a in run.store.group["acts"].arrays()) / 2**20 if record_all else 0.0
for layer in run.layers():
    acts += sum(a.nbytes for _, a in run.store.group["acts"][layer].arrays()) / 2**20
print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_after_load_mib": before, "seconds": seconds,
                  "stored_uncompressed_mib": stored + acts}))
"""


def measure(model, samples, steps, record_all):
    out = subprocess.run([sys.executable, "-c", CHILD, model, str(samples), str(steps), "1" if record_all else "0"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="toy")
    args = parser.parse_args()
    short = measure(args.model, 16, 20, False)
    long = measure(args.model, 16, 200, False)
    acts_small = measure(args.model, 8, 50, True)
    acts_big = measure(args.model, 64, 50, True)
    print(json.dumps({
        "benchmark": "streaming_memory", "model": args.model, "tmp": tempfile.gettempdir(),
        "trajectory_16x20": short, "trajectory_16x200": long,
        "rss_growth_200_vs_20_steps_mib": round(long["peak_rss_mib"] - short["peak_rss_mib"], 1),
        "full_acts_all_blocks_8x50": acts_small, "full_acts_all_blocks_64x50": acts_big,
        "rss_growth_64_vs_8_samples_mib": round(acts_big["peak_rss_mib"] - acts_small["peak_rss_mib"], 1),
    }, indent=2))


if __name__ == "__main__":
    main()
