"""The ablation scan on the planted-ground-truth model, and which data set image each ablated run ends on.

    python benchmarks/planted_ablation.py                       # 16 samples, 20 steps, 5 windows

Ablates ``posterior``, ``layout`` and ``detail`` of ``load_pipeline("planted")`` (methods zero and
mean) and prints JSON: the scan's wall time and denoiser calls, ``effect`` per feature, layer, method
and window, and, per ablation, the fraction of samples whose final image is another data set image
than the clean run's (the exact posterior mean memorises, so every unablated trajectory ends on one)
and the fraction whose ended-on image has another texture kind.  Not a test: the truth is
:data:`denoisefeat.toy.planted.PLANTED_TRUTH`, what an attribution method should find.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, machine  # noqa: E402

from denoisefeat.analyses import ablation_scan  # noqa: E402
from denoisefeat.steps import step_windows  # noqa: E402
from denoisefeat.hooks import Edit  # noqa: E402
from denoisefeat.models import load_pipeline  # noqa: E402
from denoisefeat.toy.diffshapes import TEXTURES  # noqa: E402
from denoisefeat.trajectory import trace  # noqa: E402

LAYERS = ["posterior", "layout", "detail"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--windows", type=int, default=5)
    args = parser.parse_args()
    pipe = load_pipeline("planted")
    methods = ["zero", "mean"]
    start = time.perf_counter()
    table = ablation_scan(pipe, layers=LAYERS, windows=args.windows, method=methods, samples=args.samples,
                          steps=args.steps, features=["edges", "texture", "shape", "color"])
    seconds = time.perf_counter() - start
    effects = {
        f"{r.feature} | {r.layer} | {r.method} | {r.step_start}-{r.step_stop}": round(float(r.effect), 5)
        for r in table.itertuples()
    }
    model = pipe.unet
    texture_of = model.dataset_labels % len(TEXTURES)

    def ended_on(**kwargs):
        run = trace(pipe, samples=args.samples, steps=args.steps, seed=0, keep=(), **kwargs)
        return model.nearest_image(torch.from_numpy(run.dataset["final"].values))

    clean, _ = ended_on()
    endings = {}
    for layer in LAYERS:
        for method in methods:
            for a, b in step_windows(args.windows, args.steps):
                index, rmse = ended_on(intervene=Edit(layer, method, steps=range(a, b)))
                endings[f"{layer} | {method} | {a}-{b}"] = {
                    "other_image": float((index != clean).double().mean()),
                    "other_texture_kind": float((texture_of[index] != texture_of[clean]).double().mean()),
                    "on_a_data_image": float((rmse < 0.01).double().mean()),
                }
    emit({"machine": machine(), "samples": args.samples, "steps": args.steps, "scan_seconds": round(seconds, 2),
          "denoiser_calls": table.attrs["denoiser_calls"], "effects": effects, "endings": endings})


if __name__ == "__main__":
    main()
