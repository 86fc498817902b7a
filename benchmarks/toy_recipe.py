"""What a toy-model recipe costs before it is trained (issue 19): weights, loading, sampling, training.

    python benchmarks/toy_recipe.py [--recipe v3] [--repeats N] [--train-iterations N]   # prints JSON

With the recipe's architecture and random weights: the size of its fp16 safetensors (budget
10 MB), ``load_pipeline`` of the saved folder (budget < 1 s), 8 class-conditional samples × 50
DDIM steps with guidance 1.5 through ``trace`` as ``benchmarks/toy_model.py`` times the shipped
model (budget ≤ 10 s on 2 cores), and seconds per training iteration over a few iterations of
the recipe's batch (from the run's ``log.jsonl``).  Also the floating-point operations of one
batch-16 forward pass (``torch.utils.flop_counter``; one guided DDIM step of 8 samples): unlike the
timings, they do not depend on how busy the machine is (v2 9.71 GFLOP, v3 10.11).
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from denoisefeat.models import ClassConditionalImagePipeline, load_pipeline
from denoisefeat.toy.diffshapes import NULL_LABEL
from denoisefeat.toy.train import RECIPES, build_sampling_scheduler, build_unet, recipe, train
from denoisefeat.trajectory import trace

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import emit, machine, timed  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--recipe", default="v3", choices=sorted(RECIPES))
parser.add_argument("--repeats", type=int, default=3)
parser.add_argument("--train-iterations", type=int, default=4, help="0 skips the training measurement")
parser.add_argument("--threads", type=int, default=2)
args = parser.parse_args()

torch.set_num_threads(args.threads)
config = recipe(args.recipe, threads=args.threads)
torch.manual_seed(0)
unet = build_unet(config).to(torch.float16).eval()
parameters = sum(p.numel() for p in unet.parameters())
with torch.no_grad(), FlopCounterMode(display=False) as counter:
    build_unet(config)(torch.zeros(16, 3, config.size, config.size), 10, class_labels=torch.zeros(16, dtype=torch.long))
with tempfile.TemporaryDirectory() as tmp:
    folder = Path(tmp) / "weights"
    ClassConditionalImagePipeline(unet=unet, scheduler=build_sampling_scheduler(config), null_class=NULL_LABEL,
                                  default_guidance_scale=1.5).save_pretrained(folder, safe_serialization=True)
    weights_bytes = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    start = time.perf_counter()
    pipe = load_pipeline(folder)
    first_load = time.perf_counter() - start
    warm_load = timed(lambda: load_pipeline(folder), repeats=args.repeats)
    pipe.set_progress_bar_config(disable=True)
    labels = list(range(0, 120, 15))  # 8 conditions
    sampling = timed(lambda: trace(pipe, class_labels=labels, seed=0, steps=50, guidance_scale=1.5, keep=()),
                     repeats=args.repeats)
    training = None
    if args.train_iterations > 0:
        run = Path(tmp) / "run"
        short = recipe(args.recipe, threads=args.threads, iterations=args.train_iterations, log_every=1,
                       checkpoint_every=args.train_iterations)
        train(short, run, progress=False)
        seconds = [json.loads(line)["seconds_per_iteration"] for line in (run / "log.jsonl").read_text().splitlines()]
        training = {"batch_size": config.batch_size, "seconds_per_iteration": [round(s, 3) for s in seconds],
                    "median_after_first": round(sorted(seconds[1:])[len(seconds[1:]) // 2], 3) if len(seconds) > 1
                    else round(seconds[0], 3)}
emit({
    "benchmark": "toy_recipe", "recipe": args.recipe, "config": config.to_json(), "machine": machine(),
    "parameters": parameters, "forward_gflop_batch16": round(counter.get_total_flops() / 1e9, 2),
    "weights_mb": round(weights_bytes / 2**20, 2), "weights_target_mb": 10.0,
    "load_s": {"first": round(first_load, 3), "warm_median": round(warm_load["median_s"], 3), "target": 1.0},
    "sample_8x50_guided_s": {"median": round(sampling["median_s"], 3), "times": sampling["times_s"], "target": 10.0},
    "train": training,
})
