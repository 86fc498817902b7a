# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 5 · The same analyses on Stable Diffusion (GPU)
#
# Everything in notebooks 1–4 works unchanged on a latent text-to-image model; only loading and
# conditioning differ. This notebook needs a CUDA GPU and Stable Diffusion weights; where either
# is missing it prints why and does nothing.
#
# **Pointing `load_pipeline` at the weights.** It takes
#
# * a Hugging Face Hub id, e.g. `"stable-diffusion-v1-5/stable-diffusion-v1-5"` (needs network, or
#   the model already in the Hub cache), or
# * a local folder written by `save_pretrained` / downloaded with
#   `hf download stable-diffusion-v1-5/stable-diffusion-v1-5 --local-dir /data/sd15`
#   (it holds a `model_index.json`); this is the way on an offline cluster node.
#
# Set `DENOISEFEAT_SD_PATH` to either before starting Jupyter:
#
# ```bash
# DENOISEFEAT_SD_PATH=/data/sd15 jupyter lab notebooks/05_stable_diffusion_gpu.ipynb
# ```
#
# To try the code path without a GPU, `DENOISEFEAT_SD_PATH=tiny-sd DENOISEFEAT_SD_DEVICE=cpu`
# runs it on denoisefeat's tiny random-weight SD pipeline (meaningless images, same API).

# %%
import os
import tempfile
from pathlib import Path

import torch
from IPython.display import display

import denoisefeat as dft
from denoisefeat.analyses import ablation_scan, rank
from denoisefeat.hooks import list_layers

source = os.environ.get("DENOISEFEAT_SD_PATH", "")
device = os.environ.get("DENOISEFEAT_SD_DEVICE", "cuda")
if not source:
    skip = "DENOISEFEAT_SD_PATH is not set (a Hub id or a local save_pretrained folder)"
elif Path(source).exists() and not (Path(source) / "model_index.json").is_file():
    skip = f"{source} has no model_index.json: it is not a diffusers pipeline folder"
elif device.startswith("cuda") and not torch.cuda.is_available():
    skip = "no CUDA device is available"
else:
    skip = None
READY = skip is None
if READY:
    print(f"Running on {source} ({device})")
else:
    print("Skipping this notebook:", skip)

# %% [markdown]
# ## Load and trace
#
# Half precision on the GPU. Text pipelines take `prompts=`; classifier-free guidance doubles the
# denoiser's batch, and recorded activations get a `branch` axis (`uncond`, `cond`). At SD scale
# prefer reduced activations (`channel_mean`, `spatial_energy`) to `full`.

# %%
if READY:
    workdir = Path(tempfile.mkdtemp())
    pipe = dft.load_pipeline(source, device=device, dtype=torch.float16 if device.startswith("cuda") else None)
    prompts = ["a red apple on a wooden table", "a blue bicycle in the snow",
               "a striped cat on a sofa", "a lighthouse at sunset"]
    run = dft.trace(pipe, prompts=prompts, steps=30, seed=0, guidance_scale=7.5, store=workdir / "sd.zarr",
                    record={"mid_block": "channel_mean", "up_blocks.1": "spatial_energy"})
    display(dft.viz.step_image_grid(run))
    print(run.acts("mid_block").sizes)

# %% [markdown]
# ## Frequency evolution (notebook 2)

# %%
if READY:
    feats = dft.features(run, metrics=["colorfulness", "edge_density", "ssim"])
    display(dft.viz.rapsd_heatmap(feats["rapsd"]))
    profiles = dft.temporal.profiles(feats, variables=["band_relative_error", "edge_density"], n_boot=200)
    print(dft.temporal.emergence_order(profiles))
    display(dft.viz.emergence_curves(feats, variables="band_relative_error", profiles=profiles))

# %% [markdown]
# ## Ablation scan of the up blocks (notebook 3)
#
# Each cell is a full sampling run (from the cached clean prefix), so keep the grid small.

# %%
if READY:
    scan = ablation_scan(pipe, layers="up_blocks.*", windows=3, features=["edges", "color"], prompts=prompts,
                         steps=20, seed=0, guidance_scale=7.5)
    display(rank(scan, feature="edge_density", top=5))
    display(dft.viz.attribution_heatmap(scan, layers=list_layers(pipe)))
