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
# # 6 · A prompt-contrast study: which layers, steps and words carry a colour word
#
# **Question:** when prompts differ in one word only — the colour, or the shape — which layers ×
# steps of the denoiser separate the levels, and which words' cross-attention maps change with them?
#
# On the CPU this runs on `tiny-sd` (random weights: the numbers test the code path, they mean
# nothing about the model). Set `DENOISEFEAT_SD_PATH` to an SD 1.x folder or Hub id and run it on a
# GPU for the real study.

# %%
import os
import tempfile
from pathlib import Path

import torch

import denoisefeat as dft
from denoisefeat.analyses import QuerySpec, contrast, rank, run_query
from denoisefeat.hooks import cross_attention_layers, word_maps
from denoisefeat.viz.attention import word_contrast_heatmap, word_step_grid

real = os.environ.get("DENOISEFEAT_SD_PATH") and torch.cuda.is_available()
pipe = dft.load_pipeline(os.environ["DENOISEFEAT_SD_PATH"], device="cuda") if real else dft.load_pipeline("tiny-sd")
workdir = Path(tempfile.mkdtemp())  # stores go here, never into the repository
cross_attention_layers(pipe)

# %% [markdown]
# ## The query: one factor at a time, the same seeds for every condition

# %%
spec = QuerySpec.from_toml(f'''
template = "a {{color}} {{shape}}"
samples = {16 if real else 3}
[factors]
color = ["red", "blue"]
shape = ["circle", "square"]
''')
spec.prompts

# %% [markdown]
# ## One run: activations of the up blocks and every cross-attention map

# %%
run = run_query(pipe, spec, steps=30 if real else 3, keep=(), store=workdir / "query.zarr",
                record={"up_blocks.*": "channel_mean"}, attention=True)
layer = run.attention_layers()[0]
word_maps(run, layer, "a").shape  # (sample, step, y, x), a word of every prompt: its sub-word tokens summed

# %%
word_step_grid(run, layer, max_steps=3)

# %% [markdown]
# ## Which layers × steps separate the colours, and which words' maps carry them

# %%
n_permutations = 999 if real else 99
blocks = contrast(run, spec, windows=3 if real else 1, n_permutations=n_permutations)
rank(blocks, feature="color", top=5)[["layer", "step_start", "step_stop", "effect", "eta2", "p_adj"]]

# %%
words = contrast(run, spec, source="attention", windows=3 if real else 1, n_permutations=n_permutations)
word_contrast_heatmap(words, feature="color")
