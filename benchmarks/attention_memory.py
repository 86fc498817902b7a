"""Memory bound of cross-attention maps: peak RSS must not grow with steps or samples; the store holds the bound.

    python benchmarks/attention_memory.py                  # tiny-sd on the CPU
    python benchmarks/attention_memory.py --sd15 --device cuda   # SD 1.5's architecture, random weights, 64² latents

The maps are buffered like every per-step array (one sample chunk × one ~2 MiB step chunk,
:class:`denoisefeat.store.StepWriter`), so what the maps add to the peak RSS is bounded by the
layers × ~2 MiB, whatever the number of steps or samples.

Each measurement runs in a fresh subprocess (peak RSS is per process) and prints JSON: the peak RSS
and wall time of a trace without and with ``attention=True``, the bytes the maps take in the store
(uncompressed) and the bound ``samples × steps × Σ_layers tokens × min(h, r) × min(w, r) × 4``,
with ``tokens`` the longest prompt's and ``r`` the resolution.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, tempfile, time
import torch
sys.path.insert(0, "benchmarks")
from denoisefeat.models import load_pipeline
from denoisefeat.trajectory import trace
model, device = sys.argv[1], sys.argv[6]
samples, steps, resolution = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[5])
maps = sys.argv[4] == "1"
if model == "sd15":
    from _common import random_sd15_pipeline
    pipe = random_sd15_pipeline(device=device, dtype=torch.float16 if device.startswith("cuda") else torch.float32)
else:
    pipe = load_pipeline(model, device=device)
prompts = ["a red circle", "a green box"] * (samples // 2)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start = time.perf_counter()
run = trace(pipe, prompts=prompts, steps=steps, batch_size=4, keep=("x0",), attention=True if maps else None,
            attention_resolution=resolution, guidance_scale=2.0, store=tempfile.mkdtemp() + "/r.zarr")
seconds = time.perf_counter() - start
stored = 0
bound = 0
if maps:
    tokens = max(len(pipe.tokenizer(p).input_ids) for p in prompts)
    for layer in run.attention_layers():
        array = run.store.group["attention"][layer]
        stored += array.nbytes
        bound += samples * steps * tokens * min(array.shape[-2], resolution) * min(array.shape[-1], resolution) * 4
gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_after_load_mib": before, "seconds": round(seconds, 3), "peak_gpu_mib": gpu,
                  "attention_stored_mib": stored / 2**20, "attention_bound_mib": bound / 2**20,
                  "layers": len(run.attention_layers())}))
"""


def measure(model, samples, steps, maps, resolution, device):
    args = [sys.executable, "-c", CHILD, model, str(samples), str(steps), "1" if maps else "0", str(resolution), device]
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sd15", action="store_true", help="SD 1.5's architecture with random weights.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resolution", type=int, default=16)
    args = parser.parse_args()
    model = "sd15" if args.sd15 else "tiny-sd"
    few, many = (4, 20) if args.sd15 else (8, 80)
    result = {"benchmark": "attention_memory", "model": model, "device": args.device, "resolution": args.resolution}
    result["plain_8x%d" % few] = measure(model, 8, few, False, args.resolution, args.device)
    result["maps_8x%d" % few] = measure(model, 8, few, True, args.resolution, args.device)
    result["plain_8x%d" % many] = measure(model, 8, many, False, args.resolution, args.device)
    result["maps_8x%d" % many] = measure(model, 8, many, True, args.resolution, args.device)
    result["maps_32x%d" % few] = measure(model, 32, few, True, args.resolution, args.device)
    small, long, wide = result["maps_8x%d" % few], result["maps_8x%d" % many], result["maps_32x%d" % few]
    result["rss_growth_steps_mib"] = round(long["peak_rss_mib"] - small["peak_rss_mib"], 1)
    result["rss_over_plain_mib"] = {str(n): round(result[f"maps_8x{n}"]["peak_rss_mib"]
                                                  - result[f"plain_8x{n}"]["peak_rss_mib"], 1) for n in (few, many)}
    result["rss_growth_samples_mib"] = round(wide["peak_rss_mib"] - small["peak_rss_mib"], 1)
    result["overhead_vs_plain"] = round(small["seconds"] / result["plain_8x%d" % few]["seconds"], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
