"""A run store of structured, photo-like images written directly (no model), for report and viewer checks.

Each sample is a smooth colour gradient with a few soft-edged discs and boxes, a striped patch and a
little pixel noise, like a photograph's mix of flat regions, edges and texture.  Its x̂0 at step
``k`` of ``T`` blends a heavily blurred copy into the sharp image (weight ``((k + 1) / T)²``), so
that low frequencies settle first, as in a real trajectory.  Used by ``tests/test_report_size.py``,
``tests/test_viewer_browser.py`` and ``benchmarks/report_size.py`` / ``benchmarks/viewer_latency.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from denoisefeat.store import RunStore


def photo(rng: np.random.Generator, size: int) -> np.ndarray:
    """One (3, size, size) float32 image in [0, 1]."""
    y, x = np.mgrid[0:size, 0:size] / size
    top, bottom = rng.uniform(0.1, 0.9, 3), rng.uniform(0.1, 0.9, 3)
    image = top[:, None, None] * (1 - y) + bottom[:, None, None] * y
    for _ in range(4):
        cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.08, 0.25)
        colour = rng.uniform(0, 1, 3)[:, None, None]
        if rng.uniform() < 0.5:
            mask = ((y - cy) ** 2 + (x - cx) ** 2 < r**2).astype(float)
        else:
            mask = ((abs(y - cy) < r) & (abs(x - cx) < 0.6 * r)).astype(float)
        mask = gaussian_filter(mask, size / 256)
        image = image * (1 - mask) + colour * mask
    cy, cx = rng.uniform(0.1, 0.6, 2)
    patch = (y > cy) & (y < cy + 0.3) & (x > cx) & (x < cx + 0.3)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (x + y) * size / rng.uniform(6, 12))
    image = np.where(patch, 0.6 * image + 0.4 * stripes, image)
    image = image + rng.normal(0, 0.01, image.shape)
    return np.clip(image, 0, 1).astype(np.float32)


def write_photo_store(path, *, samples: int, steps: int, size: int, seed: int = 0, chunk_samples: int = 1) -> Path:
    """Write a complete run store of ``samples`` photo-like trajectories (``images`` and ``final``).

    Parameters
    ----------
    path : str or path
        The store to create (must not exist).
    samples, steps, size : int
        Samples, steps and image side in pixels.
    seed : int
        Seed of the images.
    chunk_samples : int
        Samples per chunk.

    Returns
    -------
    pathlib.Path
        The store's path.
    """
    attrs = {"model_id": "synthetic-photos", "seeds": [seed + i for i in range(samples)]}
    store = RunStore.create(path, run_attrs=attrs, n_samples=samples, n_steps=steps, chunk_samples=chunk_samples)
    store.write_coordinate("step", np.arange(steps), dim="step")
    store.write_coordinate("timestep", np.linspace(999, 0, steps).round().astype(np.int64), dim="step")
    images = store.ensure_step_array("images", tail_shape=(3, size, size), tail_dims=("rgb", "height", "width"),
                                     dtype=np.float32)
    final = store.ensure_array("final", shape=(samples, 3, size, size), dims=("sample", "rgb", "height", "width"),
                               dtype=np.float32)
    weights = ((np.arange(steps) + 1) / steps) ** 2
    for chunk in store.sample_chunks():
        sharp = np.stack([photo(np.random.default_rng([seed, i]), size) for i in range(chunk.start, chunk.stop)])
        blurred = gaussian_filter(sharp, (0, 0, size / 16, size / 16))
        block = (weights[None, :, None, None, None] * sharp[:, None]
                 + (1 - weights[None, :, None, None, None]) * blurred[:, None]).astype(np.float32)
        images[chunk] = block
        final[chunk] = sharp
        store.mark_complete(chunk)
    store.finalize()
    return store.path
