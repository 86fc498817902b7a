"""The toy model's budgets (issue 19): loading time and 8 samples × 50 DDIM steps with guidance.

    python benchmarks/toy_model.py [--repeats N]   # prints JSON

Targets: ``load_pipeline("toy")`` < 1 s after the imports (the first load in this process is
reported separately from the warm ones), and 8 class-conditional samples × 50 DDIM steps with
guidance ≤ 10 s on 2 CPU cores.  Timings live here, not in the tests (the suite runs on busy
machines).
"""
import argparse
import sys
import time

import torch

from denoisefeat.models import load_pipeline
from denoisefeat.trajectory import trace

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import emit, machine, timed  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--repeats", type=int, default=3)
args = parser.parse_args()

start = time.perf_counter()
pipe = load_pipeline("toy")
first_load = time.perf_counter() - start
warm_load = timed(lambda: load_pipeline("toy"), repeats=args.repeats)
pipe.set_progress_bar_config(disable=True)
labels = list(range(0, 120, 15))  # 8 conditions
sampling = timed(lambda: trace(pipe, class_labels=labels, seed=0, steps=50, guidance_scale=1.5, keep=()),
                 repeats=args.repeats)
emit({
    "benchmark": "toy_model", "machine": machine(), "torch_threads": torch.get_num_threads(),
    "load_s": {"first": round(first_load, 3), "warm_median": round(warm_load["median_s"], 3), "target": 1.0},
    "sample_8x50_guided_s": {"median": round(sampling["median_s"], 3), "times": sampling["times_s"], "target": 10.0},
})
