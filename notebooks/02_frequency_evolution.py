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
# # 2 · How the frequency content of x̂0 evolves
#
# **Question:** does the model lay down coarse structure first and fine detail last
# (a "spectral autoregression")? We follow x̂0, the model's running guess of the clean image,
# through the frequency domain at every step: its radially averaged power spectrum (RAPSD), its
# energy and error per frequency band, and its wavelet subbands.

# %%
import tempfile
from pathlib import Path

import denoisefeat as dft
from denoisefeat import temporal
from denoisefeat.frequency import DEFAULT_BANDS
from denoisefeat.toy.diffshapes import COLORS, SHAPES, condition_label

workdir = Path(tempfile.mkdtemp())
pipe = dft.load_pipeline("toy")

# %% [markdown]
# ## Trace a few samples
#
# 8 samples, one per shape/colour pair below, 20 DDIM steps. Every step's x_t, x̂0 and decoded
# x̂0 image go into a zarr store.

# %%
labels = [condition_label(SHAPES[i % 4], COLORS[i % 6], "solid" if i < 4 else "checker") for i in range(8)]
run = dft.trace(pipe, class_labels=labels, steps=20, seed=0, guidance_scale=1.0, store=workdir / "freq.zarr")
dft.viz.step_image_grid(run)

# %% [markdown]
# ## Per-step features
#
# `features` computes, for every (sample, step), frequency features of the luminance of x̂0 and
# stores them in the run's `features/` group (`load_features` reads them back later).
# `metrics=[]` skips the image metrics (edges, shape, colour, …): frequency variables only.
# The bands are radial frequency ranges in cycles/pixel:

# %%
dict(DEFAULT_BANDS)

# %%
feats = dft.features(run, metrics=[])
feats[["rapsd", "band_energy", "band_relative_error", "wavelet_energy"]]

# %% [markdown]
# ## The power spectrum over the steps
#
# The heatmap shows log power per radial frequency (rows) at each step (columns), averaged over
# samples. Early x̂0 is a blurry average: power only at low frequencies. Power at high frequencies
# arrives late.

# %%
dft.viz.rapsd_heatmap(feats["rapsd"])

# %%
dft.viz.rapsd_curves(feats["rapsd"], steps=[0, 4, 8, 12, 16, 19])

# %% [markdown]
# ## When does each band emerge?
#
# `band_relative_error` is each band's distance to the final image's band (0 once converged).
# `temporal.profiles` normalises every trajectory to a progress from 0 (first step) to 1 (last
# step) and measures per sample when it crosses ½ (*emergence*) and when it stays within 10 % of
# the end (*stabilisation*), with bootstrap CIs over samples. `emergence_order` sorts the bands by
# stabilisation.

# %%
profiles = temporal.profiles(feats, variables="band_relative_error", n_boot=200)
temporal.emergence_order(profiles)

# %%
summary = profiles[["emergence_summary", "stabilisation_summary"]].sel(stat=["median", "median_low", "median_high"])
summary.to_dataframe().unstack("stat")

# %%
dft.viz.emergence_curves(feats, variables="band_relative_error", profiles=profiles, n_boot=200)

# %% [markdown]
# ## Band-pass images
#
# What each band of x̂0 looks like at each step (slider), for one sample: the low band already
# holds the object's placement while the high band is still noise-like.

# %%
dft.viz.band_pass_grid(run, sample=0, steps=[0, 5, 10, 15, 19])

# %% [markdown]
# The same story in wavelet subbands (level 1 = finest): the share of energy in the fine levels
# grows over the steps.

# %%
dft.viz.wavelet_heatmap(feats["wavelet_energy"])
