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
# # 3 · Which layers, at which steps, build which feature?
#
# Two complementary ways to attribute image features to (layer, step window):
#
# 1. **Interventions** — `ablation_scan` zeroes one block's output during one window of steps and
#    measures how the *final* image changes (causal, but each cell costs a sampling run);
# 2. **Statistics** — record the blocks' activity in one clean run and regress each step's
#    feature change on it across samples (cheap, but correlational).
#
# Both return the same *attribution table* (feature, layer, step window, method, effect, CI, p),
# so they can be ranked, stored and drawn the same way.

# %%
import tempfile
from pathlib import Path

import denoisefeat as dft
from denoisefeat.analyses import ablation_scan, rank
from denoisefeat.analyses.correlation import activity, feature_change
from denoisefeat.analyses.regression import regress
from denoisefeat.hooks import list_layers, resolve_layers
from denoisefeat.toy.diffshapes import COLORS, SHAPES, condition_label

workdir = Path(tempfile.mkdtemp())
pipe = dft.load_pipeline("toy")

blocks = resolve_layers(pipe, ["down_blocks.*", "mid_block", "up_blocks.*"])
labels = [condition_label(SHAPES[i % 5], COLORS[i % 6], "solid") for i in range(8)]
blocks

# %% [markdown]
# ## Ablation scan
#
# 7 blocks × 3 step windows (early / middle / late thirds of 12 steps) on 8 samples. The ablated
# runs share the seeds of the clean run, so each sample's change is paired; `effect` is its mean
# with a t-interval, `effect_std` the same in units of the feature's between-sample difference,
# `specificity` how much more the cell moves the feature than the whole image. With `store=` the
# clean run and the table are written to a run store.
# Features: a colour and a shape metric (see `denoisefeat.analyses.FEATURE_GROUPS` for more).

# %%
scan = ablation_scan(
    pipe, layers=blocks, windows=3, method="zero", features=["colorfulness", "mask_iou"],
    class_labels=labels, steps=12, seed=0, guidance_scale=1.0, store=workdir / "scan.zarr",
)
scan.head()

# %% [markdown]
# `rank` lists the strongest cells for one feature: significant rows (`p_adj < 0.05`, whose CI then
# excludes 0) come first; `by="specificity"` ranks the cells that move this feature most selectively.

# %%
rank(scan, feature="mask_iou", top=5)

# %% [markdown]
# The interactive heatmap: layers in network order (down → mid → up, resolution levels marked)
# against step windows; hover shows effect, CI, p and n, and the menu switches features.

# %%
dft.viz.attribution_heatmap(scan, layers=list_layers(pipe))

# %% [markdown]
# ## Regression of feature change on layer activity
#
# One clean run with the blocks' `channel_mean` recorded at every step. Per step we know how much
# each feature of x̂0 moved (`feature_change`) and how much each block's output changed (`activity`, the norm
# of the change of its channel means). `regress` fits, per feature × block × window, an OLS of the feature
# change on standardised activity with step fixed effects and sample-clustered errors
# (statsmodels).

# %%
run = dft.trace(pipe, class_labels=labels, steps=12, seed=0, guidance_scale=1.0, store=workdir / "stats.zarr",
                record={block: "channel_mean" for block in blocks})
feats = dft.features(run, metrics=["colorfulness", "edge_density"])
acts = {block: activity(run.acts(block)) for block in blocks}
change = feature_change(feats[["colorfulness", "edge_density"]])
stats = regress(acts, change, windows=3)
rank(stats, feature="colorfulness", top=5)

# %%
dft.viz.attribution_heatmap(stats, layers=list_layers(pipe))
