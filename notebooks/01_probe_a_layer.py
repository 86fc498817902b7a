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
# # 1 · Probing a named layer
#
# **Question:** when during sampling does a layer of the denoiser carry the object's colour, and
# is that more than what the noisy input x_t already gives away?
#
# We use the toy model that ships with denoisefeat: a class-conditional 32×32 pixel UNet trained
# on DiffShapes images (a shape × colour × texture label per image). It runs on a CPU in seconds.

# %%
import itertools
import tempfile
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

import denoisefeat as dft
from denoisefeat import probes
from denoisefeat.hooks import list_layers, top_level_layers
from denoisefeat.toy.diffshapes import condition_label

workdir = Path(tempfile.mkdtemp())  # stores go here, never into the repository
pipe = dft.load_pipeline("toy")

# %% [markdown]
# ## Which layers are there?
#
# Layer names are exact `named_modules()` paths of the UNet. `list_layers` runs one probe forward
# pass and reports each module's output shape and resolution level (0 = full resolution).

# %%
layers = pd.DataFrame([asdict(info) for info in list_layers(pipe)])
layers[layers["depth"] == 1]

# %%
top_level_layers(pipe)  # the blocks an attribution scan usually starts from

# %% [markdown]
# ## Record two layers while sampling
#
# 16 conditions: 2 shapes × 4 colours × 2 textures, so that colour is balanced and not confounded
# with shape or texture. `record=` maps a layer to a *reducer* that keeps memory bounded:
# `channel_mean` (one number per channel) for the bottleneck, `spatial_energy` (one map of channel
# energy) for an up block. Guidance is switched off (`guidance_scale=1.0`): one denoiser pass per
# step, and no `branch` axis on the activations.

# %%
conditions = list(itertools.product(["circle", "square"], ["red", "yellow", "green", "blue"], ["solid", "stripes"]))
labels = [condition_label(shape, colour, texture) for shape, colour, texture in conditions]
run = dft.trace(
    pipe, class_labels=labels, steps=16, seed=0, guidance_scale=1.0, store=workdir / "probe.zarr",
    record={"mid_block": "channel_mean", "up_blocks.1": "spatial_energy"},
)
run.layers()

# %% [markdown]
# The final images, and x̂0 (the model's guess of the clean image) over the steps:

# %%
dft.viz.step_image_grid(run, samples=range(8))

# %% [markdown]
# Activations come back as labelled xarray arrays `(sample, step, …)` with the timestep along `step`.

# %%
mid = run.acts("mid_block")
mid

# %%
run.acts("up_blocks.1").isel(sample=0).sel(step=[0, 8, 15]).mean(["y", "x"])

# %% [markdown]
# ## A linear probe per step, against an x_t control
#
# `probes.fit` cross-validates a probe per step (folds split samples, never the steps of one
# sample). A probe can succeed just because the information is already visible in x_t, so we give
# it the pooled x_t as a **control**: *selectivity* = probe accuracy − accuracy of the same probe on
# x_t. Targets come from the run itself: `label_targets` turns each sample's label into its shape,
# colour and texture names.

# %%
targets = probes.label_targets(run)
colour = targets["color"]
result = probes.fit(mid, colour, control=probes.xt_features(run), cv=4, n_boot=200)
result[["score", "control", "selectivity"]].to_dataframe().round(2).T

# %% [markdown]
# Read it with the model in mind: the class label enters every block through its embedding, so
# a block can "know" the colour at step 0, when x_t is pure noise (control at chance). Late in
# sampling the colour is plainly visible in x_t and the control catches up: a negative
# selectivity means the layer's channel means carry less linearly decodable colour than the
# pixels do.

# %%
steps = result["step"].values
fig = go.Figure([
    go.Scatter(x=steps, y=result["ci_high"], line_width=0, showlegend=False, hoverinfo="skip"),
    go.Scatter(x=steps, y=result["ci_low"], line_width=0, fill="tonexty", name="95% CI"),
    go.Scatter(x=steps, y=result["score"], name="probe on mid_block"),
    go.Scatter(x=steps, y=result["control"], name="probe on x_t (control)", line_dash="dash"),
    go.Scatter(x=steps, y=result["selectivity"], name="selectivity"),
])
fig.update_layout(xaxis_title="step (0 = pure noise)", yaxis_title="colour accuracy",
                  title=f"Decoding colour from mid_block (chance {result.attrs['chance']:.2f})")
fig

# %% [markdown]
# ## Every recorded layer × target at once
#
# `probe_table` fits the same probe for each (target, layer, step) and returns an *attribution
# table*, the format shared by every analysis in denoisefeat. Besides the labels we also probe a
# property of each sample's final image (`final_feature_targets`, here its colourfulness).
# `selectivity_map` draws it as a layer × step heatmap with a feature menu.

# %%
targets |= probes.final_feature_targets(run, metrics=["colorfulness"])
table = probes.probe_table(run, targets=targets, cv=4, n_boot=100)
table.sort_values("effect", ascending=False).head()

# %%
dft.viz.selectivity_map(table, layers=list_layers(pipe))
