"""What a toy-model recipe costs before it is trained (issue 19): weights, loading, sampling, training.

    python benchmarks/toy_recipe.py [--recipe v3] [--repeats N] [--train-iterations N]   # prints JSON

With the recipe's architecture and random weights: the size of its fp16 safetensors (budget
10 MB), ``load_pipeline`` of the saved folder (budget < 1 s), 8 class-conditional samples × 50
DDIM steps with guidance 1.5 through ``trace`` as ``benchmarks/toy_model.py`` times the shipped
model (budget ≤ 10 s on 2 cores), and seconds per training iteration over a few iterations of
the recipe's batch (from the run's ``log.jsonl``).  Also the floating-point operations of one
batch-16 forward pass (``torch.utils.flop_counter``; one guided DDIM step of 8 samples): unlike the
timings, they do not depend on how busy the machine is.  The counter has no formula for the CPU kernel
of ``scaled_dot_product_attention`` (``_scaled_dot_product_flash_attention_for_cpu``), so this script
gives it the counter's own SDPA formula; without it, attention's score and value products count zero.

``breakdown`` splits that forward by the units of the UNet (each ResNet, attention, up/downsampler,
input/output convolution, embedding): FLOPs and seconds (one thread, forward hooks) per unit kind
and per resolution of the unit's output (an upsampler's convolution counts at the resolution it
writes, e.g. 32 px), and the profiler's self CPU time per operator (top 8).
"""
import argparse
import collections
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from denoisefeat.models import ClassConditionalImagePipeline, load_pipeline
from denoisefeat.toy.diffshapes import NULL_LABEL
from denoisefeat.toy.train import RECIPES, build_sampling_scheduler, build_unet, recipe, train
from denoisefeat.trajectory import trace

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import emit, machine, timed  # noqa: E402


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}
_UNIT_KINDS = ("ResnetBlock2D", "Attention", "Upsample2D", "Downsample2D")


def _units(model) -> list:
    """The UNet's units, named: ResNets, attentions, samplers, and the top-level layers that hold none of them."""
    def holds_units(module):
        return any(type(sub).__name__ in _UNIT_KINDS for sub in module.modules())

    units = []
    for name, module in model.named_modules():  # parents come before their children
        top_level = name and "." not in name and not holds_units(module)
        inside = any(name.startswith(unit + ".") for unit, _ in units)
        if (type(module).__name__ in _UNIT_KINDS or top_level) and not inside:
            units.append((name, module))
    return units


def breakdown(config, *, repeats: int = 5) -> dict:
    """FLOPs and one-thread seconds of a batch-16 forward per unit kind and output resolution; profiler top ops."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_unet(config).eval()
    x, labels = torch.zeros(16, 3, config.size, config.size), torch.zeros(16, dtype=torch.long)
    units = _units(model)
    where, seconds, hooks = {}, collections.defaultdict(float), []

    def before(name):
        return lambda module, inputs: seconds.__setitem__(name, seconds[name] - time.perf_counter())

    def after(name):
        def hook(module, inputs, output):
            seconds[name] += time.perf_counter()
            out = output[0] if isinstance(output, tuple) else output
            where[name] = f"{out.shape[-1]}px" if out.dim() == 4 else "embedding"
        return hook

    try:
        for name, module in units:
            hooks += [module.register_forward_pre_hook(before(name)), module.register_forward_hook(after(name))]
        with torch.no_grad(), FlopCounterMode(display=False, depth=None, custom_mapping=_FLOP_FORMULAS) as counter:
            model(x, 10, class_labels=labels)
        seconds.clear()
        with torch.no_grad():
            start = time.perf_counter()
            for _ in range(repeats):
                model(x, 10, class_labels=labels)
            total = (time.perf_counter() - start) / repeats
    finally:
        for hook in hooks:
            hook.remove()
    counts = counter.get_flop_counts()
    flops = collections.defaultdict(lambda: collections.Counter())
    time_by = collections.defaultdict(lambda: collections.Counter())
    for name, module in units:
        unit_flops = sum(counts.get(f"{type(model).__name__}.{name}", {}).values())
        kind = type(module).__name__
        for table, key in ((flops["by_kind"], kind), (flops["by_resolution"], where[name]),
                           (flops["by_kind_and_resolution"], f"{kind} {where[name]}")):
            table[key] += unit_flops / 1e9
        time_by["by_kind"][kind] += seconds[name] / repeats
        time_by["by_resolution"][where[name]] += seconds[name] / repeats
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(x, 10, class_labels=labels)
    ops = sorted(prof.key_averages(), key=lambda event: -event.self_cpu_time_total)
    op_total = sum(event.self_cpu_time_total for event in ops)
    torch.set_num_threads(threads)
    return {
        "gflop_total": round(counter.get_total_flops() / 1e9, 3),
        "gflop": {table: {k: round(v, 3) for k, v in values.most_common()} for table, values in flops.items()},
        "forward_s_one_thread": round(total, 4),
        "seconds_one_thread": {table: {k: round(v, 4) for k, v in values.most_common()}
                               for table, values in time_by.items()},
        "profiler_self_time_share": {event.key: round(event.self_cpu_time_total / op_total, 3) for event in ops[:8]},
    }


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
with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_FLOP_FORMULAS) as counter:
    build_unet(config)(torch.zeros(16, 3, config.size, config.size), 10, class_labels=torch.zeros(16, dtype=torch.long))
split = breakdown(config)
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
        with contextlib.redirect_stdout(sys.stderr):  # the loss lines; stdout is this script's JSON
            train(short, run, progress=False)
        seconds = [json.loads(line)["seconds_per_iteration"] for line in (run / "log.jsonl").read_text().splitlines()]
        training = {"batch_size": config.batch_size, "seconds_per_iteration": [round(s, 3) for s in seconds],
                    "median_after_first": round(sorted(seconds[1:])[len(seconds[1:]) // 2], 3) if len(seconds) > 1
                    else round(seconds[0], 3)}
emit({
    "benchmark": "toy_recipe", "recipe": args.recipe, "config": config.to_json(), "machine": machine(),
    "parameters": parameters, "forward_gflop_batch16": round(counter.get_total_flops() / 1e9, 2),
    "breakdown": split, "weights_mb": round(weights_bytes / 2**20, 2), "weights_target_mb": 10.0,
    "load_s": {"first": round(first_load, 3), "warm_median": round(warm_load["median_s"], 3), "target": 1.0},
    "sample_8x50_guided_s": {"median": round(sampling["median_s"], 3), "times": sampling["times_s"], "target": 10.0},
    "train": training,
})
