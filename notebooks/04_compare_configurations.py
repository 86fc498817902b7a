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
# # 4 · Comparing samplers and step counts
#
# **Question:** is the order in which features appear a property of the model, or of the sampler?
# We trace the *same* conditions and seeds with two schedulers (DDIM and DPM-Solver++) at two step
# counts (10 and 20), and compare the feature profiles on a common axis, normalised time t/T
# (or log-SNR), so that runs of different lengths line up.

# %%
import itertools
import tempfile
from pathlib import Path

import denoisefeat as dft
from denoisefeat import temporal
from denoisefeat.metrics import compute_metrics
from denoisefeat.toy.diffshapes import COLORS, SHAPES, condition_label

workdir = Path(tempfile.mkdtemp())
pipe = dft.load_pipeline("toy")
labels = [condition_label(SHAPES[i % 5], COLORS[i % 6], "stripes") for i in range(8)]

# %% [markdown]
# ## Four runs
#
# `trace(scheduler=...)` takes a name (`"ddim"`, `"euler"`, `"dpm++"`, …), built from the
# pipeline's own scheduler config, or a scheduler instance; the pipeline is not modified. For
# schedulers that do not return x̂0 themselves (DPM-Solver++), denoisefeat derives it from the
# scheduler's noise level at each step.
#
# This model's cosine schedule with "trailing" spacing starts at ᾱ ≈ 0, where an ε-prediction's
# x̂0 is unstable; its DDIM config clips x̂0 to [-1, 1] (`clip_sample`). A scheduler built by name
# inherits that clip (DPM-Solver++ and UniPC as dynamic thresholding bounded to 1, which is the same
# clip); `"euler"` cannot clip and warns.

# %%
runs, feats = {}, {}
for sname, steps in itertools.product(["ddim", "dpm++"], [10, 20]):
    name = f"{sname} × {steps}"
    runs[name] = dft.trace(pipe, class_labels=labels, steps=steps, seed=0, scheduler=sname,
                           guidance_scale=1.0, store=workdir / f"{sname}-{steps}.zarr")
    feats[name] = dft.features(runs[name], metrics=["ssim", "colorfulness"])
list(feats)

# %% [markdown]
# Same seeds, so the final images should agree across configurations if the samplers converge to
# the same solution; how close they are (SSIM of each run's final image to DDIM × 20's):

# %%
reference = runs["ddim × 20"]["final"].values
{name: round(float(compute_metrics(run["final"].values, reference, names=["ssim"])["ssim"].mean()), 3)
 for name, run in runs.items()}

# %% [markdown]
# ## Profiles on a common time axis
#
# `temporal.profiles` turns each run's features into per-sample progress curves (0 → 1) and
# emergence/stabilisation times; `temporal.compare` resamples the median progress of every run
# onto t/T and tabulates the summaries side by side.

# %%
variables = ["band_relative_error", "ssim", "colorfulness"]
profiles = {name: temporal.profiles(ds, variables=variables, n_boot=200) for name, ds in feats.items()}
compared = temporal.compare(list(profiles.values()), labels=list(profiles), axis="progress")
compared["stabilisation"].sel(stat="median").to_pandas().round(2)

# %%
{name: temporal.emergence_order(p) for name, p in profiles.items()}

# %% [markdown]
# One panel per profile, one line per configuration (median over samples with a bootstrap band).
# If the curves of a profile overlap on t/T, the step count does not change *when* (in relative
# time) that feature is decided.

# %%
dft.viz.compare_runs(feats, variables=variables, n_boot=200)

# %% [markdown]
# The same comparison on log-SNR, the noise level each step actually sees (median stabilisation,
# in log ᾱ/(1−ᾱ)):

# %%
on_snr = temporal.compare(list(profiles.values()), labels=list(profiles), axis="log_snr")
on_snr["stabilisation"].sel(stat="median").to_pandas().round(2)
