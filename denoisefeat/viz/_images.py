"""RGB images in [0, 1] → 8-bit PNG data URIs, the compact way to put pictures in a plotly figure."""

from __future__ import annotations

import base64
import io

import numpy as np


def to_uint8(images, *, channel_axis: int = -3) -> np.ndarray:
    """Images in [0, 1] with an RGB axis → uint8, channels last (clipped, rounded)."""
    array = np.asarray(images, dtype=np.float64)
    if array.ndim < 3 or array.shape[channel_axis] != 3:
        raise ValueError(f"expected RGB images with 3 channels on axis {channel_axis}, got shape {array.shape}")
    array = np.moveaxis(array, channel_axis, -1)
    return np.round(np.clip(np.nan_to_num(array, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)


def png_uri(rgb: np.ndarray) -> str:
    """One (H, W, 3) uint8 image as a ``data:image/png;base64,…`` URI."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb), mode="RGB").save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_png_uri(uri: str) -> np.ndarray:
    """The (H, W, 3) uint8 image of a PNG data URI (inverse of :func:`png_uri`)."""
    from PIL import Image

    prefix = "data:image/png;base64,"
    if not uri.startswith(prefix):
        raise ValueError("not a PNG data URI")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri[len(prefix):]))).convert("RGB"))


def strip(images, *, max_images: int = 8) -> np.ndarray:
    """(..., 3, H, W) in [0, 1] → one (H, n·(W+1)−1, 3) uint8 strip of at most ``max_images`` images."""
    array = np.asarray(images, dtype=np.float64)
    if array.ndim < 3 or array.shape[-3] != 3:
        raise ValueError(f"images must have shape (..., 3, H, W) with values in [0, 1], got {array.shape}")
    flat = to_uint8(array.reshape(-1, *array.shape[-3:])[:max_images])
    n, H, W, _ = flat.shape
    out = np.full((H, n * (W + 1) - 1, 3), 255, dtype=np.uint8)
    for i in range(n):
        out[:, i * (W + 1): i * (W + 1) + W] = flat[i]
    return out
